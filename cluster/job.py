"""Job entrypoint: what `ray job submit -- python -m cluster.job --config run.yaml` (or `dpost submit`) runs
on a cluster. Connects to the cluster, starts Serve if needed, and drives a detached coordinator actor."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from typing import Any

from cluster.config import RunConfig, config_from_yaml_text, load_config
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


def drive(config: RunConfig, detached: bool, show_progress: bool = True) -> dict[str, Any]:
    """Run the coordinator to the end, mirroring its log and sampling progress on this console."""
    import ray

    from services.pools import start_serve

    start_serve(config.serving)
    coordinator = start_coordinator(config, detached)
    result_ref = coordinator.run.remote()
    bar = None
    try:
        while True:
            ready, _ = ray.wait([result_ref], timeout=1.0)
            if show_progress:
                bar = _render(coordinator, bar)
            if ready:
                return ray.get(result_ref)
    finally:
        if bar is not None:
            bar.close()


def _render(coordinator: Any, bar: Any) -> Any:
    """A progress bar for the sampling stage in flight (the coordinator's own log lines reach this console
    through Ray's log forwarding)."""
    import ray
    from tqdm import tqdm

    try:
        status = ray.get(coordinator.status.remote(), timeout=5)
    except Exception:  # the coordinator is restarting; its retried `run` resumes from the manifest
        return bar
    stages = status["manifest"]["stages"]
    done = sum(1 for s in stages.values() if s.get("status") == "done")
    current = status["current"]
    if current:
        desc = f"{current['name']} ({done} stages done)"
        if bar is None or bar.desc != desc:
            if bar is not None:
                bar.close()
            bar = tqdm(total=current["total"], desc=desc, unit="row", leave=False)
        bar.n = current["done"]
        bar.refresh()
    return bar


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

        ray.init(address=args.address)
        started = time.time()
        result = drive(config, detached=True, show_progress=False)
    except DpostError as exc:
        print(f"dpost: error: {exc}", file=sys.stderr)
        return 2
    print(f"[job] finished in {time.time() - started:.0f}s: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
