"""Hot swaps under sustained HTTP load: how many requests fail, and what latency clients see, while the
`solver` pool is swapped to new model versions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/swap_load.py                 # 2,000 requests, 48 clients
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/swap_load.py --checkpoint runs/demo/checkpoints/sft-1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/swap_load.py --quick         # smoke run

`tests/test_serving.py` proves the property (no request fails during swaps) with a small load; this script
measures it at volume. Model: `--checkpoint PATH`, or else a from-scratch `tiny` model (random weights: its
answers are noise, its cost per request is real). Ray and Serve start on a private local cluster; the solver
pool (`--replicas`) serves the checkpoint. `--requests` POST /v1/solve calls (greedy, synthetic questions) are
spread over `--clients` concurrent clients; meanwhile `--swaps` hot swaps, one every `--swap-every-s` seconds,
alternate between the checkpoint and a byte-identical copy (same load cost, a new version name).

Reported: ok/failed requests (target: 0 failed), answers/s, latency p50/p99 over the whole load, answers per
model version, and each swap's duration (until every replica reports the new version). Start-up times are
reported apart and are not part of any rate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (PhaseTimer, Stopwatch, base_parser, build_base, build_task,  # noqa: E402
                               finish, free_port, machine_info, print_table, setup_env, target, task_config,
                               workdir)

setup_env()

from benchmarks.sampler import _load  # noqa: E402  (the same load generator as the sampler's HTTP section)

NAME = "swap_load"


def parse_args(argv: Sequence[str] | None = None):
    p = base_parser(__doc__)
    p.add_argument("--checkpoint", default="", help="an existing HF folder (default: a from-scratch tiny model)")
    p.add_argument("--requests", type=int, default=None, help="total requests (default 2000; 600 --quick)")
    p.add_argument("--clients", type=int, default=48, help="concurrent clients")
    p.add_argument("--swaps", type=int, default=None, help="hot swaps during the load (default 4; 2 --quick)")
    p.add_argument("--swap-every-s", type=float, default=1.0,
                   help="seconds from the start (or the last swap's return) to the next swap")
    p.add_argument("--replicas", type=int, default=1, help="solver replicas")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    args.requests = args.requests or (600 if args.quick else 2000)
    args.swaps = args.swaps if args.swaps is not None else (2 if args.quick else 4)
    return args


async def load_with_swaps(url: str, questions: Sequence[str], args: Any, checkpoints: Sequence[Path]
                          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The load and the swaps at the same time; swaps start after the first interval and stop once the load
    has finished (the tables say how many happened: fewer than `--swaps` means the load was too short)."""
    from services.pools import swap

    load = asyncio.create_task(_load(url, questions, args.requests, args.clients))
    swaps = []
    for i in range(args.swaps):
        await asyncio.sleep(args.swap_every_s)
        if load.done():
            break
        version, checkpoint = f"load-v{i + 2}", checkpoints[(i + 1) % len(checkpoints)]
        with Stopwatch() as sw:
            await asyncio.to_thread(swap, "solver", version, str(checkpoint))
        swaps.append({"version": version, "swap_s": round(sw.seconds, 3)})
        print(f"[swap] {version} served by every replica after {sw.seconds:.2f} s", flush=True)
    return await load, swaps


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import httpx
    import ray
    from ray import serve

    from services.config import PoolConfig, ServingConfig
    from services.pools import deploy_pool, start_serve
    from trainers.data.problems import load_problems

    phases = PhaseTimer()
    result: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "args": vars(args), "machine": machine_info()}
    with workdir(args.workdir, args.keep, "bench-swap-load-") as work:
        task = task_config(True, args.seed)
        paths = build_task(work, task)
        questions = [p.question for p in load_problems(paths["test"]).problems]
        checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else build_base(work, "tiny", task, args.seed,
                                                                                        n_texts=2000)
        copy = work / "checkpoint-copy"
        shutil.copytree(checkpoint, copy, dirs_exist_ok=True)
        config = ServingConfig(port=free_port(), max_new_tokens=args.max_new_tokens,
                               solver=PoolConfig(num_replicas=args.replicas, max_batch_size=32))
        url = f"http://127.0.0.1:{config.port}"
        with phases.phase("ray_init"):
            ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        try:
            with phases.phase("serve_and_deploy"):
                start_serve(config)
                deploy_pool("solver", config, version="load-v1", checkpoint=str(checkpoint))
                while httpx.get(url + "/healthz", timeout=5).status_code != 200:  # the proxy can lag a moment
                    time.sleep(0.2)
            with phases.phase("load"):
                load, swaps = asyncio.run(load_with_swaps(url, questions, args, [checkpoint, copy]))
        finally:
            serve.shutdown()
            ray.shutdown()
    result.update(load=load, swaps=swaps, checkpoint=str(checkpoint) if args.checkpoint else None)
    print_table(f"POST /v1/solve under hot swaps: {args.requests} requests, {args.clients} clients, "
                f"{len(swaps)} swaps", ("requests", "ok", "failed", "answers/s", "p50 s", "p99 s", "wall s"),
                [(load["requests"], load["ok"], load["failed"], load["answers_per_s"], load["latency_p50_s"],
                  load["latency_p99_s"], load["seconds"])])
    print_table("answers per model version", ("version", "answers"), sorted(load["model_versions"].items()))
    print_table("swaps", ("version", "swap() s"), [(s["version"], s["swap_s"]) for s in swaps])
    targets = {"failed": target(float(load["failed"]), 0, False, "requests that did not get a 200 during swaps")}
    return finish(result, targets, phases, NAME, args, f"{args.requests} requests, tiny model")


if __name__ == "__main__":
    main()
