"""Operate the sampler pools from a driver or the coordinator: deploy, swap, wait, scale, decode rows.

`rollout` is a Serve app with no HTTP route (the coordinator decodes on it through a handle); `solver` is
the public app (`SolverAPI` ingress + its own `Sampler` deployment). Separate apps, so redeploying or scaling
one never touches the other. The `verifier` pool, when `serving.verifier` is set, is a second `Sampler`
deployment (`Verifier`) in the solver's app: it only serves that app's re-ranking, so it comes and goes with it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from ray import serve

from services.api import SolverAPI
from services.config import POOLS, VERIFIER, ServingConfig
from services.registry import get_registry
from services.sampler import Sampler
from trainers.engine.decoding import Decoded, DecodeRequest
from trainers.core.errors import CheckpointError, ConfigError
from trainers.models.checkpoints import validate_causal_lm


def build_app(pool: str, config: ServingConfig):
    options = config.pool(pool).deployment_options()
    # No access log on the samplers: the loop's traffic would bury the progress bars, and the solver's
    # requests are already logged once by the ingress.
    sampler = Sampler.options(**options, logging_config={"enable_access_log": False}).bind(pool, config.dtype)
    if pool == "rollout":
        return sampler
    verifier = None
    if config.verifier is not None:
        verifier = Sampler.options(name="Verifier", **config.verifier.deployment_options(),
                                   logging_config={"enable_access_log": False}).bind(VERIFIER, config.dtype)
    limits = config.model_dump(mode="json", exclude=set(POOLS))
    # the ingress only parses JSON and awaits the sampler: it must not hold a CPU that training needs
    return SolverAPI.options(ray_actor_options={"num_cpus": 0},
                             max_ongoing_requests=config.solver.max_ongoing_requests,
                             max_queued_requests=config.solver.max_queued_requests,
                             backpressure_config={"status_code": 503, "retry_after_s": config.retry_after_s},
                             ).bind(sampler, limits, verifier)


def start_serve(config: ServingConfig) -> None:
    serve.start(http_options={"host": config.host, "port": config.port})


def deploy_pool(pool: str, config: ServingConfig, version: str | None = None, checkpoint: str | None = None,
                timeout_s: float = 300) -> None:
    """Publish (version, checkpoint) for the pool, then deploy its app; replicas start on that version. The
    solver's app brings its verifier pool when `config.verifier` is set: its checkpoint is checked (a causal
    LM) before anything deploys, and the call returns once the verifier's replicas serve it."""
    verifier = publish_verifier(config) if pool == "solver" else None
    if version and checkpoint:
        publish(pool, version, checkpoint)
    serve.run(build_app(pool, config), name=pool, route_prefix="/" if pool == "solver" else None)
    if version:
        wait_for_version(pool, version, timeout_s=timeout_s)
    if verifier:
        wait_for_version(VERIFIER, verifier, timeout_s=timeout_s)


def publish_verifier(config: ServingConfig) -> str | None:
    """Publish `config.verifier`'s checkpoint as the verifier pool's version (unless it already is); returns
    that version, None when no verifier is configured. CheckpointError when the folder is no causal LM."""
    if config.verifier is None:
        return None
    wanted = (config.verifier.label, str(validate_causal_lm(config.verifier.path)))
    if ray.get(get_registry().current.remote(VERIFIER)) != wanted:
        publish(VERIFIER, *wanted)
    return wanted[0]


def ensure_pools(config: ServingConfig, live: tuple[str, str] | None = None, run_dir: str | None = None) -> None:
    """Deploy whichever pools are not running yet (a restarted coordinator finds them up and leaves them),
    put the run's live model back on the solver if the registry lost it, and publish the run directory
    (`run_dir`) the solver's run view reads."""
    ray.get(get_registry().set_serving_config.remote(config.model_dump(mode="json")))
    if run_dir:
        publish_run_dir(run_dir)
    if live and ray.get(get_registry().current.remote("solver")) is None:
        publish("solver", *live)
    existing = serve.status().applications
    for pool in POOLS:
        # an existing app is left alone even if not RUNNING: after a node loss a replica may be unplaceable
        # for a while, and redeploying would block on it while the surviving replicas can serve
        if pool not in existing:
            deploy_pool(pool, config)


def publish_run_dir(run_dir: str | None) -> None:
    """Say which run directory the solver serves the run view of (None: no run, the view answers 404)."""
    ray.get(get_registry().set_run_dir.remote(str(Path(run_dir).resolve()) if run_dir else None))


def serving_config_from_registry() -> ServingConfig:
    stored = ray.get(get_registry().get_serving_config.remote())
    if stored is None:
        raise ConfigError("no dpost pools are deployed on this cluster (start a run first)")
    return ServingConfig.from_dict(stored, check_files=False)  # its paths are the cluster's


def publish(pool: str, version: str, checkpoint: str) -> None:
    if pool not in POOLS + (VERIFIER,):
        raise ConfigError(f"unknown pool {pool!r}; choose one of {POOLS + (VERIFIER,)}")
    validate_causal_lm(checkpoint)
    ray.get(get_registry().publish.remote(pool, version, str(checkpoint)))


def swap(pool: str, version: str, checkpoint: str, timeout_s: float = 300) -> None:
    """Hot-swap a running pool to (version, checkpoint) and wait until every live replica serves it.
    If replicas refuse the checkpoint, the registry goes back to the previous version and this raises."""
    publish(pool, version, checkpoint)
    wait_for_version(pool, version, timeout_s=timeout_s)


def wait_for_version(pool: str, version: str, timeout_s: float = 300) -> dict[str, Any]:
    registry = get_registry()
    expected = _expected_replicas(pool)
    deadline = time.monotonic() + timeout_s
    while True:
        status = ray.get(registry.status.remote(pool))
        replicas = status["replicas"].values()
        errors = [r["error"] for r in replicas if r["error"] and r["error"]["version"] == version]
        if errors:
            ray.get(registry.revert.remote(pool, version))
            raise CheckpointError(f"pool {pool} refused {version}: {errors[0]['message']}")
        serving = [r for r in replicas if r["version"] == version]
        if serving and len(serving) == len(replicas) and len(serving) >= expected():
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool {pool}: {len(serving)}/{max(len(replicas), expected())} replicas serve "
                               f"{version} after {timeout_s:.0f}s")
        time.sleep(0.2)


def _app_of(pool: str) -> tuple[str, str]:
    """The Serve (application, deployment) that holds a pool's replicas."""
    return ("solver", "Verifier") if pool == VERIFIER else (pool, "Sampler")


def _expected_replicas(pool: str) -> Callable[[], int]:
    app_name, deployment = _app_of(pool)

    def running() -> int:
        try:
            app = serve.status().applications[app_name]
            return sum(dep.replica_states.get("RUNNING", 0) for name, dep in app.deployments.items()
                       if name == deployment)
        except KeyError:
            return 1
    return running


def scale(pool: str, num_replicas: int, config: ServingConfig | None = None) -> None:
    """Change one pool's replica count; new replicas come up on the pool's current version. Scaling the
    verifier redeploys the solver's app, which holds it."""
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ConfigError(f"replicas must be a positive integer, got {num_replicas!r}")
    config = config or serving_config_from_registry()
    config.pool(pool).num_replicas = num_replicas
    config.pool(pool).autoscaling = None
    app_name = _app_of(pool)[0]
    serve.run(build_app(app_name, config), name=app_name, route_prefix="/" if app_name == "solver" else None)
    ray.get(get_registry().set_serving_config.remote(config.model_dump(mode="json")))


def pool_status(pool: str) -> dict[str, Any]:
    return ray.get(get_registry().status.remote(pool))


def decode_on_pool(rows: Sequence[DecodeRequest], pool: str = "rollout", chunk_rows: int = 40,
                   max_retries: int = 5, on_chunk: Callable[[int, list[Decoded], str], None] | None = None
                   ) -> tuple[list[Decoded], list[str]]:
    """Decode rows on a pool, `chunk_rows` per request, all chunks in flight at once (Serve batches them).
    A chunk that fails (a replica died) is sent again; rows keep their seeds, so a retried chunk
    produces the same samples. Returns (decoded rows in order, model_version per row)."""
    handle = serve.get_deployment_handle("Sampler", app_name=pool)
    chunks = [list(rows[i:i + chunk_rows]) for i in range(0, len(rows), chunk_rows)]

    async def one(index: int) -> tuple[list[Decoded], str]:
        payload = [asdict(r) for r in chunks[index]]
        for attempt in range(max_retries + 1):
            try:
                result = await handle.generate.remote(payload)
                decoded = [Decoded(**o) for o in result["outputs"]]
                if on_chunk:
                    on_chunk(index, decoded, result["model_version"])
                return decoded, result["model_version"]
            except Exception:
                if attempt == max_retries:
                    raise
                await asyncio.sleep(min(2.0 ** attempt, 10.0))
        raise AssertionError("unreachable")

    async def run_all() -> list[tuple[list[Decoded], str]]:
        return await asyncio.gather(*(one(i) for i in range(len(chunks))))

    results = asyncio.run(run_all()) if not _in_event_loop() else _run_in_thread(run_all)
    decoded: list[Decoded] = []
    versions: list[str] = []
    for rows_out, version in results:
        decoded.extend(rows_out)
        versions.extend([version] * len(rows_out))
    return decoded, versions


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(factory: Callable[[], Any]) -> Any:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
