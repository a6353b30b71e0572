"""Job entrypoint: what `ray job submit -- python -m cluster.job --config run.yaml` (or `dpost submit`) runs
on a cluster. Connects to the cluster, starts Serve if needed, and drives a detached coordinator actor."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from typing import Any

from cluster.config import RunConfig, config_from_yaml_text, load_config
from cluster.console import Console
from trainers.core.errors import DpostError


def coordinator_name(run_name: str) -> str:
    return f"dpost-coordinator-{run_name}"


def start_coordinator(config: RunConfig, detached: bool) -> Any:
    """Create (or re-attach to) the run's coordinator; a live one is reused, so a re-run resumes."""
    from cluster.coordinator import Coordinator
    from services.registry import NAMESPACE

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "name": coordinator_name(config.name), "namespace": NAMESPACE, "get_if_exists": True,
        # beside the driver (the head node for a submitted job), so losing a worker node does not take the
        # loop down; soft, so it still starts elsewhere if that node is gone
        "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
    }
    if detached:
        options["lifetime"] = "detached"
    return Coordinator.options(**options).remote(config.to_dict())


def drive(config: RunConfig, detached: bool, show_progress: bool = True, console: Console | None = None
          ) -> dict[str, Any]:
    """Run the coordinator to the end, showing its lines and the running stage's bar on `console` (by default
    this process's stdout; bars only on a terminal, never without `show_progress`)."""
    import ray

    from services.pools import start_serve

    console = console or Console(bars=None if show_progress else False)
    start_serve(config.serving)
    coordinator = start_coordinator(config, detached)
    result_ref = coordinator.run.remote()
    try:
        while True:
            ready, _ = ray.wait([result_ref], timeout=1.0)
            _show(coordinator, console)  # after `ready` too: the lines logged since the last poll
            if ready:
                return ray.get(result_ref)
    finally:
        console.end_bar()


def _show(coordinator: Any, console: Console) -> None:
    import ray

    try:
        snapshot = ray.get(coordinator.console.remote(console.seen, console.source), timeout=5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return  # the coordinator is restarting; its retried `run` resumes from the manifest
    console.show(snapshot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.job", description=__doc__)
    parser.add_argument("--config", help="run config YAML (a path readable on the cluster)")
    parser.add_argument("--config-b64", help=argparse.SUPPRESS)  # how `dpost submit` ships the file inline
    parser.add_argument("--address", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.config_b64:
            config = config_from_yaml_text(base64.b64decode(args.config_b64).decode())
        elif args.config:
            config = load_config(args.config)
        else:
            parser.error("give --config")
        import ray

        # the job log gets the coordinator's lines (drive); each Ray process keeps its own log on the cluster
        ray.init(address=args.address, log_to_driver=False)
        started = time.time()
        result = drive(config, detached=True, show_progress=False)
    except DpostError as exc:
        print(f"dpost: error: {exc}", file=sys.stderr)
        return 2
    print(f"[job] finished in {time.time() - started:.0f}s: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
