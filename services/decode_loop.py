"""`DecodeLoop`: one thread per replica that runs every request through a continuous-batching engine.

Requests from concurrent `@serve.batch` calls join the rows already decoding at the engine's next admission
instead of waiting for the running batch to end, so the replica stays full under load. There is one engine
per policy snapshot: after a hot swap new requests go to the new model's engine while rows in flight finish
on the model they started with (each answer keeps its true `model_version`); the old engine is dropped when
it has no rows left. Everything runs on one thread, so two models never fight over the replica's cores.

A streaming request also gets its rows' text as it grows: the pieces one engine step produced for a request
are handed to its event loop together, once per step, and always before the request's result.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from trainers.engine.decoding import DecodeEngine, Decoded, DecodeRequest
from trainers.models.checkpoints import Policy

logger = logging.getLogger("ray.serve")

# One piece of a streaming row's text: (row index in the request, text, calculator override or None).
TextPiece = tuple[int, str, "dict[str, str] | None"]


@dataclass(eq=False)
class _Job:
    policy: Policy  # every row of a job decodes with it
    requests: Sequence[DecodeRequest]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_pieces: Callable[[list[TextPiece]], None] | None = None  # called on `loop`
    results: list[Decoded | None] = field(init=False)
    remaining: int = field(init=False)
    pieces: list[TextPiece] = field(init=False, default_factory=list)  # produced since the last hand-over

    def __post_init__(self) -> None:
        self.results = [None] * len(self.requests)
        self.remaining = len(self.requests)

    def text(self, index: int, piece: str, override: dict[str, str] | None) -> None:
        self.pieces.append((index, piece, override))

    def hand_over(self) -> None:
        if self.pieces and self.on_pieces is not None:
            pieces, self.pieces = self.pieces, []
            self.loop.call_soon_threadsafe(_deliver, self.future, self.on_pieces, pieces)

    def done(self, index: int, decoded: Decoded) -> None:
        self.results[index] = decoded
        self.remaining -= 1
        if self.remaining == 0:
            self.hand_over()  # the loop runs callbacks in order: every piece arrives before the result
            self.loop.call_soon_threadsafe(_settle, self.future, self.results, None)

    def fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, None, error)


def _deliver(future: asyncio.Future, on_pieces: Callable[[list[TextPiece]], None],
             pieces: list[TextPiece]) -> None:
    if not future.done():
        on_pieces(pieces)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (request cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DecodeLoop:
    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # one engine per policy (policies compare by identity); holding the policy here keeps its model
        # alive until its last row is done, even after the replica swapped to another
        self._engines: dict[Policy, tuple[DecodeEngine, set[_Job]]] = {}
        self._thread = threading.Thread(target=self._run, name="dpost-decode", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, policy: Policy, requests: Sequence[DecodeRequest],
               on_pieces: Callable[[list[TextPiece]], None] | None = None) -> asyncio.Future:
        """Queue `requests` for decoding with `policy`; the future resolves to their `Decoded`s, in order.
        With `on_pieces`, the caller's loop also gets the rows' text as it grows (see `DecodeEngine.add`)."""
        loop = asyncio.get_running_loop()
        job = _Job(policy, list(requests), loop, loop.create_future(), on_pieces)
        if not requests:
            job.future.set_result([])
        else:
            self._inbox.put(job)
        return job.future

    def set_max_batch(self, max_batch: int) -> None:
        """Applies to engines created from now on (each engine's cache is sized when it is made)."""
        self.max_batch = max_batch

    def _run(self) -> None:
        while True:
            busy = any(not engine.idle for engine, _ in self._engines.values())
            try:
                self._accept(self._inbox.get(block=not busy))
                while True:
                    self._accept(self._inbox.get_nowait())
            except queue.Empty:
                pass
            except Exception:  # _accept failed the job itself; keep serving the others
                logger.exception("could not queue a request")
            for policy, (engine, jobs) in list(self._engines.items()):
                if engine.idle:
                    del self._engines[policy]  # nothing left to decode with this snapshot
                    continue
                try:
                    engine.step()
                except Exception as exc:  # fail this engine's requests, keep the replica serving
                    logger.exception("decode step failed")
                    del self._engines[policy]
                    for job in jobs:
                        job.fail(exc)
                    continue
                for job in jobs:
                    job.hand_over()

    def _accept(self, job: _Job) -> None:
        if job.policy not in self._engines:
            engine = DecodeEngine(job.policy.model, job.policy.tokenizer, self.max_batch)
            self._engines[job.policy] = (engine, set())
        engine, jobs = self._engines[job.policy]
        try:
            engine.add(job.requests, lambda index, decoded: self._done(jobs, job, index, decoded),
                       job.text if job.on_pieces is not None else None)
        except Exception as exc:  # e.g. the tokenizer refused a prompt: only this request fails
            job.fail(exc)
            raise
        jobs.add(job)

    @staticmethod
    def _done(jobs: set[_Job], job: _Job, index: int, decoded: Decoded) -> None:
        job.done(index, decoded)
        if job.remaining == 0:
            jobs.discard(job)

