"""Training benchmark: SFT and DPO steps/s, tokens/s and peak memory, plain TRL vs Ray Train + DeepSpeed ZeRO.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train.py            # the real measurement (quiet machine)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train.py --quick    # smoke run, < 90 s, numbers meaningless

Same model (`small` preset, from scratch; `tiny` with --quick), same data, same TRL arguments, three setups:

  plain     TRL's SFTTrainer / DPOTrainer in ONE fresh Python process: no Ray, no DeepSpeed, use_cpu=True,
            one torch thread. It is the very trainer a Ray Train worker builds
            (`trainers.training.ray_train.build_trainer(kind, config, ray_train=False)` with zero_stage=0).
  ray-N     `trainers.training.ray_train.train_sft` / `train_dpo`: Ray Train TorchTrainer, N workers (1 and 2), each
            running the same TRL trainer under DeepSpeed ZeRO-2 (gloo, fp32). With N workers the global batch
            is N x the per-device batch (data parallel), so compare tokens/s across N, steps/s against plain.

SFT data: the synthetic labeled split (prompt -> rationale, loss on the rationale). DPO data: pairs built as in
tests/test_training.py: the plain-SFT model samples each labeled question at T=0.7, correct samples plus the gold
rationale are `chosen`, wrong ones `rejected` (trainers.core.pairs.preference_pairs); every DPO run starts from that
SFT model (also its reference) and gets its own copy of the pairs file, so no run reuses another's cached
reference log-probs. DPO uses the project's `DPOStageConfig` defaults (beta, RPO weight, precomputed reference).

Columns, and how to read them:
  steps/s (steady)   optimizer steps between the first and the last logged step / the wall time between them:
                     the training loop alone, without one-time start-up, the first logging window, or the final
                     save. plain: timestamps from a TrainerCallback; ray-N: timestamps of rank 0's
                     `[sft] step N/M` lines as they land in the worker's log file (polled every 50 ms).
  steps/s (HF)       HF's own `train_steps_per_second` (steps / `train_runtime`). `train_runtime` starts after
                     DeepSpeed initialisation and the dataloader, and includes the first step and the final save.
  tokens/s           steady steps/s x global batch x mean tokens per example (non-padding prompt+completion
                     tokens; for DPO prompt+chosen+prompt+rejected), the same estimate for every setup.
  steps/s vs plain   steady steps/s / plain's (same per-device batch). Target (issue 4): ray-1 within 15% of
                     plain, i.e. >= 0.85. With N workers a step carries N x the data: read tokens/s vs plain.
  tokens/s vs plain  tokens/s / plain's tokens/s (data throughput, the fair comparison across worker counts).
  start-up s         wall time of the whole call (process start / Ray Train job -> final model on disk) minus
                     `train_runtime`: imports, worker start, model + data loading, tokenisation, DeepSpeed init,
                     DPO reference log-prob precompute, checkpoint reporting. ray.init is reported once apart.
  peak RSS MiB       per worker process, the kernel's high-water mark (VmHWM in /proc/<pid>/status, read by a
                     psutil poller every 0.5 s from outside: trainers/training/ray_train.py is not instrumented). For plain,
                     `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the child process. Both include the process's
                     own imports (a Ray worker also carries Ray's core worker, ~100-150 MiB). Forks of a worker
                     (they inherit its title) and the TrainController are listed apart in the JSON
                     (`other_processes`).

Everything (raw log histories, timestamps, memory per pid, machine info) goes into the JSON.
--quick runs SFT with 1 worker only, a tiny model and a few steps, to stay under 90 s on a shared 2-core machine
(`--quick --stages dpo` and `--quick --workers 2` smoke-test the other paths, each about as long); its numbers
are smoke-test numbers, not the measurement.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (PhaseTimer, Stopwatch, base_parser, build_base, build_task,  # noqa: E402
                               count_parameters, finish, machine_info, print_table, setup_env, target,
                               task_config, workdir)

setup_env()

NAME = "train"
STEP_LINE = re.compile(r"\[(sft|dpo)\] step (\d+)/(\d+)")


def parse_args(argv: Sequence[str] | None = None):
    import argparse

    p = base_parser(__doc__)
    p.add_argument("--preset", default=None, help="model preset (default small; tiny with --quick)")
    p.add_argument("--stages", default=None, help="which stages to benchmark (default sft,dpo; sft with --quick)")
    p.add_argument("--workers", default=None, help="Ray Train worker counts (default 1,2; 1 with --quick)")
    p.add_argument("--sft-steps", type=int, default=None, help="default 200; 8 with --quick")
    p.add_argument("--dpo-steps", type=int, default=None, help="default 100; 6 with --quick")
    p.add_argument("--sft-batch", type=int, default=16, help="per-device batch for SFT")
    p.add_argument("--dpo-batch", type=int, default=8, help="per-device batch for DPO")
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--logging-steps", type=int, default=None, help="default 10; 2 with --quick")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--pair-questions", type=int, default=None,
                   help="labeled questions sampled for DPO pairs (default 200; 24 with --quick)")
    p.add_argument("--plain-child", default="", help=argparse.SUPPRESS)  # internal: run one plain job
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"preset": "tiny" if quick else "small", "workers": "1" if quick else "1,2",
                "stages": "sft" if quick else "sft,dpo",
                "sft_steps": 8 if quick else 200, "dpo_steps": 6 if quick else 100,
                "logging_steps": 2 if quick else 10, "pair_questions": 24 if quick else 200}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.stages = [s.strip() for s in str(args.stages).split(",") if s.strip()]
    unknown = set(args.stages) - {"sft", "dpo"}
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}")
    return args


# ---------------------------------------------------------------------------------------------- plain TRL

def _plain_trainer(kind: str, config: Any, step_times: list[tuple[int, float]]):
    """The exact TRL trainer a Ray Train worker builds (`trainers.training.ray_train.build_trainer`), built for one plain
    process: `ray_train=False` (no Ray callbacks) and `zero_stage=0` (no DeepSpeed). A callback timestamps
    every logged step."""
    from transformers import TrainerCallback

    from trainers.training.ray_train import build_trainer

    class StepClock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            if logs and "loss" in logs:
                step_times.append((state.global_step, time.perf_counter()))

    trainer = build_trainer(kind, config.model_copy(update={"zero_stage": 0}), ray_train=False)
    assert not trainer.is_deepspeed_enabled and trainer.args.use_cpu
    trainer.add_callback(StepClock())
    return trainer


def plain_child(spec_path: str) -> None:
    """Runs in a fresh process: one plain TRL job; writes its timings and memory next to the spec."""
    spec = json.loads(Path(spec_path).read_text())
    t_start = time.perf_counter()
    import torch

    from trainers.training.config import DPOStageConfig, SFTStageConfig

    torch.set_num_threads(1)
    kind = spec["kind"]
    config = (SFTStageConfig if kind == "sft" else DPOStageConfig)(**spec["config"])
    config = config.checked()
    t_imported = time.perf_counter()
    step_times: list[tuple[int, float]] = []
    trainer = _plain_trainer(kind, config, step_times)
    rss_before_train = _memory_mib(os.getpid(), "VmRSS")
    t_built = time.perf_counter()
    trainer.train()
    t_trained = time.perf_counter()
    trainer.save_model(config.output_dir)
    trainer.processing_class.save_pretrained(config.output_dir)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # build_trainer's temp folder for HF checkpoints
    t_saved = time.perf_counter()
    Path(spec["result_path"]).write_text(json.dumps({
        "log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
        "step_times": step_times,
        "phases_s": {"imports": t_imported - t_start, "build_trainer": t_built - t_imported,
                     "train_call": t_trained - t_built, "save": t_saved - t_trained},
        "torch_threads": torch.get_num_threads(),
        "rss_before_train_mib": rss_before_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }, default=str))


def run_plain(kind: str, config: Any, work: Path) -> dict[str, Any]:
    """Start a fresh Python process for one plain job (so its peak memory is its own) and time it."""
    run_dir = work / f"{kind}-plain-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "spec.json"
    result_path = run_dir / "result.json"
    spec.write_text(json.dumps({"kind": kind, "config": config.model_dump(mode="json", exclude_unset=True),
                                "result_path": str(result_path)}))
    log = run_dir / "child.log"
    with Stopwatch() as sw, open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--plain-child", str(spec)],
                              stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    if proc.returncode != 0 or not result_path.exists():
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"plain {kind} run failed (exit {proc.returncode}):\n{tail}")
    child = json.loads(result_path.read_text())
    return {"wall_s": sw.seconds, "log_history": child["log_history"], "global_step": child["global_step"],
            "step_times": child["step_times"], "child_phases_s": child["phases_s"],
            "worker_peak_rss_mib": {"plain": round(child["peak_rss_mib"], 1)},
            "rss_before_train_mib": child["rss_before_train_mib"], "torch_threads": child["torch_threads"]}


# ---------------------------------------------------------------------------------------------- Ray Train

def _memory_mib(pid: int, field: str) -> float | None:
    """A /proc/<pid>/status memory field in MiB: `VmRSS` (resident now) or `VmHWM` (the peak resident set so
    far, kernel-tracked, so a poll misses no peak between two polls); None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RayJobWatcher(threading.Thread):
    """While one Ray Train job runs: peak memory of this driver's own `RayTrainWorker` (and `TrainController`)
    processes, and the arrival time of each `[kind] step N/M` line in this cluster's worker log files.

    Only descendants of this process count (another Ray cluster on the machine has its own workers), and pids
    seen by an earlier job are ignored."""

    def __init__(self, logs_dir: Path | None, ignore_pids: set[int], mem_interval_s: float = 0.5,
                 log_interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.logs_dir = logs_dir
        self.ignore = set(ignore_pids)
        self.mem_interval_s, self.log_interval_s = mem_interval_s, log_interval_s
        self.peaks: dict[int, dict[str, Any]] = {}
        self.step_times: list[tuple[int, float]] = []
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.halt = threading.Event()
        if logs_dir is not None:  # only what is written from now on
            for path in logs_dir.glob("worker-*.out"):
                self.offsets[path] = path.stat().st_size

    def run(self) -> None:
        next_mem = 0.0
        while not self.halt.is_set():
            now = time.perf_counter()
            if now >= next_mem:
                self._poll_memory()
                next_mem = now + self.mem_interval_s
            self._poll_logs()
            self.halt.wait(self.log_interval_s)
        self._poll_memory()
        self._poll_logs()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)

    def _poll_memory(self) -> None:
        import psutil

        try:
            children = self.me.children(recursive=True)
        except psutil.Error:
            return
        for proc in children:
            if proc.pid in self.ignore:
                continue
            entry = self.peaks.get(proc.pid)
            if entry is None:
                try:
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                role = ("RayTrainWorker" if "RayTrainWorker" in cmd else
                        "TrainController" if "TrainController" in cmd else None)
                if role is None:
                    continue
                parent = self.peaks.get(proc.ppid())
                if parent is not None:  # a fork of a worker inherits its title: not a worker of its own
                    role = f"child of {parent['role']} {proc.ppid()}"
                entry = self.peaks[proc.pid] = {"role": role, "cmdline": cmd[:160], "peak_rss_mib": 0.0}
            hwm = _memory_mib(proc.pid, "VmHWM")
            if hwm is not None:
                entry["peak_rss_mib"] = round(max(entry["peak_rss_mib"], hwm), 1)

    def _poll_logs(self) -> None:
        if self.logs_dir is None:
            return
        now = time.perf_counter()
        for path in self.logs_dir.glob("worker-*.out"):
            start = self.offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size <= start:
                    continue
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read(size - start).decode("utf-8", "replace")
            except OSError:
                continue
            self.offsets[path] = size
            text = self.partial.pop(path, "") + chunk
            lines = text.split("\n")
            if not text.endswith("\n"):
                self.partial[path] = lines.pop()
            for line in lines:
                match = STEP_LINE.search(line)
                if match:
                    self.step_times.append((int(match.group(2)), now))

    def worker_peaks(self) -> dict[str, float]:
        return {str(pid): e["peak_rss_mib"] for pid, e in self.peaks.items() if e["role"] == "RayTrainWorker"}

    def other_peaks(self) -> dict[str, dict[str, Any]]:
        """The TrainController and any forks of workers, with their titles."""
        return {str(pid): e for pid, e in self.peaks.items() if e["role"] != "RayTrainWorker"}


def ray_logs_dir() -> Path | None:
    try:
        import ray._private.worker as ray_worker

        return Path(ray_worker._global_node.get_logs_dir_path())
    except Exception:  # private API; without it the steady rate falls back to HF's
        return None


def run_ray(kind: str, config: Any, seen_pids: set[int]) -> dict[str, Any]:
    from trainers.training.ray_train import train_dpo, train_sft

    watcher = RayJobWatcher(ray_logs_dir(), seen_pids)
    watcher.start()
    try:
        with Stopwatch() as sw:
            result = (train_sft if kind == "sft" else train_dpo)(config)
    finally:
        watcher.stop()
    seen_pids.update(watcher.peaks)
    return {"wall_s": sw.seconds, "log_history": result.metrics["log_history"],
            "global_step": result.metrics["global_step"], "step_times": watcher.step_times,
            "worker_peak_rss_mib": watcher.worker_peaks(), "other_processes": watcher.other_peaks(),
            "num_workers": result.metrics["num_workers"]}


# ---------------------------------------------------------------------------------------------- data

def mean_tokens_per_example(kind: str, data_path: Path, tokenizer_path: Path) -> float:
    """Non-padding tokens one training example puts through the model (prompt + completion + EOS; DPO: both
    sequences of a pair)."""
    from transformers import AutoTokenizer

    from trainers.training.ray_train import _read_jsonl, _sft_dataset

    tok = AutoTokenizer.from_pretrained(tokenizer_path)

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    if kind == "sft":
        rows = list(_sft_dataset(_read_jsonl(str(data_path))))
        counts = [n(r["prompt"]) + n(r["completion"]) + 1 for r in rows]
    else:
        counts = [2 * n(r["prompt"]) + n(r["chosen"]) + n(r["rejected"]) + 2 for r in _read_jsonl(str(data_path))]
    return sum(counts) / max(1, len(counts))


def build_pairs(sft_model: Path, labeled: Path, n_questions: int, out: Path, seed: int) -> dict[str, Any]:
    """DPO pairs as tests/test_training.py builds them: the SFT model's own samples at T=0.7, the gold
    rationale joining the correct ones, correct vs wrong per question."""
    from transformers import AutoTokenizer

    from trainers.models.checkpoints import load_policy
    from trainers.data.problems import load_problems
    from trainers.engine.decoding import decode_all
    from trainers.core.pairs import preference_pairs
    from trainers.core.prompting import format_completion, format_prompt
    from trainers.engine.rows import DecodeParams, make_requests, to_records

    problems = list(load_problems(labeled))[:n_questions]
    tok = AutoTokenizer.from_pretrained(sft_model)
    longest = max(len(tok(format_completion(p.rationale or ""), add_special_tokens=False)["input_ids"])
                  for p in problems)
    params = DecodeParams(n=3, temperature=0.7, max_new_tokens=int(1.3 * longest) + 1, seed=seed)
    model, tokenizer = load_policy(sft_model)
    records = to_records(problems, params, decode_all(model, tokenizer, make_requests(problems, params)), "sft")
    del model
    sampled_correct = sum(r["correct"] for r in records)
    for p in problems:
        records.append({"question_id": p.id, "prompt": format_prompt(p.question), "completion": p.rationale,
                        "correct": True})
    pairs, stats = preference_pairs(records, max_pairs_per_question=2)
    if not pairs:
        raise RuntimeError(f"no DPO pairs could be built: {stats}")
    out.write_text("".join(json.dumps({"prompt": p["prompt"], "chosen": format_completion(p["chosen"]),
                                       "rejected": format_completion(p["rejected"])}) + "\n" for p in pairs))
    return {**stats, "samples": len(problems) * params.n, "sampled_correct": sampled_correct,
            "max_new_tokens": params.max_new_tokens}


def prepare_deepspeed_op() -> dict[str, Any]:
    """DeepSpeed JIT-builds its CPU shared-memory comm op (tens of seconds) the first time any process needs it. Build it
    once here, outside every timed run, unless the cache already holds it."""
    cache = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if any(cache.glob("**/deepspeed_shm_comm*.so")):
        return {"cache": str(cache), "cached": True, "build_s": 0.0}
    with Stopwatch() as sw:
        subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                       check=True, env=os.environ.copy())
    return {"cache": str(cache), "cached": False, "build_s": round(sw.seconds, 1)}


def copy_data(src: Path, run_dir: Path) -> Path:
    """Each run reads its own copy: TRL caches DPO reference log-probs beside the data file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dst = run_dir / src.name
    shutil.copyfile(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- summary

def summarise(run: dict[str, Any], setup: str, workers: int, per_device_batch: int,
              tokens_per_example: float) -> dict[str, Any]:
    final = next((h for h in reversed(run["log_history"]) if "train_runtime" in h), {})
    runtime = final.get("train_runtime")
    times = sorted(run["step_times"])
    steady = None
    if len(times) >= 2 and times[-1][1] > times[0][1]:
        steady = (times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1])
    global_batch = per_device_batch * workers
    rate = steady if steady is not None else final.get("train_steps_per_second")
    peaks = run["worker_peak_rss_mib"]
    losses = [h["loss"] for h in run["log_history"] if "loss" in h]
    return {
        "setup": setup, "workers": workers, "per_device_batch": per_device_batch, "global_batch": global_batch,
        "steps": run["global_step"], "steady_steps_per_s": _r(steady), "steady_from": "logged steps"
        if steady is not None else "HF train_runtime (too few logged steps)",
        "logged_steps_timed": len(times),
        "hf_train_runtime_s": runtime, "hf_steps_per_s": final.get("train_steps_per_second"),
        "hf_samples_per_s": final.get("train_samples_per_second"),
        "tokens_per_example": round(tokens_per_example, 1),
        "tokens_per_s": _r(rate * global_batch * tokens_per_example if rate else None),
        "wall_s": round(run["wall_s"], 2), "startup_overhead_s": _r(run["wall_s"] - runtime if runtime else None),
        "peak_rss_mib_per_worker": peaks, "peak_rss_mib_max": max(peaks.values(), default=None),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "raw": run,
    }


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def stage_table(kind: str, rows: list[dict[str, Any]]) -> None:
    plain = next((r for r in rows if r["setup"] == "plain"), None)
    for r in rows:
        for key, out in (("steady_steps_per_s", "vs_plain"), ("tokens_per_s", "tokens_vs_plain")):
            base = plain[key] if plain else None
            r[out] = _r(r[key] / base) if base and r[key] else None
    print_table(f"{kind.upper()}: steps/s, tokens/s, start-up and peak memory",
                ("setup", "workers", "global batch", "steps", "steps/s (steady)", "steps/s (HF)", "steps/s vs plain",
                 "tokens/s", "tokens/s vs plain", "start-up s", "wall s", "peak RSS MiB/worker"),
                [(r["setup"], r["workers"], r["global_batch"], r["steps"], r["steady_steps_per_s"],
                  r["hf_steps_per_s"], r["vs_plain"], r["tokens_per_s"], r["tokens_vs_plain"],
                  r["startup_overhead_s"], r["wall_s"],
                  " / ".join(f"{v:.0f}" for v in r["peak_rss_mib_per_worker"].values()) or None) for r in rows])


# ---------------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plain_child:
        plain_child(args.plain_child)
        return {}
    import torch

    from trainers.training.config import DPOStageConfig, SFTStageConfig

    torch.set_num_threads(1)
    phases = PhaseTimer()
    result: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "args": vars(args), "machine": machine_info(),
                              "stages": {}}
    with workdir(args.workdir, args.keep, "bench-train-") as work:
        task = task_config(args.quick, args.seed, n_labeled=400, n_test=10)
        with phases.phase("build_task_and_model"):
            paths = build_task(work, task)
            base = build_base(work, args.preset, task, args.seed, n_texts=2000 if args.quick else 5000)
        result["model"] = {"preset": args.preset, "parameters": count_parameters(base)}
        print(f"[bench] {args.preset} model, {result['model']['parameters']:,} parameters", flush=True)

        def sft_config(run: str, workers: int, data: Path) -> SFTStageConfig:
            return SFTStageConfig(model_path=str(base), data_path=str(data), output_dir=str(work / run / "model"),
                                  max_steps=args.sft_steps, per_device_train_batch_size=args.sft_batch,
                                  learning_rate=args.sft_lr, logging_steps=args.logging_steps,
                                  save_steps=args.sft_steps, num_workers=workers, zero_stage=args.zero_stage,
                                  seed=args.seed, storage_path=str(work / "ray_train"), run_name=f"bench-{run}")

        def dpo_config(run: str, workers: int, data: Path, model: Path) -> DPOStageConfig:
            return DPOStageConfig(model_path=str(model), data_path=str(data), output_dir=str(work / run / "model"),
                                  max_steps=args.dpo_steps, per_device_train_batch_size=args.dpo_batch,
                                  logging_steps=args.logging_steps, save_steps=args.dpo_steps, num_workers=workers,
                                  zero_stage=args.zero_stage, seed=args.seed, storage_path=str(work / "ray_train"),
                                  run_name=f"bench-{run}")

        # Plain runs first, before any Ray process exists on this side, so they share the CPU with nothing of ours.
        plain: dict[str, dict[str, Any]] = {}
        sft_data = paths["labeled"]
        with phases.phase("sft_plain"):
            plain["sft"] = run_plain("sft", sft_config("sft-plain", 1, copy_data(sft_data, work / "sft-plain")), work)
        sft_model = work / "sft-plain" / "model"
        if "dpo" in args.stages:
            pairs_path = work / "pairs.jsonl"
            with phases.phase("build_dpo_pairs"):
                result["dpo_pairs"] = build_pairs(sft_model, paths["labeled"], args.pair_questions, pairs_path,
                                                  args.seed)
            print(f"[bench] DPO pairs: {result['dpo_pairs']}", flush=True)
            with phases.phase("dpo_plain"):
                plain["dpo"] = run_plain("dpo", dpo_config("dpo-plain", 1, copy_data(pairs_path, work / "dpo-plain"),
                                                           sft_model), work)
        tokens = {"sft": mean_tokens_per_example("sft", sft_data, base)}
        if "dpo" in args.stages:
            tokens["dpo"] = mean_tokens_per_example("dpo", pairs_path, base)

        with phases.phase("deepspeed_op_cache"):
            result["deepspeed_op"] = prepare_deepspeed_op()
        import ray

        with Stopwatch() as sw:
            # address="local": always a fresh private cluster, never someone else's running one
            ray.init(address="local", num_cpus=max(args.workers + [os.cpu_count() or 1]), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        result["ray_init_s"] = round(sw.seconds, 2)
        seen: set[int] = set()
        try:
            for kind in args.stages:
                batch = args.sft_batch if kind == "sft" else args.dpo_batch
                rows = [summarise(plain[kind], "plain", 1, batch, tokens[kind])]
                for workers in args.workers:
                    run = f"{kind}-ray{workers}"
                    if kind == "sft":
                        config = sft_config(run, workers, copy_data(sft_data, work / run))
                    else:
                        config = dpo_config(run, workers, copy_data(pairs_path, work / run), sft_model)
                    with phases.phase(run):
                        rows.append(summarise(run_ray(kind, config, seen), f"ray-{workers}", workers, batch,
                                              tokens[kind]))
                stage_table(kind, rows)
                result["stages"][kind] = rows
        finally:
            ray.shutdown()

    print(f"\n(ray.init once: {result['ray_init_s']} s, not in any start-up column)")
    targets = {}
    for kind, rows in result["stages"].items():
        one = next((r for r in rows if r["setup"] == "ray-1"), None)
        if one is not None:
            targets[f"{kind}_ray1_vs_plain"] = target(one["vs_plain"], 0.85, True,
                                                      f"{kind.upper()} steady steps/s, Ray Train + ZeRO-"
                                                      f"{args.zero_stage} 1 worker / plain TRL")
    return finish(result, targets, phases, NAME, args, "tiny model, a few steps")


if __name__ == "__main__":
    main()
