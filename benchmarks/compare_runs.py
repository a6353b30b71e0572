"""The paper's comparison (Table 3 / Fig. 5 style) from finished run directories: SFT vs ST vs DPO-ST.

One seed per run and no intervals: `dpost experiment` (cluster/experiment.py) is the seeded, paired comparison;
this table is for runs made outside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_runs.py runs/compare-st runs/compare-dpo-st

For every run it reads `manifest.json` (dev/test accuracy per SFT model, pseudo-labels and DPO pairs per
iteration, stage timings, wall time) and adds the calculator ablation: each SFT model's greedy test accuracy
without the calculator, decoded in-process by `dpost eval` (results kept in `<run>/eval-no-calculator/`, so a
second call re-uses them). The warm-up model `sft-0` is the SFT baseline; with the same seed it is the same model
in every run, which the table checks (its weights' digest). Prints Markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.cli import main as dpost  # noqa: E402
from trainers.evaluation import load_results  # noqa: E402


def no_calculator_accuracy(run_dir: Path, version: str, checkpoint: str, test_path: str, max_new_tokens: int
                           ) -> float:
    out = run_dir / "eval-no-calculator" / version
    if not (out / "eval.json").exists():
        code = dpost(["eval", "--checkpoint", checkpoint, "--data", test_path, "--no-calculator",
                      "--max-new-tokens", str(max_new_tokens), "--out", str(out)])
        if code != 0:
            raise SystemExit(f"dpost eval failed for {checkpoint}")
    return float(load_results(out)[0]["metrics"]["greedy_strict"])


def weights_digest(checkpoint: str) -> str:
    return hashlib.sha256(Path(checkpoint, "model.safetensors").read_bytes()).hexdigest()[:12]


def summarize(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("status") != "done":
        raise SystemExit(f"{run_dir}: the run is not finished (status {manifest.get('status')!r})")
    config, stages = manifest["config"], manifest["stages"]
    test_path = stages["data"]["outputs"]["test_path"]
    max_new_tokens = config["evaluation"]["max_new_tokens"]
    models = []
    for t in range(config["iterations"] + 1):
        version = f"sft-{t}"
        checkpoint = stages[version]["outputs"]["checkpoint"]
        scores = stages[f"eval-{version}"]["outputs"]
        promotion = stages[f"promote-{version}"]["outputs"]
        models.append({
            "version": version, "dev": scores["dev_accuracy"], "test": scores["test_accuracy"],
            "test_no_calculator": no_calculator_accuracy(run_dir, version, checkpoint, test_path, max_new_tokens),
            "promoted": promotion["promoted"], "train_examples": stages.get(f"{version}-data", {}).get("outputs", {}).get("examples"),
            "pseudo_labels": stages.get(f"it{t}-pseudo-labels", {}).get("outputs", {}).get("pseudo_labels"),
            "dpo_pairs": stages.get(f"it{t}-pairs", {}).get("outputs", {}).get("pairs"),
            "weights": weights_digest(checkpoint),
        })
    stage_s: dict[str, float] = {}
    for name, entry in stages.items():
        kind = ("sampling" if "samples" in name else "evaluation" if name.startswith("eval-")
                else "dpo" if name.startswith("dpo-") else "sft" if name.startswith("sft-") and "-data" not in name
                else "other")
        stage_s[kind] = stage_s.get(kind, 0.0) + entry.get("seconds", 0.0)
    return {"run": manifest["name"], "mode": config["mode"], "seed": config["seed"],
            "iterations": config["iterations"], "wall_min": (manifest["finished"] - manifest["started"]) / 60,
            "stage_minutes": {k: round(v / 60, 1) for k, v in stage_s.items()}, "models": models,
            "live": manifest["live"].get("solver")}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def tables(runs: list[dict[str, Any]]) -> str:
    lines = ["| method | model | dev | test | test, no calculator | pseudo-labels | DPO pairs | SFT examples |",
             "|---|---|---|---|---|---|---|---|"]
    baseline = runs[0]["models"][0]
    lines.append(f"| SFT (warm-up) | sft-0 | {pct(baseline['dev'])} | {pct(baseline['test'])} | "
                 f"{pct(baseline['test_no_calculator'])} | - | - | {baseline['train_examples']} |")
    for run in runs:
        method = {"st": "ST", "dpo-st": "DPO-ST", "rft": "RFT"}.get(run["mode"], run["mode"])
        for m in run["models"][1:]:
            lines.append(f"| {method} | {m['version']} | {pct(m['dev'])} | {pct(m['test'])} | "
                         f"{pct(m['test_no_calculator'])} | {m['pseudo_labels']} | {m['dpo_pairs'] or '-'} | "
                         f"{m['train_examples']} |")
    lines += ["", "| run | mode | seed | iterations | wall min | minutes by stage | live model |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        by_stage = ", ".join(f"{k} {v}" for k, v in sorted(run["stage_minutes"].items()))
        lines.append(f"| {run['run']} | {run['mode']} | {run['seed']} | {run['iterations']} | "
                     f"{run['wall_min']:.1f} | {by_stage} | {run['live']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_runs.json"))
    args = p.parse_args(argv)
    runs = [summarize(r) for r in args.runs]
    warm_ups = {run["models"][0]["weights"] for run in runs}
    note = ("same warm-up model in every run" if len(warm_ups) == 1
            else f"WARNING: the runs' warm-up models differ ({sorted(warm_ups)}): the SFT row is the first run's")
    text = tables(runs) + f"\n{note}\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "note": note}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
