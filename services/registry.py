"""The model registry: one small named actor that says which checkpoint each pool should serve.

Replicas poll it and swap themselves in place, so a new version reaches every replica of a pool without a
restart, and a replica started later (scaling, a crash) comes up on the current version. Replicas also
report back what they serve, which is how a caller waits until a swap has landed everywhere.
"""

from __future__ import annotations

import time
from typing import Any

import ray

REGISTRY_NAME = "dpost_model_registry"
NAMESPACE = "dpost"
HEARTBEAT_TTL_S = 5.0


@ray.remote(num_cpus=0)
class ModelRegistry:
    def __init__(self) -> None:
        self.pools: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, dict[str, Any]] = {}
        self.serving_config: dict[str, Any] | None = None
        self.run_root: str | None = None

    def set_serving_config(self, config: dict[str, Any]) -> None:
        """Kept here so `dpost scale` (any client) can redeploy a pool with the options it was started with."""
        self.serving_config = config

    def get_serving_config(self) -> dict[str, Any] | None:
        return self.serving_config

    def set_run_dir(self, path: str | None) -> None:
        """The run directory the solver was started for (None: started on a bare checkpoint); the web page's
        run view reads it through the ingress."""
        self.run_root = path

    def run_dir(self) -> str | None:
        return self.run_root

    def publish(self, pool: str, version: str, checkpoint: str) -> None:
        entry = self.pools.setdefault(pool, {"history": []})
        entry.update(version=version, checkpoint=checkpoint, published_at=time.time())
        entry["history"].append({"version": version, "checkpoint": checkpoint, "at": time.time()})

    def revert(self, pool: str, bad_version: str) -> dict[str, Any] | None:
        """Drop a version replicas could not load and go back to the one before it."""
        entry = self.pools.get(pool)
        if not entry or entry.get("version") != bad_version:
            return None
        entry["history"] = [h for h in entry["history"] if h["version"] != bad_version]
        if entry["history"]:
            previous = entry["history"][-1]
            entry.update(version=previous["version"], checkpoint=previous["checkpoint"])
            return previous
        return None

    def current(self, pool: str) -> tuple[str, str] | None:
        entry = self.pools.get(pool)
        return (entry["version"], entry["checkpoint"]) if entry and "version" in entry else None

    def node_id(self) -> str:
        """The node this registry runs on (it should be the head; see `get_registry`)."""
        return ray.get_runtime_context().get_node_id()

    def heartbeat(self, replica_id: str, pool: str, version: str | None, error: dict[str, str] | None) -> None:
        self.replicas[replica_id] = {"pool": pool, "version": version, "error": error, "seen": time.time()}

    def forget(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    def status(self, pool: str) -> dict[str, Any]:
        now = time.time()
        live = {rid: r for rid, r in self.replicas.items()
                if r["pool"] == pool and now - r["seen"] < HEARTBEAT_TTL_S}
        entry = self.pools.get(pool, {})
        return {"pool": pool, "version": entry.get("version"), "checkpoint": entry.get("checkpoint"),
                "history": entry.get("history", []), "replicas": live}


def get_registry() -> "ray.actor.ActorHandle":
    """The cluster's registry, created on first use; detached so it outlives the job that made it.

    It lives on the head node: whoever asks first (often a replica starting on a sampler node) must not
    decide where it runs, or losing that node would lose every pool's version and every replica's reports.
    The affinity is hard: a soft one falls back to a worker node when the registry is created in the first
    seconds of a cluster, before the head's resources are reported. The head holds the GCS, so a cluster that
    lost it has no registry to keep anyway; the registry needs no CPU, so it always fits there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ModelRegistry.options(name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                 scheduling_strategy=NodeAffinitySchedulingStrategy(_head_node_id(), soft=False),
                                 ).remote()


def _head_node_id() -> str:
    for node in ray.nodes():
        if node["Alive"] and "node:__internal_head__" in node["Resources"]:
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()
