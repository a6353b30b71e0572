"""Serving configuration: one `PoolConfig` per sampler pool plus the HTTP API's limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from trainers.core.errors import ConfigError, reject_unknown_keys

POOLS = ("rollout", "solver")

# Ray Serve's throughput mode (user code on the replica's own event loop, gRPC between deployments, buffered
# request logs): the ingress and the proxy use less CPU, which leaves more to the samplers under many
# concurrent HTTP clients (benchmarks/README.md). Every Ray process reads it when it starts, so it has to be
# in the environment before the cluster starts (the deploy image sets it too). Export it as 0 to opt out.
# The one part of that mode we leave off: a handle's router stays on its own loop, because the coordinator
# calls the rollout pool from short-lived `asyncio.run` loops, and a router bound to a closed loop fails.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}


def apply_serve_env() -> None:
    """Put `SERVE_ENV` into this process's environment (values already set win); call before `ray.init`
    starts a local cluster."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


@dataclass
class PoolConfig:
    """One pool of `Sampler` replicas.

    Args:
        num_replicas: fixed replica count (ignored when `autoscaling` is set).
        autoscaling: a Ray Serve `autoscaling_config` dict (min_replicas, max_replicas, target_ongoing_requests).
        num_cpus: CPUs reserved per replica. 0 on a laptop, where replicas idle while training runs.
        num_gpus: GPUs per replica on a cluster.
        resources: custom Ray resources per replica, e.g. `{"sampler": 1}` to pin a pool to a node type.
        max_replicas_per_node: spread replicas over nodes.
        max_batch_size: requests grouped by `@serve.batch` into one batched decode.
        batch_wait_timeout_s: how long a batch waits to fill.
        max_rows_per_forward: rows (question x samples) a replica decodes at once (continuous batching slots).
        max_ongoing_requests / max_queued_requests: past these Serve answers 503 instead of queueing forever.
    """

    num_replicas: int = 1
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None
    max_replicas_per_node: int | None = None
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.02
    max_rows_per_forward: int = 64
    max_ongoing_requests: int = 64
    max_queued_requests: int = 512

    def validate(self, name: str) -> None:
        if self.autoscaling is None and (not isinstance(self.num_replicas, int) or self.num_replicas < 1):
            raise ConfigError(f"serving.{name}.num_replicas must be a positive integer, got {self.num_replicas!r}")
        if self.max_batch_size < 1 or self.max_rows_per_forward < 1:
            raise ConfigError(f"serving.{name}: batch sizes must be >= 1")

    def deployment_options(self) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.resources:
            actor["resources"] = dict(self.resources)
        opts: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                                "max_queued_requests": self.max_queued_requests,
                                "user_config": {"max_batch_size": self.max_batch_size,
                                                "batch_wait_timeout_s": self.batch_wait_timeout_s,
                                                "max_rows_per_forward": self.max_rows_per_forward}}
        if self.autoscaling:
            opts["autoscaling_config"] = dict(self.autoscaling)
        else:
            opts["num_replicas"] = self.num_replicas
        if self.max_replicas_per_node:
            opts["max_replicas_per_node"] = self.max_replicas_per_node
        return opts


@dataclass
class ServingConfig:
    """Both pools and the public solver API.

    Args:
        host/port: where Serve's HTTP proxy listens (127.0.0.1 by default: expose it deliberately).
        max_question_chars: longer questions get HTTP 422.
        max_n: most samples one request may ask for.
        max_new_tokens: cap on generated tokens per sample.
        retry_after_s: when the solver's queue (`solver.max_queued_requests`) is full, Serve answers 503 with
            this `Retry-After` instead of queueing without bound.
    """

    rollout: PoolConfig = field(default_factory=PoolConfig)
    solver: PoolConfig = field(default_factory=PoolConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    max_question_chars: int = 2000
    max_n: int = 32
    max_new_tokens: int = 300
    retry_after_s: float = 1.0

    def pool(self, name: str) -> PoolConfig:
        if name not in POOLS:
            raise ConfigError(f"unknown pool {name!r}; choose one of {POOLS}")
        return getattr(self, name)

    def validate(self) -> None:
        for name in POOLS:
            self.pool(name).validate(name)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ServingConfig":
        reject_unknown_keys(values, cls, "serving")
        pools = {}
        for name in POOLS:
            raw = values.get(name) or {}
            reject_unknown_keys(raw, PoolConfig, f"serving.{name}")
            pools[name] = PoolConfig(**raw)
        rest = {k: v for k, v in values.items() if k not in POOLS}
        config = cls(**pools, **rest)
        config.validate()
        return config
