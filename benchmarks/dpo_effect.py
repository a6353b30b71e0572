"""The DPO step's effect on sampling (the paper's Fig. 6) in finished DPO-ST runs: k rationales per dev question
at the run's sampling temperature from the SFT model the DPO step started from and from the DPO model it made;
pass@1, pass@k, and the distinct correct rationales (pseudo-labels) each would yield, paired per question.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dpo_effect.py --runs runs/demo-seeds/dpo-st-seed{0,1,2}
    .venv/bin/python benchmarks/dpo_effect.py --runs RUN --k 2 --dev-questions 20 --out /tmp/x.json  # a smoke run

It is what a run's `evaluation.dpo_effect_samples: k` records as stage `it<t>-dpo-effect`, measured after the
fact on runs that went without it (the demo's time budget has no room for it): the samples come from the one
evaluation path (`trainers.evaluation.evaluate_files`, the run's own dev file, calculator on) and are scored
by the matrix's aggregate (`cluster.aggregate.effect_of_samples`, `fig6_row`). Each (run, model) decodes in
its own process, two at a time (one per core); `<root>/<run>/<model>/eval.json` resumes an interrupted run.

`benchmarks/results/dpo_effect.json`: `runs`, `k`, `iteration`, `dev_questions`, `sft` / `dpo`:
{pass1, passk: {mean, ci_low, ci_high} in %, pseudo_labels: mean per run}, `gain`: {pass1, passk} (dpo - sft,
paired per question; 95% bootstrap over runs and questions).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import PhaseTimer, base_parser, finish, machine_info, print_table, setup_env  # noqa: E402

setup_env()

from cluster.aggregate import effect_of_samples, fig6_row  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402

MODELS = ("sft", "dpo")


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__)
    parser.add_argument("--runs", nargs="+", required=True, help="finished DPO-ST run folders (one per seed)")
    parser.add_argument("--iteration", type=int, default=1, help="whose DPO step: dpo-<t> against sft-<t-1>")
    parser.add_argument("--k", type=int, default=10, help="rationales per dev question and model (Fig. 6: 10)")
    parser.add_argument("--dev-questions", type=int, default=500)
    parser.add_argument("--root", default="runs/dpo-effect", help="where the samples go (kept: resumable)")
    parser.add_argument("--processes", type=int, default=2, help="decoding processes (one thread each)")
    return parser.parse_args(argv)


def plan(run_dir: Path, t: int) -> dict[str, Any]:
    """The run's dev file, sampling settings and the two checkpoints around its t-th DPO step."""
    manifest = RunDir(run_dir).manifest
    versions, sampling = manifest["versions"], manifest["config"]["sampling"]
    if f"dpo-{t}" not in versions:
        raise SystemExit(f"{run_dir}: no DPO step in iteration {t} (versions: {', '.join(versions)})")
    return {"run": str(run_dir), "seed": manifest["config"]["seed"], "dev": manifest["stages"]["data"]["outputs"]["dev_path"],
            "sampling": sampling, "checkpoints": {"sft": versions[f"sft-{t - 1}"]["path"],
                                                  "dpo": versions[f"dpo-{t}"]["path"]}}


def sample(job: dict[str, Any]) -> list[dict[str, Any]]:
    """k samples per dev question from one checkpoint, as sample records (question_id, sample_index, ...)."""
    import torch

    from trainers.evaluation import EvalConfig, evaluate_files, local_decoder

    torch.set_num_threads(1)
    s = job["sampling"]
    config = EvalConfig(data=[job["dev"]], greedy=False, n=job["k"], ks=[1, job["k"]], temperature=s["temperature"],
                        max_new_tokens=s["max_new_tokens"], calculator=True, seed=job["seed"],
                        limit=job["dev_questions"], model=job["checkpoint"])
    [result] = evaluate_files(config, local_decoder(job["checkpoint"]), job["out"], job["name"], progress=False)
    if not result["complete"]:
        raise SystemExit(f"{job['name']}: sampling did not finish")
    items = json.loads((Path(job["out"]) / "eval.json").read_text())["runs"][result["name"]]["items"]
    return [{"question_id": it["question_id"], "sample_index": i, **r}
            for it in items for i, r in enumerate(it["samples"])]


def run_means(effect: dict[str, Any]) -> dict[str, Any]:
    """One run's pass@1 and pass@k (%) over its questions, and its distinct correct rationales."""
    return {**{metric: round(100 * sum(effect[metric].values()) / len(effect[metric]), 2)
               for metric in ("pass1", "passk")}, "pseudo_labels": effect["pseudo_labels"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plans = [plan(Path(r), args.iteration) for r in args.runs]
    jobs = [{**p, "k": args.k, "dev_questions": args.dev_questions, "checkpoint": p["checkpoints"][model],
             "name": f"{Path(p['run']).name}:{model}", "out": str(Path(args.root) / Path(p["run"]).name / model)}
            for p in plans for model in MODELS]
    phases = PhaseTimer()
    with phases.phase("sample"), ProcessPoolExecutor(args.processes, mp_context=get_context("spawn")) as pool:
        records = list(pool.map(sample, jobs))
    effects = []
    for i, p in enumerate(plans):
        by_model = dict(zip(MODELS, records[2 * i:2 * i + 2]))
        effects.append(effect_of_samples(by_model, p["sampling"]["dedup"], p["sampling"]["dedup_threshold"]))
    row = fig6_row(effects, 2000, f"fig6/{args.iteration}")
    result = {"machine": machine_info(), "runs": args.runs, "iteration": args.iteration, "k": row["k"],
              "dev_questions": row["questions"], "sft": row["sft"], "dpo": row["dpo"], "gain": row["gain"],
              "per_run": [{"run": p["run"], **{m: run_means(e[m]) for m in MODELS}} for p, e in zip(plans, effects)]}
    k = row["k"]

    def ci(r: dict[str, float]) -> str:
        return f"{r['mean']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"

    print_table(f"the DPO step on dev ({row['questions']} questions x {len(plans)} runs, k={k}; %, 95% interval)",
                ("model", "pass@1", f"pass@{k}", "distinct correct / run"),
                [(f"SFT (sft-{args.iteration - 1})", ci(row["sft"]["pass1"]), ci(row["sft"]["passk"]),
                  round(row["sft"]["pseudo_labels"], 1)),
                 (f"DPO (dpo-{args.iteration})", ci(row["dpo"]["pass1"]), ci(row["dpo"]["passk"]),
                  round(row["dpo"]["pseudo_labels"], 1)),
                 ("DPO - SFT (paired)", ci(row["gain"]["pass1"]), ci(row["gain"]["passk"]), "")])
    return finish(result, {}, phases, "dpo_effect", args, "few questions and samples")


if __name__ == "__main__":
    main()
