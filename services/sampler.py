"""`Sampler`: a Ray Serve deployment that decodes with the calculator, batched, and swaps models in place.

Concurrent `generate` calls are grouped by `@serve.batch` and fed to the replica's `DecodeLoop`, where their
rows join the rows already decoding (continuous batching) and each request returns as soon as its own rows
are done. All rows of one batch are decoded with a single snapshot of the policy, so every answer carries
the exact `model_version` that produced it. A background
task follows the model registry: a new version is loaded in a thread (off the request path) and swapped in
by one assignment; if loading fails the old model keeps serving and the error is reported to the registry.

`generate_stream` is the streaming twin of `generate`: it yields the rows' text as the decode loop writes it.
Its rows skip `@serve.batch` and go straight to the decode loop, which admits them at its next step together
with whatever is decoding (waiting for a batch to fill would only delay the first token).

`score` is the verifier's entry (`trainers.engine.scoring.score_candidates`): concurrent calls are grouped by
their own `@serve.batch` and scored together with one policy snapshot, one forward pass per candidate
(both labels), on a scoring thread of their own (the event loop stays free, and the decode thread keeps decoding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from dataclasses import asdict
from typing import Any, AsyncIterator

import ray
from ray import serve

from services import metrics
from services.config import PoolConfig
from services.decode_loop import DecodeLoop, TextPiece
from services.registry import get_registry
from trainers.engine.decoding import Decoded, DecodeRequest
from trainers.engine.scoring import score_candidates
from trainers.models.checkpoints import DEFAULT_POLICY_DTYPE, Policy, load_policy

logger = logging.getLogger("ray.serve")
POLL_INTERVAL_S = 0.5
DEFAULTS = PoolConfig()  # batch settings until Serve hands over the pool's own (`reconfigure`)


@serve.deployment(name="Sampler")
class Sampler:
    def __init__(self, pool: str, dtype: str = DEFAULT_POLICY_DTYPE) -> None:
        """`dtype`: what every checkpoint this replica loads is loaded as (`serving.dtype`)."""
        import torch

        torch.set_num_threads(int(os.environ.get("DPOST_REPLICA_THREADS", "1")))
        self.pool = pool
        self.dtype = dtype
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.registry = get_registry()
        self.policy: Policy | None = None
        self.error: dict[str, str] | None = None
        self.decoder = DecodeLoop(max_batch=DEFAULTS.max_rows_per_forward)
        self.score_rows = DEFAULTS.max_rows_per_forward
        self._scorer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dpost-score")
        current = ray.get(self.registry.current.remote(pool))
        if current is not None:  # come up on the pool's current version, whenever this replica starts
            self._load(*current)
        self._watcher = asyncio.get_event_loop().create_task(self._follow_registry())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings from the pool config (Serve's `user_config`, `PoolConfig.batch_settings`; applied in
        place)."""
        pool = PoolConfig.model_validate(user_config)
        for group in (self._group, self._score_group):
            group.set_max_batch_size(pool.max_batch_size)
            group.set_batch_wait_timeout_s(pool.batch_wait_timeout_s)
        self.decoder.set_max_batch(pool.max_rows_per_forward)
        self.score_rows = pool.max_rows_per_forward

    def _load(self, version: str, checkpoint: str) -> None:
        try:
            model, tokenizer = load_policy(checkpoint, dtype=self.dtype)
        except Exception as exc:  # CheckpointError and anything a broken folder throws
            self.error = {"version": version, "message": str(exc)}
            logger.warning("replica %s refused %s: %s", self.replica_id, version, exc)
            return
        previous, self.policy = self.policy, Policy(version, checkpoint, model, tokenizer)  # the atomic swap
        self.error = None
        if previous is not None and previous.version != version:
            metrics.model_swaps().inc(tags={"pool": self.pool})

    async def _follow_registry(self) -> None:
        while True:
            try:
                current = await self.registry.current.remote(self.pool)
                wanted = current is not None and (self.policy is None or current[0] != self.policy.version)
                if wanted and (self.error is None or self.error["version"] != current[0]):
                    await asyncio.to_thread(self._load, *current)
                await self.registry.heartbeat.remote(
                    self.replica_id, self.pool, self.policy.version if self.policy else None, self.error)
            except ray.exceptions.RayActorError:  # the registry died with its node: find or re-create it
                logger.warning("model registry unreachable; looking it up again")
                self.registry = get_registry()
            except Exception:  # never let the watcher die; the next poll retries
                logger.exception("registry poll failed")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def generate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Decode a request's rows (DecodeRequest fields). Returns {model_version, outputs: [Decoded dicts]}."""
        pending = await self._group(rows)
        return await pending

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def _group(self, requests: list[list[dict[str, Any]]]) -> list[asyncio.Task]:
        """Concurrent requests enter the decoder together (their prompts share one prefill) with the policy
        of this moment; each then completes on its own, as soon as its own rows are decoded."""
        policy = self._serving_policy()
        return [asyncio.ensure_future(self._decode(policy, rows)) for rows in requests]

    async def _decode(self, policy: Policy, rows: list[dict[str, Any]]) -> dict[str, Any]:
        decoded = await self.decoder.submit(policy, [DecodeRequest(**row) for row in rows])
        return self._answer(policy, decoded)

    async def generate_stream(self, rows: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Decode a request's rows, yielding as they grow: first {model_version}, then {pieces: [[row index,
        text, calculator override or None], ...]} once per decode step that wrote text, last the same
        {model_version, outputs} as `generate`. The pieces of a row put together are its output's text."""
        policy = self._serving_policy()
        yield {"model_version": policy.version}
        arrived: asyncio.Queue[list[TextPiece] | None] = asyncio.Queue()
        result = self.decoder.submit(policy, [DecodeRequest(**row) for row in rows], arrived.put_nowait)
        # the decode loop hands every piece over before it settles `result`, so None comes last
        result.add_done_callback(lambda _: arrived.put_nowait(None))
        finished = False
        while not finished:
            pieces = await arrived.get()
            if pieces is None:
                break
            while not arrived.empty():  # the consumer fell behind: send what has piled up as one item
                more = arrived.get_nowait()
                if more is None:
                    finished = True
                    break
                pieces.extend(more)
            yield {"pieces": pieces}
        yield self._answer(policy, result.result())

    async def score(self, problems: list[str], solutions: list[str]) -> dict[str, Any]:
        """The verifier's score S of each (problem, solution) pair, in order: {model_version, scores}."""
        if len(problems) != len(solutions):
            raise ValueError(f"{len(problems)} problems for {len(solutions)} solutions")
        return await self._score_group((list(problems), list(solutions)))

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def _score_group(self, requests: list[tuple[list[str], list[str]]]) -> list[dict[str, Any]]:
        """Concurrent score requests as one `score_candidates` call (its batches sort rows by length, so
        requests of different lengths pad little), then split back per request."""
        policy = self._serving_policy()
        problems = [p for ps, _ in requests for p in ps]
        solutions = [s for _, ss in requests for s in ss]
        scores = await asyncio.get_running_loop().run_in_executor(
            self._scorer, score_candidates, policy.model, policy.tokenizer, problems, solutions, self.score_rows)
        answers, start = [], 0
        for ps, _ in requests:
            answers.append({"model_version": policy.version, "scores": scores[start:start + len(ps)]})
            start += len(ps)
        return answers

    def _serving_policy(self) -> Policy:
        if self.policy is None:
            raise RuntimeError(f"pool {self.pool!r} has no model yet: publish a checkpoint first")
        return self.policy

    def _answer(self, policy: Policy, decoded: list[Decoded]) -> dict[str, Any]:
        overrides = sum(len(d.calculator_overrides) for d in decoded)
        if overrides:
            metrics.calculator_overrides().inc(overrides, tags={"pool": self.pool})
        return {"model_version": policy.version, "outputs": [asdict(d) for d in decoded]}

    def info(self) -> dict[str, Any]:
        return {"pool": self.pool, "replica_id": self.replica_id, "node_id": ray.get_runtime_context().get_node_id(),
                "model_version": self.policy.version if self.policy else None,
                "checkpoint": self.policy.checkpoint if self.policy else None, "error": self.error}

    def check_health(self) -> None:
        if self._watcher.done():
            raise RuntimeError("registry watcher stopped")
        if not self.decoder.alive:
            raise RuntimeError("decode thread stopped")

    def __del__(self) -> None:
        try:
            self.registry.forget.remote(self.replica_id)
        except Exception:
            pass
