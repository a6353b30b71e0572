"""Serving configuration: one `PoolConfig` per sampler pool, the optional verifier pool (`VerifierConfig`)
and the HTTP API's limits (the run config's `serving` section, and `args.serving` of a Serve config file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ray.serve.config import AutoscalingConfig

from trainers.core.answers import ANSWER_FORMATS
from trainers.core.errors import CheckpointError, ConfigError, config_error
from trainers.core.rerank import STRATEGIES
from trainers.engine.decoding import MAX_NEW_TOKENS
from trainers.models.checkpoints import DEFAULT_POLICY_DTYPE, POLICY_DTYPES, validate_causal_lm

POOLS = ("rollout", "solver")  # the Serve apps; the verifier pool, when configured, lives in the solver app
VERIFIER = "verifier"
RERANK_RULES = tuple(s for s in STRATEGIES if s != "maj")
AnswerFormat = Literal[ANSWER_FORMATS]  # type: ignore[valid-type]
RerankRule = Literal[RERANK_RULES]  # type: ignore[valid-type]
PolicyDtype = Literal[POLICY_DTYPES]  # type: ignore[valid-type]

# Ray Serve's throughput mode (user code on the replica's own event loop, gRPC between deployments, buffered
# request logs): the ingress and the proxy use less CPU, which leaves more to the samplers under many
# concurrent HTTP clients (benchmarks/README.md). Every Ray process reads it when it starts, so it has to be
# in the environment before the cluster starts (the deploy image sets it too). Export it as 0 to opt out.
# The one part of that mode we leave off: a handle's router stays on its own loop, because the coordinator
# calls the rollout pool from short-lived `asyncio.run` loops, and a router bound to a closed loop fails.
# That mode also turns on direct ingress, where every stopped ingress replica (the solver's `SolverAPI`, the
# rollout app's `Sampler`) stays up for a minimum draining period, 30 s by default, so that an external load
# balancer in front of the replicas' own ports can deregister it. Nothing dpost deploys points one there: the
# Serve proxy and handles learn of a removal from the controller within a second. So every redeploy, scale
# and `serve.shutdown` would wait out that window for nothing; we set it to 0. A stopping replica still
# finishes every request in flight first (Serve's drain), so replacing replicas loses no request.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def apply_serve_env() -> None:
    """Put `SERVE_ENV` into this process's environment (values already set win); call before `ray.init`
    starts a local cluster."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


class Autoscaling(AutoscalingConfig):
    """Ray Serve's own autoscaling_config, with unknown keys refused."""

    model_config = ConfigDict(extra="forbid")


class PoolConfig(BaseModel):
    """One pool of `Sampler` replicas: its size, placement, batching and queue limits."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when `autoscaling` is set).")
    autoscaling: Autoscaling | None = Field(
        None, description="Ray Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, "
                          "...) instead of a fixed count.")
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica; 0 on a laptop, where replicas "
                                                   "idle while training runs.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica on a cluster.")
    resources: dict[str, float] | None = Field(None, description="Custom Ray resources per replica, e.g. "
                                                                 "{sampler: 1} to pin a pool to a node type.")
    max_replicas_per_node: int | None = Field(None, ge=1, description="Spread replicas over nodes.")
    max_batch_size: int = Field(32, ge=1, description="Concurrent requests grouped by @serve.batch into one "
                                                      "decode step.")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="How long a batch waits to fill.")
    max_rows_per_forward: int = Field(64, ge=1, description="Rows (question x samples) a replica decodes at "
                                                            "once: its continuous-batching slots.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(512, ge=1, description="Requests waiting for a replica; past this Serve "
                                                            "answers 503 instead of queueing forever.")

    def batch_settings(self) -> dict[str, Any]:
        """What a replica applies in place (Serve's `user_config`)."""
        return self.model_dump(include={"max_batch_size", "batch_wait_timeout_s", "max_rows_per_forward"})

    def deployment_options(self) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.resources:
            actor["resources"] = dict(self.resources)
        opts: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                                "max_queued_requests": self.max_queued_requests,
                                "user_config": self.batch_settings()}
        if self.autoscaling:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_unset=True)
        else:
            opts["num_replicas"] = self.num_replicas
        if self.max_replicas_per_node:
            opts["max_replicas_per_node"] = self.max_replicas_per_node
        return opts


def checks_files(info: ValidationInfo) -> bool:
    """Paths are checked unless the caller says they exist only elsewhere (`dpost submit`: on the cluster; a
    config read back from the cluster's registry). The run config's sections use it too."""
    return (info.context or {}).get("check_files", True)


class VerifierConfig(PoolConfig):
    """The verifier pool behind `/v1/solve`'s `rerank` strategy (Liu et al. 2023): `Sampler` replicas in the
    solver's app that serve `score` with a verifier checkpoint. Its batch settings group concurrent `score`
    calls; `max_rows_per_forward` is the scoring batch (one row per candidate, both labels in it)."""

    path: str = Field(description="The verifier's checkpoint folder: a causal LM trained to write ` correct` or "
                                  "` incorrect` after the verifier prompt (`train_verifier`), or a policy that "
                                  "learnt both tasks.")
    version: str | None = Field(None, description="The label its replicas report; default: the folder's name.")
    rule: RerankRule = Field("rr_topk", description="How the answer is chosen from the clusters: rr_topk (the "
                                                    "best-scored solution within the top-K clusters, the paper's "
                                                    "RR.Top-K), weighted (largest summed score) or weighted_topk.")
    top_k: int | None = Field(None, ge=1, description="K of rr_topk/weighted_topk (a request's `top_k` wins); "
                                                      "None: min(8, n // 2), as `dpost eval --rerank`.")

    @field_validator("path")
    @classmethod
    def _causal_lm(cls, path: str, info: ValidationInfo) -> str:
        if checks_files(info):
            try:
                validate_causal_lm(path)
            except CheckpointError as exc:
                raise ValueError(str(exc).splitlines()[0]) from None
        return path

    @property
    def label(self) -> str:
        return self.version or Path(self.path).name


class ServingConfig(BaseModel):
    """Both sampler pools, the optional verifier pool and the public solver API's limits."""

    model_config = ConfigDict(extra="forbid")

    rollout: PoolConfig = Field(default_factory=PoolConfig, description="The coordinator's pool: sampling and "
                                                                        "evaluation.")
    solver: PoolConfig = Field(default_factory=PoolConfig, description="The public pool behind the HTTP API.")
    verifier: VerifierConfig | None = Field(None, description="The verifier pool that `/v1/solve` strategy "
                                                              "`rerank` scores samples on; None: no re-ranking.")
    dtype: PolicyDtype = Field(
        DEFAULT_POLICY_DTYPE, description="What every replica (rollout, solver, verifier) loads the weights as: "
        "auto (bfloat16 on a GPU, float32 on the CPU), float32, or bfloat16 (faster than float32 on a CPU with "
        "native bfloat16 dot products, AVX512-BF16 or AMX; benchmarks/README.md). Every load, at start and "
        "on a hot swap, uses it. bfloat16's greedy and sampled texts and verifier scores may differ a little "
        "from float32's: its rounding can flip near-tied tokens.")
    answer_format: AnswerFormat = Field("gsm8k", description="How `/v1/solve` reads and groups final answers: "
                                                             "gsm8k (`#### N`) or boxed (MATH's `\\boxed{}`).")
    host: str = Field("127.0.0.1", description="Where Serve's HTTP proxy listens (expose it deliberately).")
    port: int = Field(8000, ge=1, le=65535, description="Serve's HTTP port.")
    max_question_chars: int = Field(2000, ge=1, description="Longer questions get HTTP 422.")
    max_n: int = Field(32, ge=1, description="Most samples one request may ask for.")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="Cap on generated tokens per sample.")
    retry_after_s: float = Field(1.0, ge=0, description="When the solver's queue (solver.max_queued_requests) "
                                                        "is full, Serve answers 503 with this Retry-After.")

    def pool(self, name: str) -> PoolConfig:
        if name == VERIFIER:
            if self.verifier is None:
                raise ConfigError("no verifier pool is configured (serving.verifier)")
            return self.verifier
        if name not in POOLS:
            raise ConfigError(f"unknown pool {name!r}; choose one of {POOLS + (VERIFIER,)}")
        return getattr(self, name)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "", check_files: bool = True) -> "ServingConfig":
        """`check_files=False` for a config whose paths exist where it is deployed, not here."""
        try:
            return cls.model_validate(values, context={"check_files": check_files})
        except ValidationError as exc:
            raise config_error(exc, cls, where, prefix="serving") from None
