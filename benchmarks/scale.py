"""Every stage at the realistic size (`llama-100m`, about 100M parameters): time and peak memory per stage.

    .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages build
    flock /tmp/dpost-ray.lock timeout 480 .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages sft-z2,sft-z3
    flock /tmp/dpost-ray.lock timeout 480 .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages dpo-z2,dpo-z3
    flock /tmp/dpost-ray.lock timeout 480 .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages hot-swap
    .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages sampling,eval
    .venv/bin/python benchmarks/scale.py --workdir /tmp/dpost-scale --stages vs-vllm --vs-vllm /work/vllm-venv/bin/python

A benchmark, not a test. Stages can run in separate calls (each Ray call stays short and under the lock);
they share `--workdir` (model, data, trained checkpoints) and each call merges its stages into
`benchmarks/results/scale.json` (`stages`: one {stage, seconds, peak_rss_mib, ...} per stage, the last
measurement of each; `hot_swap_seconds`; `vs_vllm`).

Stages:
- `build`: the synthetic task and `llama-100m` with random weights (tokenizer trained on task text); peak
  RSS of the building process.
- `sft-z2`, `sft-z3`, `dpo-z2`, `dpo-z3`: `trainers.training.ray_train.train_sft` / `train_dpo` on 2 Ray
  Train workers under DeepSpeed ZeRO-2 / ZeRO-3 (gloo, fp32, one thread each), `--train-steps` steps of
  `--train-batch` rows per worker. `seconds` = the whole call; `step_s` = median time between rank 0's step
  lines when a progress reporter prints them, else HF's `train_runtime` / steps (the first step included);
  `outside_train_loop_s` = the call minus `train_runtime`: worker start, model and data loading, DeepSpeed
  init, the final `save_model` (ZeRO-3 gathers the shards), Ray Train's checkpoint report and copy;
  `checkpoint_bytes` = the final folder; peak RSS per worker (VmHWM, polled from outside). DPO pairs: the gold rationale (chosen) against the same rationale with a wrong final answer
  (rejected): the model learns nothing useful from them, the cost per step is real.
- `hot-swap`: Ray Serve's rollout pool of `--replicas` replicas on the model, then `--swaps` times: a new
  checkpoint folder is written (a copy of the model, as a training stage leaves one), and
  `services.pools.swap` is timed from the moment the folder is complete until every replica serves the new
  version. Bytes moved = folder bytes x replicas (each replica reads the whole folder).
- `sampling`: `decode_all` in this process (the engine every replica runs), greedy, `--max-new-tokens`, at
  batch 1, 8 and 32 with and without the calculator; max(4, batch) prompts per cell; tokens/s and tokens
  per CPU second of the process (steadier on a shared machine). Random weights
  rarely write `<<expr=`, so the calculator column measures its per-token checks.
- `eval`: `trainers.evaluation.evaluate_problems` (greedy pass@1) on `--eval-problems` test questions with a
  local decoder (batch 32).
- `vs-vllm`: `benchmarks/sampler.py --vs-vllm` (both models), its rows copied into `vs_vllm` (or, with
  `--vs-vllm-json`, the rows of earlier `sampler.py --vs-vllm` result files).
In-process stages run in a fresh child process, so each peak RSS is that stage's own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (PhaseTimer, Stopwatch, base_parser, build_base, build_task, free_port,  # noqa: E402
                               machine_info, print_table, results_path, setup_env, task_config, write_json)

setup_env()

NAME = "scale"
PRESET = "llama-100m"
STAGES = ("build", "sft-z2", "sft-z3", "dpo-z2", "dpo-z3", "hot-swap", "sampling", "eval", "vs-vllm")


def parse_args(argv: Sequence[str] | None = None):
    p = base_parser(__doc__)
    p.add_argument("--stages", default="build,sampling,eval", help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--train-batch", type=int, default=2, help="rows per worker per step")
    p.add_argument("--replicas", type=int, default=2, help="rollout pool replicas for hot-swap")
    p.add_argument("--swaps", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sampling-batches", default="1,8,32")
    p.add_argument("--eval-problems", type=int, default=32)
    p.add_argument("--vs-vllm", default="", metavar="PYTHON", help="vLLM venv's python for the vs-vllm stage")
    p.add_argument("--demo-checkpoint", default="", help="demo-size model for vs-vllm (default: trained there)")
    p.add_argument("--vs-vllm-json", default="",
                   help="vs-vllm: take the rows of these `sampler.py --vs-vllm` result files (comma-separated) "
                        "instead of running it")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if args.quick:
        args.train_steps, args.max_new_tokens, args.eval_problems, args.swaps = 2, 16, 4, 1
    if not args.workdir:
        args.workdir = "/tmp/dpost-scale" + ("-quick" if args.quick else "")
    return args


# ---------------------------------------------------------------------------------------------- helpers

def peak_rss_self_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _child(target: str, args: Any, queue: Any) -> None:
    setup_env()
    import torch

    torch.set_num_threads(1)
    with Stopwatch() as sw:
        out = globals()[target](args)
    queue.put({**out, "seconds": round(sw.seconds, 2), "peak_rss_mib": peak_rss_self_mib()})


def in_child(target: str, args: Any) -> dict[str, Any]:
    """Run `target(args)` in a fresh spawned process; its result plus seconds and its own peak RSS."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=_child, args=(target, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def paths_of(work: Path) -> dict[str, Path]:
    return {"task": work / "task", "labeled": work / "task" / "labeled.jsonl", "test": work / "task" / "test.jsonl",
            "model": work / f"base-{PRESET}", "pairs": work / "pairs.jsonl"}


# ---------------------------------------------------------------------------------------------- stages

def stage_build(args: Any) -> dict[str, Any]:
    work = Path(args.workdir)
    task = task_config(False, args.seed, n_labeled=400, n_test=max(64, args.eval_problems))
    build_task(work, task)
    folder = build_base(work, PRESET, task, args.seed)
    write_pairs(paths_of(work)["labeled"], paths_of(work)["pairs"])
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    return {"folder": str(folder), "folder_bytes": folder_bytes(folder), "vocab_size": config.vocab_size,
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size}


def write_pairs(labeled: Path, out: Path) -> int:
    """(prompt, gold rationale, the rationale with a wrong final answer): cheap pairs of realistic length."""
    from trainers.core.prompting import format_completion, format_prompt
    from trainers.data.problems import load_problems

    lines = []
    for p in load_problems(labeled):
        rationale = p.rationale or ""
        head, sep, answer = rationale.rpartition("#### ")
        if not sep:
            continue
        wrong = f"{head}#### {answer.strip()}1"
        lines.append(json.dumps({"prompt": format_prompt(p.question), "chosen": format_completion(rationale),
                                 "rejected": format_completion(wrong)}))
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def stage_train(kind: str, zero: int, args: Any, seen: set[int]) -> dict[str, Any]:
    from benchmarks.train import copy_data, run_ray
    from trainers.training.config import DPOStageConfig, SFTStageConfig

    work = Path(args.workdir)
    paths = paths_of(work)
    run = f"{kind}-z{zero}"
    shutil.rmtree(work / run, ignore_errors=True)
    common = dict(model_path=str(paths["model"]), output_dir=str(work / run / "model"), max_steps=args.train_steps,
                  per_device_train_batch_size=args.train_batch, logging_steps=1, save_steps=10**6,
                  num_workers=2, zero_stage=zero, seed=args.seed, storage_path=str(work / "ray_train"),
                  run_name=f"scale-{run}", max_failures=0)
    if kind == "sft":
        config = SFTStageConfig(data_path=str(copy_data(paths["labeled"], work / run)), learning_rate=1e-4, **common)
    else:
        # only the pairs the steps use: DPO computes the reference log-probs of the whole file up front
        pairs = copy_data(paths["pairs"], work / run)
        used = 2 * args.train_steps * args.train_batch
        pairs.write_text("".join(pairs.read_text().splitlines(keepends=True)[:used]))
        config = DPOStageConfig(data_path=str(pairs), **common)
    with Stopwatch() as sw:
        ray_run = run_ray(kind, config, seen)
    steps = sorted(ray_run["step_times"])
    gaps = [b[1] - a[1] for a, b in zip(steps, steps[1:])]
    end = sw.start + sw.seconds
    peaks = ray_run["worker_peak_rss_mib"]
    runtime = next((h["train_runtime"] for h in ray_run["log_history"] if "train_runtime" in h), None)
    step_s = sorted(gaps)[len(gaps) // 2] if gaps else (runtime / ray_run["global_step"] if runtime else None)
    return {"stage": run, "seconds": round(sw.seconds, 2), "peak_rss_mib": max(peaks.values(), default=None),
            "worker_peak_rss_mib": peaks, "steps": ray_run["global_step"],
            "step_s": round(step_s, 2) if step_s else None, "train_runtime_s": runtime,
            "outside_train_loop_s": round(sw.seconds - runtime, 2) if runtime else None,
            "after_last_step_s": round(end - steps[-1][1], 2) if steps else None,
            "checkpoint_bytes": folder_bytes(work / run / "model"), "zero_stage": zero, "workers": 2,
            "per_worker_batch": args.train_batch}


def stage_hot_swap(args: Any) -> dict[str, Any]:
    import psutil
    import ray
    from ray import serve

    from services.config import PoolConfig, ServingConfig
    from services.pools import deploy_pool, start_serve, swap

    work = Path(args.workdir)
    model = paths_of(work)["model"]
    config = ServingConfig(port=free_port(), max_new_tokens=args.max_new_tokens,
                           rollout=PoolConfig(num_replicas=args.replicas))
    ray.init(address="local", num_cpus=max(2, args.replicas + 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    out: dict[str, Any] = {"replicas": args.replicas, "swaps": []}
    try:
        start_serve(config)
        with Stopwatch() as sw:
            deploy_pool("rollout", config, version="scale-v1", checkpoint=str(model))
        out["deploy_s"] = round(sw.seconds, 2)
        for i in range(args.swaps):
            folder = work / f"swap-{i}"
            shutil.rmtree(folder, ignore_errors=True)
            with Stopwatch() as write:
                shutil.copytree(model, folder)  # what a training stage leaves: a complete HF folder
            with Stopwatch() as sw:
                swap("rollout", f"scale-v{i + 2}", str(folder))
            size = folder_bytes(folder)
            out["swaps"].append({"seconds": round(sw.seconds, 2), "write_s": round(write.seconds, 2),
                                 "folder_bytes": size, "bytes_moved": size * args.replicas})
            print(f"[scale] swap {i + 1}: {sw.seconds:.2f} s until {args.replicas} replicas serve it", flush=True)
        replicas = [p for p in psutil.Process().children(recursive=True)
                    if "ServeReplica:rollout" in " ".join(p.cmdline())]
        out["replica_rss_mib"] = [round(p.memory_info().rss / 2**20, 1) for p in replicas]
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    seconds = [s["seconds"] for s in out["swaps"]]
    return {"stage": "hot-swap", "seconds": max(seconds), "median_s": sorted(seconds)[len(seconds) // 2],
            "peak_rss_mib": max(out["replica_rss_mib"], default=None), **out}


def stage_sampling(args: Any) -> dict[str, Any]:
    from trainers.data.problems import load_problems
    from trainers.engine.decoding import DecodeRequest, decode_all
    from trainers.engine.rows import DecodeParams, make_requests
    from trainers.models.checkpoints import load_policy

    paths = paths_of(Path(args.workdir))
    with Stopwatch() as load:
        model, tokenizer = load_policy(paths["model"])
    problems = list(load_problems(paths["test"]))
    decode_all(model, tokenizer, [DecodeRequest(prompt="warm-up", max_new_tokens=4)] * 2, 2)
    cells = []
    for batch in [int(b) for b in args.sampling_batches.split(",")]:
        chosen = problems[:max(4, batch)]
        for calc in (False, True):
            requests = make_requests(chosen, DecodeParams(max_new_tokens=args.max_new_tokens, calculator=calc))
            cpu_start = time.process_time()
            with Stopwatch() as sw:
                decoded = decode_all(model, tokenizer, requests, batch_size=batch)
            cpu_s = time.process_time() - cpu_start
            tokens = sum(d.num_tokens for d in decoded)
            cells.append({"batch": batch, "calculator": calc, "rows": len(chosen), "tokens": tokens,
                          "seconds": round(sw.seconds, 2), "tokens_per_s": round(tokens / sw.seconds, 1),
                          "tokens_per_cpu_s": round(tokens / cpu_s, 1),
                          "overrides": sum(len(d.calculator_overrides) for d in decoded)})
            print(f"[scale] sampling batch {batch} calculator {calc}: {cells[-1]['tokens_per_s']} tokens/s, "
                  f"{cells[-1]['tokens_per_cpu_s']} per CPU second", flush=True)
    return {"stage": "sampling", "load_s": round(load.seconds, 2), "cells": cells}


def stage_eval(args: Any) -> dict[str, Any]:
    from trainers.data.problems import load_problems
    from trainers.evaluation import EvalConfig, evaluate_problems, local_decoder

    paths = paths_of(Path(args.workdir))
    problems = list(load_problems(paths["test"]))[:args.eval_problems]
    with Stopwatch() as load:
        decode = local_decoder(paths["model"], batch_size=32)
    config = EvalConfig(data=[str(paths["test"])], greedy=True, n=0, max_new_tokens=args.max_new_tokens,
                        batch_size=len(problems))
    tokens = []
    with Stopwatch() as sw:
        _, metrics = evaluate_problems(problems, decode, config, "scale",
                                       on_chunk=lambda items, s, n: tokens.append(n))
    return {"stage": "eval", "problems": len(problems), "load_s": round(load.seconds, 2),
            "decode_and_score_s": round(sw.seconds, 2), "tokens": sum(tokens),
            "pass_at_1": metrics.get("pass@1", metrics)}


def stage_vs_vllm(args: Any) -> dict[str, Any]:
    from benchmarks.sampler import main as sampler_main

    if args.vs_vllm_json:
        results = [json.loads(Path(f).read_text()) for f in args.vs_vllm_json.split(",")]
        return {"stage": "vs-vllm", "rows": [r for res in results for r in res["vs_vllm"]["rows"]],
                "targets": {k: v for res in results for k, v in res["targets"].items()},
                "sources": args.vs_vllm_json.split(","),
                "machine_load": [res["machine"].get("load_avg_1_5_15") for res in results]}
    argv = ["--vs-vllm", args.vs_vllm, "--realistic-checkpoint", str(paths_of(Path(args.workdir))["model"]),
            "--workdir", str(Path(args.workdir) / "vs-vllm"), "--max-new-tokens", str(args.max_new_tokens)]
    if args.demo_checkpoint:
        argv += ["--checkpoint", args.demo_checkpoint]
    if args.quick:
        argv += ["--quick", "--vs-rows", "8,2"]
    result = sampler_main(argv)
    return {"stage": "vs-vllm", "rows": result["vs_vllm"]["rows"], "targets": result["targets"]}


# ---------------------------------------------------------------------------------------------- main

def merge(path: Path, measured: dict[str, dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """This call's stages into scale.json, beside those of earlier calls."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    by_stage = {s["stage"]: s for s in data.get("stages", [])}
    details = data.get("details", {})
    for name, result in measured.items():
        if name == "vs-vllm":
            data["vs_vllm"] = [{k: r.get(k) for k in ("model", "batch", "calculator", "dpost_tps", "vllm_tps", "ratio",
                                                      "ratio_range", "dpost_tokens_per_cpu_s", "vllm_tokens_per_cpu_s",
                                                      "cpu_ratio", "cpu_ratio_range", "rounds",
                                                      "calculator_overhead_pct", "calculator_overhead_cpu_pct",
                                                      "calculator_own_pct",
                                                      "same_text_share", "prompts")}
                               for r in result["rows"]]
            details["vs-vllm"] = result
            continue
        if name == "sampling":
            for cell in result["cells"]:
                stage = f"sampling b{cell['batch']} calc {'on' if cell['calculator'] else 'off'}"
                by_stage[stage] = {"stage": stage, "seconds": cell["seconds"], "peak_rss_mib": result["peak_rss_mib"],
                                   "tokens_per_s": cell["tokens_per_s"], "tokens": cell["tokens"],
                                   "tokens_per_cpu_s": cell["tokens_per_cpu_s"]}
        else:
            by_stage[name] = {k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k in
                              ("worker_peak_rss_mib",)}
            by_stage[name]["stage"] = name
        details[name] = {**result, "machine_load": machine.get("load_avg_1_5_15")}
        if name == "hot-swap":
            data["hot_swap_seconds"] = result["median_s"]
            data["hot_swap_bytes_moved"] = result["swaps"][0]["bytes_moved"] if result["swaps"] else None
    order = {name: i for i, name in enumerate(STAGES)}
    def position(stage: str) -> tuple[int, int, str]:  # sampling rows by batch size, not as text
        words = stage.split(" ")
        batch = int(words[1][1:]) if words[0] == "sampling" else 0
        return order.get(words[0], 99), batch, stage

    data["stages"] = sorted(by_stage.values(), key=lambda s: position(s["stage"]))
    data["details"] = details
    data["preset"] = PRESET
    data["machine"] = machine
    data.setdefault("hot_swap_seconds", None)
    data.setdefault("vs_vllm", [])
    return data


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    phases = PhaseTimer()
    in_process: dict[str, str] = {"build": "stage_build", "sampling": "stage_sampling", "eval": "stage_eval"}
    if not paths_of(work)["model"].is_dir() and "build" not in args.stages:
        args.stages.insert(0, "build")
    ray_started = False
    seen: set[int] = set()
    path = results_path(NAME + ("-quick" if args.quick else ""), args.out)
    data: dict[str, Any] = {}
    try:
        for stage in args.stages:
            with phases.phase(stage):
                if stage in in_process:
                    measured = {"stage": stage, **in_child(in_process[stage], args)}
                elif stage == "hot-swap":
                    measured = stage_hot_swap(args)
                elif stage == "vs-vllm":
                    measured = stage_vs_vllm(args)
                else:
                    if not ray_started:
                        import ray

                        from benchmarks.train import prepare_deepspeed_op

                        prepare_deepspeed_op()
                        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                                 configure_logging=False)
                        ray_started = True
                    kind, zero = stage.split("-z")
                    measured = stage_train(kind, int(zero), args, seen)
            # written after every stage: a later stage that runs out of time loses only itself
            data = merge(path, {stage: measured}, machine_info())
            write_json(path, data)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    print_table(f"{PRESET}: stages (this call and earlier ones in {path.name})",
                ("stage", "seconds", "peak RSS MiB / process", "step s", "after last step s"),
                [(s["stage"], s.get("seconds"), s.get("peak_rss_mib"), s.get("step_s"), s.get("after_last_step_s"))
                 for s in data["stages"]])
    return data


if __name__ == "__main__":
    main()
