"""JiuZhang3.0 synthesis on the embedded task (issue 16): what the filters keep, how good the vote labels are,
and the loop with vs without synthesized problems, paired per seed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthesis.py --seeds 0 1 2 --test-questions 1000
    .venv/bin/python benchmarks/synthesis.py --quick      # the tiny config, 1 seed, 40 test questions: a smoke run

Per seed, three runs of `--base` (default configs/synthesis.yaml) through `dpost experiment`'s cells
(cluster/experiment.py): `sft-seed<k>` trains the shared warm-up, `dpo-st-seed<k>` runs the loop with
synthesis off and `dpo-st-synth-seed<k>` the same loop with it on (same warm-up, data and seeds, and as many
SFT steps as the loop without it took). Finished runs are reused, so an interrupted benchmark resumes.
`--without-from FOLDER` takes the warm-ups and the loops without synthesis from another experiment's finished
cells (the demo's at 400 unlabeled questions per iteration is this config with synthesis off) after checking
that they ran the same config. Cost on 2 otherwise idle cores: the loop with synthesis about 14 minutes per
seed (the 300-step synthesizer about 5 of them); the warm-up and the loop without it about 4 and 8 more.

`benchmarks/results/synthesis.json`:
  filters            stage -> written problems kept after it, summed over seeds and iterations (`fractions`:
                     over `generated`)
  label_accuracy     [{vote_share_low, vote_share_high, questions, accuracy}]: the vote label against the
                     synthesizer's own answer, for every voted problem (kept or not), all seeds
  with_synthesis / without_synthesis / gain   {mean, ci_low, ci_high}: greedy test accuracy of the last
                     sft-<T> (x100) and the paired difference, 95% bootstrap over seeds and questions
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import PhaseTimer, base_parser, finish, machine_info, print_table, setup_env  # noqa: E402

setup_env()

from cluster.aggregate import correctness, interval, paired_differences, run_wall_seconds  # noqa: E402
from cluster.config import parse_config, read_yaml_file  # noqa: E402
from cluster.experiment import (ExperimentConfig, cell_name, cell_raw, cell_status,  # noqa: E402
                                run_experiment, warm_outputs)
from cluster.rundir import RunDir, read_jsonl  # noqa: E402
from trainers.synthesis.labels import VoteLabel, label_accuracy  # noqa: E402


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__)
    parser.add_argument("--base", default="configs/synthesis.yaml", help="run config of every cell")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--dev-questions", type=int, default=500)
    parser.add_argument("--test-questions", type=int, default=1000)
    parser.add_argument("--root", default="runs", help="where the benchmark's run folders go")
    parser.add_argument("--name", default="synthesis-bench")
    parser.add_argument("--port", type=int, default=8040, help="the runs' Serve port (fixed: a resumed run's "
                                                                 "config must not change)")
    parser.add_argument("--without-from", default=None, metavar="FOLDER",
                        help="an experiment folder (e.g. runs/demo-seeds-pool400) whose finished sft-seed<k> and "
                             "dpo-st-seed<k> cells are the warm-up and the loop without synthesis, used as they are "
                             "when their config equals the one this benchmark would run (checked)")
    return parser.parse_args(argv)


def reused_cells(folder: Path, experiment: ExperimentConfig, off: dict[str, Any]) -> dict[tuple[str, int], Path]:
    """The sft and dpo-st cells of another experiment, after checking that they ran what ours would: the same
    config but for the run name, storage folder and Serve settings, and synthesis settings while it is off,
    none of which changes a result."""
    def manifest(run_dir: Path) -> dict[str, Any]:
        path = run_dir / "manifest.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        if stored.get("status") != "done":
            raise SystemExit(f"--without-from: {run_dir} is not a finished run")
        return stored

    ignored = {"name", "storage", "serving", "synthesis"}
    cells = {}
    for seed in experiment.seeds:
        sft, loop = folder / cell_name("sft", seed), folder / cell_name("dpo-st", seed)
        manifest(sft)
        wanted = parse_config(cell_raw(experiment, off, "dpo-st", seed, warm_outputs(sft)), check_files=False)
        stored = parse_config(manifest(loop)["config"], check_files=False).to_dict()
        changed = sorted(k for k, v in wanted.to_dict().items() if k not in ignored and stored.get(k) != v)
        if changed or stored["synthesis"]["enabled"] or wanted.synthesis.enabled:
            raise SystemExit(f"--without-from: {loop} ran another config (differs in "
                             f"{', '.join(changed) or 'synthesis'})")
        cells[("sft", seed)], cells[("dpo-st", seed)] = sft, loop
    return cells


def run_cells(args: Any, base: dict[str, Any]) -> list[tuple[int, Path, Path]]:
    """(seed, run without synthesis, run with it) for every seed, running what is not done yet."""
    import ray

    from cluster.job import drive

    off = copy.deepcopy(base)
    off["synthesis"] = {**(off.get("synthesis") or {}), "enabled": False}
    experiment = ExperimentConfig(name=args.name, base=off, methods=["sft", "dpo-st"], seeds=args.seeds,
                                  iterations=args.iterations, dev_questions=args.dev_questions,
                                  test_questions=args.test_questions, calculator_ablation=False,
                                  dpo_effect_samples=0, root=args.root)

    def run_cell(config: Any) -> None:
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, namespace="dpost", log_to_driver=False)
        drive(config, detached=False, show_progress=False)

    if args.without_from:
        cells = reused_cells(Path(args.without_from), experiment, off)
    else:
        cells = {(c.method, c.seed): c.run_dir for c in run_experiment(experiment, off, run_cell)}
    triples = []
    for seed in args.seeds:
        raw = cell_raw(experiment, off, "dpo-st", seed, warm_outputs(cells[("sft", seed)]))
        raw["name"] = f"dpo-st-synth-seed{seed}"
        raw["synthesis"] = {**(base.get("synthesis") or {}), "enabled": True}
        # the same budget of SFT steps as the loop without synthesis: an SFT step that trains by epochs would
        # otherwise take more steps on the larger L + S, and the comparison would mix data with compute
        raw["training"]["sft"] = {**raw["training"]["sft"], "max_steps": sft_steps(cells[("dpo-st", seed)])}
        config = parse_config(raw, where=raw["name"])
        if cell_status(config) != "done":
            run_cell(config)
        triples.append((seed, cells[("dpo-st", seed)], config.run_dir))
    return triples


def sft_steps(run_dir: Path) -> int:
    """The mean number of steps of a finished loop's SFT steps (sft-1 ... sft-T)."""
    versions = RunDir(run_dir).manifest["versions"]
    steps = [v["global_step"] for name, v in versions.items() if name.startswith("sft-") and name != "sft-0"]
    return round(sum(steps) / len(steps))


def synthesis_numbers(run_dirs: list[Path]) -> dict[str, Any]:
    """Filter counts and vote labels of every `it<t>-synthesized` / `it<t>-votes` stage of the runs."""
    filters: dict[str, int] = {}
    labels: list[VoteLabel] = []
    labelled = voted = 0
    for run_dir in run_dirs:
        stages = RunDir(run_dir).manifest["stages"]
        for name, entry in stages.items():
            outputs = entry.get("outputs", {})
            if name.endswith("-synthesized"):
                for stage, count in outputs["filters"].items():
                    filters[stage] = filters.get(stage, 0) + count
            if name.endswith("-votes"):
                votes = [r for r in read_jsonl(Path(outputs["votes_path"])) if r["source"] == "synthesized"]
                labels += [VoteLabel(**{k: v for k, v in r.items() if k != "source"}) for r in votes]
                voted, labelled = voted + len(votes), labelled + sum(r["kept"] for r in votes)
    generated = filters.get("generated", 0)
    return {"filters": filters,
            "fractions": {k: round(v / generated, 4) if generated else None for k, v in filters.items()},
            "voted": voted, "labelled": labelled, "label_accuracy": label_accuracy(labels)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.quick:
        args.base, args.seeds, args.dev_questions, args.test_questions = "configs/tiny.yaml", [args.seed], 20, 40
        args.name += "-quick"
    base = read_yaml_file(args.base)
    if args.quick:
        base["synthesis"] = {"problems_per_iteration": 16, "train_steps": 60, "max_new_tokens": 96,
                             "samples_per_question": 4}
    base["serving"] = {**(base.get("serving") or {}), "port": args.port}
    phases = PhaseTimer()
    with phases.phase("runs"):
        triples = run_cells(args, base)
    version = f"sft-{args.iterations}"
    off = [correctness(without, version) for _, without, _ in triples]
    on = [correctness(with_, version) for _, _, with_ in triples]
    numbers = synthesis_numbers([with_ for _, _, with_ in triples])
    result = {
        "machine": machine_info(), "base": args.base, "seeds": args.seeds, "iterations": args.iterations,
        "test_questions": len(off[0]), **numbers,
        "without_synthesis": interval([list(map(float, c.values())) for c in off], 2000, "without"),
        "with_synthesis": interval([list(map(float, c.values())) for c in on], 2000, "with"),
        "gain": interval([paired_differences(a, b) for a, b in zip(on, off)], 2000, "gain"),
        "runs": [{"seed": s, "without": str(a), "with": str(b), "sft_steps": [sft_steps(a), sft_steps(b)],
                  "wall_seconds": [round(run_wall_seconds(r), 1) for r in (a, b)]} for s, a, b in triples],
    }
    print_table("filters (written problems kept after each)", ("filter", "kept", "fraction"),
                [(k, v, numbers["fractions"][k]) for k, v in numbers["filters"].items()])
    print_table("vote label accuracy against the synthesizer's answer", ("vote share", "questions", "accuracy"),
                [(f"[{b['vote_share_low']}, {b['vote_share_high']})", b["questions"], b["accuracy"])
                 for b in numbers["label_accuracy"]])
    print_table(f"greedy test accuracy of {version} (%, 95% interval)", ("loop", "mean", "ci"),
                [(name, result[name]["mean"], f"[{result[name]['ci_low']}, {result[name]['ci_high']}]")
                 for name in ("without_synthesis", "with_synthesis", "gain")])
    return finish(result, {}, phases, "synthesis", args, "tiny config, 1 seed, 40 test questions")


if __name__ == "__main__":
    main()
