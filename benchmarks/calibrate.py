"""Calibrate the embedded demo: warm-up SFT -> greedy test accuracy (with/without calculator) -> one
self-training round (sample K, keep correct, dedup, SFT from the base model on labeled + pseudo-labels)
-> greedy test accuracy.

Single process, no Ray, no DeepSpeed: TRL's `SFTTrainer` with the production arguments (completion-only loss,
cosine, 3% warm-up, AdamW wd 0.01, clip 1.0). Production trains on 2 data-parallel workers, so `--batch` here
is the GLOBAL batch (2 x the production per-device batch). Keep it to one thread per the machine's rules:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate.py --preset small --steps 300 --lr 2e-3 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers.core.dedup import dedup  # noqa: E402
from trainers.core.prompting import format_completion  # noqa: E402
from trainers.data.problems import Problem, load_problems  # noqa: E402
from trainers.data.synthetic import SyntheticTaskConfig, build_synthetic_task, corpus_texts  # noqa: E402
from trainers.engine.rows import DecodeParams, make_requests, to_records  # noqa: E402
from trainers.evaluation import EvalConfig, evaluate_problems, local_decoder  # noqa: E402
from trainers.models.checkpoints import load_policy  # noqa: E402
from trainers.models.scratch import PRESETS, build_tiny_model  # noqa: E402


class Timer:
    """Collects wall times of named pieces."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - start, 1)
        print(f"[calibrate] {name}: {self.times[name]:.1f} s", flush=True)
        return result


def sft(base: Path, pairs: Sequence[tuple[str, str]], out: Path, steps: int, lr: float, batch: int,
        seed: int = 0) -> dict[str, Any]:
    """Train `base` on (question, rationale) pairs with TRL's SFTTrainer; save to `out`; return loss info."""
    from trainers.training.config import SFTStageConfig
    from trainers.training.ray_train import build_trainer

    data = Path(tempfile.mkdtemp(prefix="calib-data-")) / "sft.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": r}) + "\n" for q, r in pairs))
    # the production trainer in one process: no Ray callbacks, no DeepSpeed, no intermediate checkpoints
    config = SFTStageConfig(model_path=str(base), data_path=str(data), output_dir=str(out), max_steps=steps,
                            learning_rate=lr, per_device_train_batch_size=batch, seed=seed, zero_stage=0,
                            save_steps=10**9, logging_steps=max(1, steps // 10),
                            train_sampling_strategy="random")
    trainer = build_trainer("sft", config, ray_train=False)
    trainer.train()
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(out)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    shutil.rmtree(data.parent, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "examples": len(pairs), "epochs": round(steps * batch / max(1, len(pairs)), 2)}


def sample_rationales(model_dir: Path, problems: Sequence[Problem], params: DecodeParams,
                      batch_size: int = 64) -> list[dict[str, Any]]:
    """Decode `params.n` rationales per problem and label them against the gold answers."""
    decoded = local_decoder(model_dir, batch_size)(make_requests(problems, params))
    return to_records(problems, params, decoded, model_version=model_dir.name)


def greedy_accuracy(model_dir: Path, problems: Sequence[Problem], max_new_tokens: int, calculator: bool,
                    batch_size: int = 64) -> tuple[float, list[dict[str, Any]]]:
    """Greedy accuracy in percent (strict `#### N`, as the coordinator's eval stage) and the per-item records,
    through the one evaluation path."""
    config = EvalConfig(max_new_tokens=max_new_tokens, calculator=calculator, batch_size=max(1, len(problems)))
    items, metrics = evaluate_problems(problems, local_decoder(model_dir, batch_size), config, model_dir.name)
    return 100.0 * metrics["greedy_strict"], items


def pseudo_labels(records: Sequence[dict[str, Any]], threshold: float = 0.7) -> list[tuple[str, str]]:
    """Correct samples, deduplicated per question by word-set Jaccard (the paper's rule)."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["correct"]:
            by_question.setdefault(r["question"], []).append(r)
    kept: list[tuple[str, str]] = []
    for question, rows in by_question.items():
        texts = [r["completion"] for r in rows]
        kept.extend((question, texts[i]) for i in dedup(texts, method="jaccard", threshold=threshold))
    return kept


def token_lengths(model_dir: Path, problems: Sequence[Problem]) -> dict[str, float]:
    """Token counts of the labeled completions (what max_new_tokens must cover)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = sorted(len(tokenizer.encode(format_completion(p.rationale or ""), add_special_tokens=False)) + 1
                     for p in problems)
    return {"mean": round(statistics.mean(lengths), 1), "p95": lengths[int(0.95 * (len(lengths) - 1))],
            "max": lengths[-1]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=300, help="SFT optimizer steps (warm-up and ST round alike)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=32, help="global batch = 2 x production per-device batch")
    p.add_argument("--n-unlabeled", type=int, default=500, help="unlabeled questions sampled in the ST round")
    p.add_argument("--k", type=int, default=4, help="samples per unlabeled question (T=0.7)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: 1.3 x the longest labeled rationale")
    p.add_argument("--n-test", type=int, default=300, help="test questions evaluated (0: the whole split)")
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-st", action="store_true", help="stop after the warm-up evaluation")
    p.add_argument("--task", default='{"max_steps": 3}', help="JSON overrides of SyntheticTaskConfig fields")
    p.add_argument("--shape", default="{}", help="JSON overrides of the preset's ModelPreset fields (probing only)")
    p.add_argument("--workdir", default="", help="where task/models go (default: a temp dir)")
    p.add_argument("--json", default="", help="write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="calib-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.task)
    known = {f.name for f in fields(SyntheticTaskConfig)}
    if set(overrides) - known:
        raise SystemExit(f"unknown task fields {sorted(set(overrides) - known)}")
    task = SyntheticTaskConfig(seed=args.seed, **{"n_unlabeled": max(args.n_unlabeled, 1), **overrides})
    shape = json.loads(args.shape)
    if shape:  # probe another shape under the preset's name; build_tiny_model reads PRESETS
        PRESETS[args.preset] = replace(PRESETS[args.preset], **shape)
    timer = Timer()

    paths = timer.run("build_task", build_synthetic_task, task, work / "task")
    base = timer.run("build_model", build_tiny_model, work / "base", args.preset, corpus_texts(task, 5000), args.seed)
    n_params = sum(p.numel() for p in load_policy(base)[0].parameters())
    labeled = list(load_problems(paths["labeled"]))
    unlabeled = list(load_problems(paths["unlabeled"]))[: args.n_unlabeled]
    test = list(load_problems(paths["test"]))
    test = test[: args.n_test] if args.n_test else test
    lengths = token_lengths(base, labeled)
    max_new = args.max_new_tokens or int(1.3 * lengths["max"]) + 1
    print(f"[calibrate] preset={args.preset} params={n_params:,} labeled={len(labeled)} tokens={lengths} "
          f"max_new_tokens={max_new}", flush=True)

    gold = [(p.question, p.rationale or "") for p in labeled]
    warm = work / "warmup"
    result: dict[str, Any] = {"args": vars(args), "task": asdict(task), "preset": asdict(PRESETS[args.preset]),
                              "params": n_params, "labeled_tokens": lengths, "max_new_tokens": max_new}
    result["warmup_sft"] = timer.run("warmup_sft", sft, base, gold, warm, args.steps, args.lr, args.batch, args.seed)
    result["warmup_acc_calc"], test_calc = timer.run("eval_test_calc", greedy_accuracy, warm, test, max_new, True,
                                                     args.decode_batch)
    result["warmup_acc_nocalc"], _ = timer.run("eval_test_nocalc", greedy_accuracy, warm, test, max_new, False,
                                               args.decode_batch)
    result["truncated_greedy"] = sum(item["finish_reason"] == "length" for item in test_calc)
    print(f"[calibrate] warm-up greedy test accuracy: {result['warmup_acc_calc']:.1f}% with calculator, "
          f"{result['warmup_acc_nocalc']:.1f}% without", flush=True)

    if not args.skip_st:
        params = DecodeParams(n=args.k, temperature=0.7, max_new_tokens=max_new, seed=args.seed)
        records = timer.run("sample_unlabeled", sample_rationales, warm, unlabeled, params, args.decode_batch)
        pseudo = pseudo_labels(records)
        solved = len({r["question_id"] for r in records if r["correct"]})
        result["st_sampling"] = {"questions": len(unlabeled), "k": args.k, "correct": sum(r["correct"] for r in records),
                                 "questions_solved": solved, "pseudo_after_dedup": len(pseudo),
                                 "truncated": sum(r["finish_reason"] == "length" for r in records)}
        print(f"[calibrate] ST sampling: {result['st_sampling']}", flush=True)
        st = work / "st1"
        result["st_sft"] = timer.run("st_sft", sft, base, gold + pseudo, st, args.steps, args.lr, args.batch, args.seed)
        result["st_acc_calc"], _ = timer.run("eval_st_calc", greedy_accuracy, st, test, max_new, True,
                                             args.decode_batch)
        result["st_gain"] = result["st_acc_calc"] - result["warmup_acc_calc"]
    result["times_s"] = timer.times

    print("\n| piece | value |\n|---|---|")
    for key in ("params", "max_new_tokens", "warmup_acc_calc", "warmup_acc_nocalc", "st_acc_calc", "st_gain"):
        if key in result:
            value = result[key]
            print(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if "st_sampling" in result:
        print(f"| st_sampling | {result['st_sampling']} |")
    for name, seconds in timer.times.items():
        print(f"| time {name} | {seconds:.1f} s |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
