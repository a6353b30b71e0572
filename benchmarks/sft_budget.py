"""The SFT step's budget against dev accuracy: how much of the SFT step can a run save?

For each finished run (a matrix cell), each iteration t and each budget, train the SFT step again from the
run's base model on the run's own L + S file for that iteration (`data/sft-<t>-train.jsonl`; t = 0 is the
warm-up on the labeled file L), under Ray Train with the run's own training config (`RunConfig.stage_config`,
from its manifest) but the budget's epochs and learning rate, and evaluate it greedy on the run's dev file
through the one evaluation path (`trainers.evaluation.evaluate_files`, calculator on). The run's own `sft-<t>`
is the reference: the difference is paired per dev question (95% bootstrap over questions,
`cluster.aggregate.interval`).

    .venv/bin/python benchmarks/sft_budget.py --runs runs/paper/st-seed0 runs/paper/st-seed1 --iterations 1 3 \
        --budgets 12 12@0.004
    .venv/bin/python benchmarks/sft_budget.py --runs RUN --quick   # a smoke run: 1 epoch, 20 dev questions

A budget is `EPOCHS` or `EPOCHS@LEARNING_RATE` (the run's own learning rate when left out). Each model and its
evaluation go to `<root>/<run>/sft-<t>-<budget>/`; a finished one is read back, so an interrupted run resumes.
`benchmarks/results/sft_budget.json`: `rows`, one per (run, iteration, budget): steps, train seconds, dev
accuracy, the reference's, and the paired difference {mean, ci_low, ci_high} in points.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import PhaseTimer, base_parser, finish, machine_info, print_table, setup_env  # noqa: E402

setup_env()

from cluster.aggregate import correctness, interval, paired_differences  # noqa: E402
from cluster.config import parse_config  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__)
    parser.add_argument("--runs", nargs="+", required=True, help="finished runs with SFT steps (st or dpo-st)")
    parser.add_argument("--iterations", nargs="+", type=int, default=[1],
                        help="whose SFT steps: sft-<t> (0: the warm-up)")
    parser.add_argument("--budgets", nargs="+", default=["16", "12"], help="EPOCHS or EPOCHS@LEARNING_RATE")
    parser.add_argument("--dev-questions", type=int, default=0, help="only the first N dev questions (0: all)")
    parser.add_argument("--root", default="runs/sft-budget", help="models and evaluations (kept: resumable)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.budgets, args.dev_questions = args.iterations[:1], ["1"], 20
        args.root = str(Path(args.root).with_name(Path(args.root).name + "-quick"))
    return args


def parse_budget(text: str) -> tuple[float, float | None]:
    epochs, _, lr = text.partition("@")
    try:
        return float(epochs), (float(lr) if lr else None)
    except ValueError:
        raise SystemExit(f"--budgets: '{text}' is not EPOCHS or EPOCHS@LEARNING_RATE") from None


def retrain(run_dir: Path, t: int, budget: str, root: Path, dev_questions: int) -> dict[str, Any]:
    """Train and evaluate one budget for the run's t-th SFT step (or read back a finished one)."""
    from trainers.evaluation import EvalConfig, evaluate_files, local_decoder
    from trainers.training.ray_train import train_sft

    folder = root / run_dir.name / f"sft-{t}-{budget}"
    record = folder / "result.json"
    if record.exists():
        return json.loads(record.read_text())
    manifest = RunDir(run_dir).manifest
    config = parse_config(manifest["config"], check_files=False)
    stages = manifest["stages"]
    epochs, lr = parse_budget(budget)
    overrides: dict[str, Any] = {"num_train_epochs": epochs, **({"learning_rate": lr} if lr else {})}
    data = stages["data"]["outputs"]["labeled_path"] if t == 0 else str(run_dir / f"data/sft-{t}-train.jsonl")
    stage_config = config.stage_config(
        "sft", model_path=stages["base"]["outputs"]["checkpoint"], data_path=data,
        output_dir=str(folder / "model"), run_name=f"sft-budget-{run_dir.name}-{t}", storage_path=str(root / "ray_train"),
        **overrides)
    start = time.perf_counter()
    trained = train_sft(stage_config)
    seconds = time.perf_counter() - start
    dev = stages["data"]["outputs"]["dev_path"]
    eval_config = EvalConfig(data=[dev], max_new_tokens=config.evaluation.max_new_tokens, calculator=True,
                             limit=dev_questions or None, model=str(trained.checkpoint))
    [result] = evaluate_files(eval_config, local_decoder(trained.checkpoint), folder / "eval", f"sft-{t}-{budget}")
    items = json.loads((folder / "eval" / "eval.json").read_text())["runs"][result["name"]]["items"]
    row = {"run": str(run_dir), "iteration": t, "budget": budget, "epochs": epochs,
           "learning_rate": lr or stage_config.learning_rate, "examples": len(Path(data).read_text().splitlines()),
           "steps": trained.metrics["global_step"], "train_seconds": round(seconds, 1),
           "correct": {it["question_id"]: bool(it["correct"]) for it in items}}
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(row))
    return row


def reference(run_dir: Path, t: int) -> dict[str, Any]:
    """The run's own sft-<t>: its budget, steps and training seconds, and per-question dev correctness. A
    warm-up reused from another run (a matrix's sft cell) is read from the run that trained it."""
    manifest = RunDir(run_dir).manifest
    sft = manifest["config"]["training"]["sft"]
    stage = manifest["stages"][f"sft-{t}"]
    if stage["outputs"].get("reused"):
        stage = RunDir(Path(stage["outputs"]["checkpoint"]).parents[1]).manifest["stages"][f"sft-{t}"]
    return {"budget": f"{sft['num_train_epochs']:g} (the run's)", "epochs": sft["num_train_epochs"],
            "learning_rate": sft["learning_rate"], "steps": stage["outputs"]["global_step"],
            "train_seconds": stage["seconds"], "correct": correctness(run_dir, f"sft-{t}", "dev")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import ray

    args = parse_args(argv)
    for budget in args.budgets:
        parse_budget(budget)
    runs = [Path(r).resolve() for r in args.runs]
    phases = PhaseTimer()
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with phases.phase("retrain and evaluate"):
        for run_dir in runs:
            for t in args.iterations:
                ref = reference(run_dir, t)
                for budget in args.budgets:
                    row = retrain(run_dir, t, budget, Path(args.root).resolve(), args.dev_questions)
                    mine = row.pop("correct")
                    base = {q: ref["correct"][q] for q in mine}
                    diff = interval([paired_differences(mine, base)], 2000, f"{run_dir.name}/{t}/{budget}")
                    rows.append({**row, "dev_questions": len(mine),
                                 "dev_accuracy": round(100 * sum(mine.values()) / len(mine), 1),
                                 "reference": {k: v for k, v in ref.items() if k != "correct"},
                                 "reference_dev_accuracy": round(100 * sum(base.values()) / len(base), 1),
                                 "difference": diff})
                    print(f"[sft-budget] {run_dir.name} sft-{t} {budget}: dev {rows[-1]['dev_accuracy']}% vs "
                          f"{rows[-1]['reference_dev_accuracy']}%, {row['steps']} steps, {row['train_seconds']} s",
                          flush=True)
    ray.shutdown()

    def signed(d: dict[str, float]) -> str:
        return f"{d['mean']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"

    print_table("the SFT step's budget on dev (greedy, calculator on; %, paired 95% interval over questions)",
                ("run", "step", "budget (epochs@lr)", "steps", "train s", "dev", "run's own",
                 "own steps / train s", "difference"),
                [(Path(r["run"]).name, f"sft-{r['iteration']}", f"{r['epochs']:g}@{r['learning_rate']:g}", r["steps"],
                  r["train_seconds"], r["dev_accuracy"], r["reference_dev_accuracy"],
                  f"{r['reference']['steps']} / {r['reference']['train_seconds']:.0f}", signed(r["difference"]))
                 for r in rows])
    result = {"machine": machine_info(), "runs": [str(r) for r in runs], "iterations": args.iterations,
              "budgets": args.budgets, "rows": rows}
    return finish(result, {}, phases, "sft_budget", args, "few dev questions")


if __name__ == "__main__":
    main()
