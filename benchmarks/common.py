"""Shared helpers for `benchmarks/sampler.py` and `benchmarks/train.py`.

Environment set-up (one thread per process, the DeepSpeed op cache), argparse options every benchmark has,
machine information, markdown tables, JSON results under `benchmarks/results/<name>.json`, timing helpers,
and building a from-scratch model plus the synthetic task with the project's own functions.

Nothing here measures anything by itself; the two benchmark scripts decide what is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def setup_env() -> None:
    """One thread per process (on a shared CPU more threads per process only slow every process down), no
    tokenizer thread pool, and a DeepSpeed JIT-op cache that survives (so no run pays for the build).
    Call before importing torch."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from services.config import apply_serve_env

    apply_serve_env()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from trainers.jit import extensions_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())


# ---------------------------------------------------------------------------------------------- arguments

def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --quick, --out, --workdir, --keep, --seed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (tiny model, few steps/requests, < 90 s): checks the script, "
                             "its numbers mean nothing")
    parser.add_argument("--out", default="", help="JSON results path (default benchmarks/results/<name>.json)")
    parser.add_argument("--workdir", default="", help="where data/models/checkpoints go (default: a temp dir, "
                                                       "removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def results_path(name: str, out: str) -> Path:
    return Path(out) if out else RESULTS_DIR / f"{name}.json"


@contextmanager
def workdir(path: str, keep: bool, prefix: str) -> Iterator[Path]:
    """The benchmark's scratch folder: `path` if given (kept), else a temp dir removed unless `keep`."""
    if path:
        folder = Path(path).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    try:
        yield folder
    finally:
        if keep:
            print(f"[bench] work directory kept: {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- reporting

def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without the core count and the load."""
    import torch

    info: dict[str, Any] = {
        "when_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import psutil

        info["memory_total_mib"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:  # pragma: no cover
        pass
    info["cpu_model"] = _cpu_model()
    info["versions"] = package_versions()
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "ray", "deepspeed", "accelerate", "datasets", "httpx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a markdown table; floats get 3 significant decimals, None prints as '-'."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = [f"\n### {title}\n", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\n[bench] results written to {path}", flush=True)
    return path


def target(value: float | None, goal: float, higher_is_better: bool, description: str) -> dict[str, Any]:
    """One pass/fail line for the issue's targets."""
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"value": value, "target": goal, "comparison": ">=" if higher_is_better else "<=", "met": met,
            "description": description}


def print_targets(targets: dict[str, dict[str, Any]]) -> None:
    rows = [(name, t["description"], t["value"], f"{t['comparison']} {t['target']}",
             "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET")) for name, t in targets.items()]
    print_table("targets", ("target", "what", "measured", "goal", "verdict"), rows)


def finish(result: dict[str, Any], targets: dict[str, dict[str, Any]], phases: "PhaseTimer", name: str,
           args: argparse.Namespace, quick_means: str) -> dict[str, Any]:
    """A benchmark's end: add the targets and phase times to `result`, print the targets (and, for --quick,
    that the numbers are a smoke test: `quick_means` says how small it was), write the JSON; return `result`."""
    result["targets"] = targets
    result["phases_s"] = phases.times
    if targets:
        print_targets(targets)
    if args.quick:
        print(f"\n[bench] --quick: smoke-test numbers ({quick_means}), not the measurement", flush=True)
    write_json(results_path(name + ("-quick" if args.quick else ""), args.out), result)
    return result


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds` (wall time, perf_counter)."""

    start: float = 0.0
    seconds: float = 0.0

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class PhaseTimer:
    """Wall time of each named phase of a benchmark, printed as it goes (so a slow phase is visible live)."""

    times: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            yield
        finally:
            self.times[name] = round(time.perf_counter() - start, 2)
            print(f"[bench] {name}: {self.times[name]:.1f} s", flush=True)


def percentile(values: Sequence[float], q: float) -> float | None:
    """q in [0, 100], linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- model and data

def task_config(quick: bool, seed: int, n_labeled: int = 400, n_test: int = 200):
    """The synthetic task, sized for a benchmark (tiny unlabeled/dev/ood splits: nothing here uses them)."""
    from trainers.data.synthetic import SyntheticTaskConfig

    if quick:
        n_labeled, n_test = min(n_labeled, 160), min(n_test, 48)
    return SyntheticTaskConfig(seed=seed, n_labeled=n_labeled, n_unlabeled=10, n_dev=10, n_test=n_test, n_ood=10)


def build_task(work: Path, config) -> dict[str, Path]:
    """Write the synthetic task as GSM8K jsonl files (split -> path) under work/task."""
    from trainers.data.synthetic import build_synthetic_task

    return build_synthetic_task(config, work / "task")


def build_base(work: Path, preset: str, config, seed: int, n_texts: int = 5000) -> Path:
    """A from-scratch model folder of `preset` (tokenizer trained on the task's own text, random weights)."""
    from trainers.data.synthetic import corpus_texts
    from trainers.models.scratch import build_tiny_model

    return build_tiny_model(work / f"base-{preset}", preset, corpus_texts(config, n_texts), seed)


def count_parameters(folder: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())


def sft_in_process(base: Path, labeled_path: Path, out: Path, steps: int, batch: int, lr: float,
                   seed: int = 0) -> dict[str, Any]:
    """Briefly SFT `base` on the labeled split with TRL's SFTTrainer, in this process (no Ray, no DeepSpeed),
    with the project's prompt format and completion-only loss; save an HF folder at `out`.

    Only used to get a model that writes `<<expr=` annotations for decoding benchmarks, not as a measurement.
    """
    import torch

    from trainers.training.config import SFTStageConfig
    from trainers.training.ray_train import build_trainer

    torch.set_num_threads(1)
    # the production trainer in one process: no Ray callbacks, no DeepSpeed, no intermediate checkpoints
    config = SFTStageConfig(model_path=str(base), data_path=str(labeled_path), output_dir=str(out),
                            max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch, seed=seed,
                            zero_stage=0, save_steps=10**9, logging_steps=max(1, steps // 5),
                            train_sampling_strategy="random")
    trainer = build_trainer("sft", config, ray_train=False)
    with Stopwatch() as sw:
        trainer.train()
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(out)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": steps, "batch": batch, "learning_rate": lr, "seconds": round(sw.seconds, 2),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}
