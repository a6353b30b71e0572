"""The experiment harness: the bootstrap and paired-difference math on cases with a known answer, experiment
config mistakes as one line with exit code 2, and one tiny matrix (2 methods x 2 seeds x 1 iteration) on the
session's Ray cluster: the warm-up is trained once per seed and shared, the results file has its keys, and
running the file again starts nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cluster.aggregate import bootstrap_mean, gain_lines, paired_differences
from cluster.cli import main
from cluster.experiment import Cell, load_experiment
from trainers.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ statistics

def test_interval_of_one_seed_matches_the_binomial_standard_error():
    values = [1.0] * 300 + [0.0] * 700  # 30% of 1,000 questions: standard error 1.45 points
    mean, low, high = bootstrap_mean([values], samples=4000, seed=1)
    assert mean == pytest.approx(30.0)
    assert 2.4 < (high - low) / 2 < 3.3  # 1.96 x 1.45 = 2.84
    assert low < 30 < high


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    per_seed = [rng.integers(0, 2, 500).tolist() for _ in range(3)]
    assert bootstrap_mean(per_seed, seed=3) == bootstrap_mean(per_seed, seed=3)
    assert bootstrap_mean(per_seed, seed=3) != bootstrap_mean(per_seed, seed=4)


def test_paired_gain_on_the_same_questions_excludes_zero_where_unpaired_intervals_overlap():
    # the method solves the baseline's 300 questions and 30 more: +3 points, seen only when paired
    baseline = {f"q{i}": i < 300 for i in range(1000)}
    method = {f"q{i}": i < 330 for i in range(1000)}
    _, low, high = bootstrap_mean([paired_differences(method, baseline)], seed=0)
    assert 1.5 < low and high < 4.5
    _, b_low, b_high = bootstrap_mean([list(map(float, baseline.values()))], seed=0)
    _, m_low, m_high = bootstrap_mean([list(map(float, method.values()))], seed=0)
    assert m_low < b_high  # the unpaired intervals overlap


def test_paired_noise_interval_contains_zero():
    rng = np.random.default_rng(0)
    per_seed = []
    for _ in range(3):
        a, b = rng.integers(0, 2, 1000).astype(bool), rng.integers(0, 2, 1000).astype(bool)
        per_seed.append(paired_differences({str(i): bool(x) for i, x in enumerate(a)},
                                           {str(i): bool(x) for i, x in enumerate(b)}))
    _, low, high = bootstrap_mean(per_seed, seed=0)
    assert low < 0 < high


def test_interval_over_seeds_counts_the_seeds_spread():
    # two seeds at 20% and 60%: questions alone would give +-3 points; the seeds' spread must widen it
    mean, low, high = bootstrap_mean([[1.0] * 200 + [0.0] * 800, [1.0] * 600 + [0.0] * 400], seed=0)
    assert mean == pytest.approx(40.0)
    assert low < 25 and high > 55


def test_paired_differences_refuse_different_questions():
    with pytest.raises(ValueError, match="different questions"):
        paired_differences({"a": True}, {"b": True})


def test_run_gain_lines_show_the_paired_interval(tmp_path):
    stages = {}
    for version, solved in (("sft-0", 200), ("sft-1", 300)):
        path = tmp_path / f"eval-{version}-test.jsonl"
        path.write_text("".join(json.dumps({"question_id": f"q{i}", "correct": i < solved}) + "\n"
                                for i in range(1000)))
        stages[f"eval-{version}"] = {"status": "done", "outputs": {"test_path": str(path)}}
    lines = gain_lines({"stages": stages, "versions": {"sft-0": {}, "sft-1": {}}})
    assert "1000 questions" in lines[0] and "20.0%" in lines[1] and "30.0%" in lines[2]
    assert "+10.0 pts" in lines[3] and "interval above 0" in lines[3]
    assert gain_lines({"stages": stages, "versions": {"sft-0": {}}}) == []


def _fake_cell(root: Path, mode: str, seed: int, solved: dict[int, int], samples: dict[int, tuple[int, int]]):
    """A finished cell's run directory: `solved[t]` of 200 test questions right for sft-t (the first ones), and
    for iteration t, (correct of 5 SFT-model samples, correct of 4 DPO-model samples) on each of 50 questions."""
    run_dir = root / f"{mode}-seed{seed}"
    run_dir.mkdir(parents=True)
    stages = {}
    for t, n in solved.items():
        outputs = {}
        for key, right in (("test", n), ("test_no_calculator", n // 2)):
            path = run_dir / f"eval-sft-{t}-{key}.jsonl"
            path.write_text("".join(json.dumps({"question_id": f"q{i:03d}", "correct": i < right}) + "\n"
                                    for i in range(200)))
            outputs[f"{key}_path"] = str(path)
        stages[f"eval-sft-{t}"] = {"status": "done", "outputs": outputs}
    for t, (before, after) in samples.items():
        for name, n, right in ((f"it{t}-dpo-samples", 5, before), (f"it{t}-sft-samples", 4, after)):
            path = run_dir / f"{name}.jsonl"
            path.write_text("".join(json.dumps({"question_id": f"u{q}", "sample_index": k, "correct": k < right,
                                                "completion": f"rationale {k} " + "x " * k * 5}) + "\n"
                                    for q in range(50) for k in range(n)))
            stages[name] = {"status": "done", "outputs": {"path": str(path)}}
    (run_dir / "manifest.json").write_text(json.dumps({
        "stages": stages, "started": 0, "finished": 60,
        "config": {"sampling": {"dedup": "jaccard", "dedup_threshold": 0.7}}}))
    return Cell(mode, seed, run_dir)


def test_a_moved_run_folder_is_read_from_where_it_is_now_not_where_it_was(tmp_path):
    from cluster.aggregate import correctness, sampling_effect

    cell = _fake_cell(tmp_path / "old", "dpo-st", 0, {1: 50}, {1: (1, 2)})
    manifest = json.loads((cell.run_dir / "manifest.json").read_text())
    manifest.update(name=cell.run_dir.name, config={**manifest["config"], "storage": {"root": str(tmp_path / "old")}})
    (cell.run_dir / "manifest.json").write_text(json.dumps(manifest))
    moved = tmp_path / "archive" / cell.run_dir.name
    moved.parent.mkdir()
    cell.run_dir.rename(moved)
    # a new run takes the old folder's name, with other results
    _fake_cell(tmp_path / "old", "dpo-st", 0, {1: 150}, {1: (4, 4)})
    assert sum(correctness(moved, "sft-1").values()) == 50
    assert sampling_effect(moved, 1)["sft"]["pass1"]["u0"] == 0.25  # 1 right of the first k=4 (the new run: 4)


def test_aggregate_of_a_known_matrix_gives_its_means_paired_differences_and_figures(tmp_path):
    from cluster.aggregate import write_outputs
    from cluster.experiment import ExperimentConfig

    cells = []
    for seed in (0, 1):
        cells.append(_fake_cell(tmp_path / "runs", "sft", seed, {0: 60}, {}))
        cells.append(_fake_cell(tmp_path / "runs", "st", seed, {0: 60, 1: 70, 2: 80}, {}))
        cells.append(_fake_cell(tmp_path / "runs", "dpo-st", seed, {0: 60, 1: 80, 2: 100},
                                {1: (1, 2), 2: (2, 3)}))
    experiment = ExperimentConfig(name="fake", base={}, iterations=2, seeds=[0, 1], bootstrap_samples=500,
                                  results_json=str(tmp_path / "experiments.json"),
                                  report_md=str(tmp_path / "docs" / "experiments.md"))
    demo = {"seeds": [0], "test_questions": 200, "sft0_mean": 30.0, "sft1_mean": 36.0, "gain_mean": 6.0,
            "gain_ci_low": 2.0, "gain_ci_high": 10.0, "wall_seconds": 500.0}
    (tmp_path / "experiments.json").write_text(json.dumps({"demo": demo}))
    doc = write_outputs(experiment, cells)
    means = {(r["method"], r["iteration"]): r["mean"] for r in doc["results"]}
    assert means == {("sft", 0): 30.0, ("sft", 1): 30.0, ("sft", 2): 30.0, ("st", 1): 35.0, ("st", 2): 40.0,
                     ("dpo-st", 1): 40.0, ("dpo-st", 2): 50.0}
    paired = {(p["method"], p["iteration"], p["baseline"]): p for p in doc["paired"]}
    assert paired[("dpo-st", 2, "st")]["mean"] == 10.0 and paired[("dpo-st", 2, "st")]["ci_low"] > 0
    assert paired[("st", 1, "sft")]["mean"] == 5.0 and ("st", 1, "st") not in paired
    assert {r["mean"] for r in doc["no_calculator"] if r["method"] == "sft"} == {15.0}
    (it1, it2) = doc["dpo_step_sampling"]
    assert it1["k"] == 4 and it1["questions"] == 50
    assert it1["sft"]["pass1"]["mean"] == 25.0 and it1["dpo"]["pass1"]["mean"] == 50.0
    assert it1["gain"]["passk"]["mean"] == 0.0 and it2["gain"]["pass1"]["mean"] == 25.0
    assert it1["sft"]["pseudo_labels"] == 50 and it1["dpo"]["pseudo_labels"] == 100
    assert doc["demo"] == demo  # the demo matrix's key survives the main matrix's aggregate
    report = (tmp_path / "docs" / "experiments.md").read_text()
    assert "| DPO-ST | ST | - | +5.0 [" in report and "| 30.0 | 36.0 | +6.0 | [+2.0, +10.0] |" in report
    for fig in ("fig5", "fig6", "fig7"):
        assert (tmp_path / "docs" / f"experiments_{fig}.png").stat().st_size > 1000


def test_dpo_effect_on_dev_is_preferred_to_the_in_sample_variant(tmp_path):
    from cluster.aggregate import fig6_lines, sampling_effect

    cell = _fake_cell(tmp_path, "dpo-st", 0, {0: 60}, {1: (1, 2)})
    manifest = json.loads((cell.run_dir / "manifest.json").read_text())
    outputs = {"k": 10}
    for model, right in (("sft", 3), ("dpo", 6)):  # of 10 samples per dev question
        path = cell.run_dir / f"it1-dev-samples-{model}.jsonl"
        path.write_text("".join(json.dumps({"question_id": f"d{q}", "sample_index": k, "correct": k < right,
                                            "completion": f"dev {k} " + "y " * k * 5}) + "\n"
                                for q in range(30) for k in range(10)))
        outputs[f"{model}_path"] = str(path)
    assert sampling_effect(cell.run_dir, 1)["on"] == "in-sample"
    manifest["stages"]["it1-dpo-effect"] = {"status": "done", "outputs": outputs}
    (cell.run_dir / "manifest.json").write_text(json.dumps(manifest))
    effect = sampling_effect(cell.run_dir, 1)
    assert effect["on"] == "dev" and effect["k"] == 10 and len(effect["sft"]["pass1"]) == 30
    assert effect["sft"]["pass1"]["d0"] == pytest.approx(0.3) and effect["dpo"]["passk"]["d0"] == 1.0
    row = {"iteration": 1, "k": 10, "on": "dev", "questions": 30,
           **{m: {"pass1": {"mean": 1.0, "ci_low": 0.0, "ci_high": 2.0},
                  "passk": {"mean": 1.0, "ci_low": 0.0, "ci_high": 2.0}, "pseudo_labels": 3} for m in ("sft", "dpo")},
           "gain": {m: {"mean": 0.0, "ci_low": -1.0, "ci_high": 1.0} for m in ("pass1", "passk")}}
    assert "on 30 dev questions, as the paper" in "\n".join(fig6_lines([row]))


def test_a_cell_run_before_a_setting_existed_still_resumes(tmp_path):
    """A manifest written before a config field was added holds no value for it; read with today's default it is
    the same config, so the cell resumes instead of being refused as changed."""
    from cluster.config import parse_config
    from cluster.experiment import cell_status

    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.update(name="old-cell", storage={"root": str(tmp_path)})
    config = parse_config(raw)
    stored = config.to_dict()
    del stored["evaluation"]["dpo_effect_samples"]
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "manifest.json").write_text(json.dumps({"config": stored, "status": "running"}))
    assert cell_status(config) == "running"
    stored["sampling"]["temperature"] = 0.3
    (config.run_dir / "manifest.json").write_text(json.dumps({"config": stored, "status": "running"}))
    with pytest.raises(ConfigError, match="differs in sampling"):
        cell_status(config)


# ------------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("raw, message", [
    ({"name": "x", "base": "../configs/tiny.yaml", "seed": [0]},
     "unknown key 'seed' (did you mean 'seeds'?)"),
    ({"name": "x", "base": {"data": {"synthetic": {}}, "sampling": {"temprature": 1}}},
     "base: sampling: unknown key 'temprature'"),
    ({"name": "x", "base": "../configs/tiny.yaml", "methods": ["sft", "dpo"]}, "methods.1: Input should be"),
    ({"name": "x", "base": "../configs/tiny.yaml", "demo": True, "methods": ["sft", "st", "dpo-st"]},
     "demo: needs iterations 1 and exactly one method besides sft"),
    ({"name": "x", "base": "missing.yaml"}, "config file not found"),
    ({"name": "x", "mode": "st", "data": {"synthetic": {}}},
     "is a run config, not an experiment file: run it with `dpost run"),
])
def test_experiment_config_mistake_is_one_line_and_exit_code_2(tmp_path, capsys, raw, message):
    folder = tmp_path / "matrix"
    folder.mkdir()
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["experiment", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "matrix").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_experiments_parse_with_big_enough_evaluation_sets(path):
    experiment, _ = load_experiment(path)
    assert experiment.test_questions >= 1000 and experiment.dev_questions >= 500


# ------------------------------------------------------------------------------------------------ a tiny matrix

def _tiny_experiment(tmp_path: Path, port: int) -> Path:
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    base["serving"]["port"] = port
    base["data"]["synthetic"].update(n_labeled=100, n_unlabeled=40)
    base["data"]["unlabeled_per_iteration"] = 20
    base["sampling"].update(sft_samples=2)
    # what is tested is the matrix, not training: the shortest real training (one worker, no DeepSpeed)
    base["training"].update(num_workers=1, zero_stage=0)
    base["training"]["sft"].update(max_steps=20, logging_steps=10)
    raw = {"name": "tiny-matrix", "base": base, "methods": ["sft", "st"], "seeds": [0, 1], "iterations": 1,
           "dev_questions": 20, "test_questions": 30, "calculator_ablation": True, "bootstrap_samples": 500,
           "root": str(tmp_path / "runs"), "results_json": str(tmp_path / "results" / "experiments.json"),
           "report_md": str(tmp_path / "docs" / "experiments.md")}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.mark.ray
def test_tiny_matrix_shares_each_seeds_warm_up_writes_results_and_resumes_as_a_no_op(
        ray_cluster, serve_port, tmp_path, capsys):
    path = _tiny_experiment(tmp_path, serve_port)
    assert main(["experiment", str(path)]) == 0
    runs = tmp_path / "runs" / "tiny-matrix"
    assert sorted(p.name for p in runs.iterdir()) == ["sft-seed0", "sft-seed1", "st-seed0", "st-seed1"]

    for seed in (0, 1):
        sft, st = _manifest(runs / f"sft-seed{seed}"), _manifest(runs / f"st-seed{seed}")
        assert sft["status"] == st["status"] == "done"
        assert sft["config"]["iterations"] == 0 and "it1-questions" not in sft["stages"]
        assert sft["versions"]["sft-0"]["global_step"] == 20  # trained here, once
        assert st["stages"]["sft-0"]["outputs"]["reused"] is True  # and only reused by the other method
        assert st["versions"]["sft-0"]["path"] == sft["versions"]["sft-0"]["path"]
        assert st["stages"]["base"]["outputs"]["checkpoint"] == sft["stages"]["base"]["outputs"]["checkpoint"]
        assert "sft-1" in st["versions"] and "sft-0-data" not in st["stages"]
        ids = [[json.loads(line)["question_id"] for line in open(m["stages"]["eval-sft-0"]["outputs"]["test_path"])]
               for m in (sft, st)]
        assert ids[0] == ids[1] and len(ids[0]) == 30  # the same questions: a paired comparison
        assert (st["stages"]["eval-sft-1"]["outputs"]["test_no_calculator_accuracy"] is not None)
    warm_ups = {_manifest(runs / f"sft-seed{s}")["versions"]["sft-0"]["path"] for s in (0, 1)}
    assert len(warm_ups) == 2  # one warm-up per seed

    results_path = tmp_path / "results" / "experiments.json"
    doc = json.loads(results_path.read_text())
    assert doc["seeds"] == [0, 1] and doc["test_questions"] == 30
    assert {(r["method"], r["iteration"]) for r in doc["results"]} == {("sft", 0), ("sft", 1), ("st", 1)}
    for r in doc["results"]:
        assert set(r) == {"method", "iteration", "mean", "ci_low", "ci_high"}
        assert 0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 100
    sft_rows = [r for r in doc["results"] if r["method"] == "sft"]
    assert sft_rows[0]["mean"] == sft_rows[1]["mean"]  # the SFT baseline is a flat line
    assert [(p["method"], p["baseline"]) for p in doc["paired"]] == [("st", "sft")]
    assert {(r["method"], r["iteration"]) for r in doc["no_calculator"]} == {("sft", 0), ("sft", 1), ("st", 1)}
    report = (tmp_path / "docs" / "experiments.md").read_text()
    assert "| ST | SFT |" in report and (tmp_path / "docs" / "experiments_fig5.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "experiments_fig7.png").stat().st_size > 1000

    # running the file again: every cell is done, nothing starts, the numbers come out the same
    stages_before = {cell.name: _manifest(cell)["stages"] for cell in runs.iterdir()}
    capsys.readouterr()
    assert main(["experiment", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(": done, skipped") == 4
    assert {cell.name: _manifest(cell)["stages"] for cell in runs.iterdir()} == stages_before
    assert json.loads(results_path.read_text()) == doc
    assert main(["status", str(runs / "st-seed1")]) == 0
    assert "it1-pseudo-labels" in capsys.readouterr().out


def test_a_runs_wall_time_leaves_out_the_time_no_coordinator_ran_it(tmp_path):
    from cluster.aggregate import run_wall_seconds

    def wall(**manifest):
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        return run_wall_seconds(tmp_path)

    assert wall(stages={}) == 0
    assert wall(started=100, finished=160, stages={}) == 60
    # stopped in its second stage, resumed the next day: stage b starts again (its record replaced), the
    # first day counts to a's end, the cut-short part of b is not counted
    stages = {"a": {"started": 100, "finished": 130}, "b": {"started": 90_000, "finished": 90_040}}
    assert wall(started=100, coordinator_starts=[100, 90_000], finished=90_050, stages=stages) == 30 + 50
    # still running after a restart: counts up to the last mark so far
    assert wall(started=100, coordinator_starts=[100, 90_000], stages=stages) == 30 + 40
