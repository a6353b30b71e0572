"""The verifier in the loop (cluster/verifier_stages.py). On a real local Ray cluster, one tiny warm-up-only run
(`iterations: 0`, sft-0-gen recorded from the session's trained warm-up) does multi-task sequential fine-tuning
(evaluator under Ray Train, then generation SFT) and promotes by re-ranked dev accuracy. Without Ray: the
training plan of every mode (the control spends the same steps as multitask), the gate on a chosen metric, and
the bad inputs that must skip a verifier or stop a config, not crash a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cluster.config import parse_config
from cluster.rundir import RunDir, read_jsonl, write_jsonl
from cluster.stages import promote
from cluster.verifier_stages import (TrainingStep, _training_samples, held_out_questions, train_evaluator,
                                     training_plan, verifier_data)
from tests.conftest import tiny_run_config
from trainers.core.errors import ConfigError

SFT_STEPS, EVALUATOR_STEPS = 3, 4  # unequal, so each version's step count shows which settings trained it


def _loop_config(root: Path, port: int, warm_up: dict) -> dict:
    raw = tiny_run_config(root, "tiny-multitask", port, warm_up)
    raw["iterations"] = 0
    raw["training"].update(num_workers=1, zero_stage=0)
    raw["training"]["sft"]["max_steps"] = SFT_STEPS
    raw["data"]["dev_limit"] = 12
    raw["evaluation"] = {"max_new_tokens": 64, "evaluate_test": False, "gate": "rerank", "rerank_n": 4}
    raw["verifier"] = {"enabled": True, "mode": "multitask", "warmup_questions": 32, "warmup_samples": 4,
                       "training": {"max_steps": EVALUATOR_STEPS, "per_device_train_batch_size": 8,
                                    "learning_rate": 2e-3, "save_steps": 1000, "logging_steps": 2}}
    return raw


@pytest.fixture(scope="module")
def multitask_run(ray_cluster, serve_port, tiny_warm_up, tmp_path_factory) -> dict:
    """Multi-task sequential fine-tuning on the warm-up, promoted by re-ranked dev accuracy: the run's config
    and its manifest."""
    import ray

    from cluster.job import start_coordinator

    config = parse_config(_loop_config(tmp_path_factory.mktemp("multitask"), serve_port, tiny_warm_up))
    coordinator = start_coordinator(config, detached=False)
    try:
        ray.get(coordinator.run.remote(), timeout=600)
    finally:
        ray.kill(coordinator, no_restart=True)
    return {"config": config, "manifest": json.loads((config.run_dir / "manifest.json").read_text())}


def _order(manifest: dict, names: list[str]) -> list[str]:
    stages = manifest["stages"]
    assert all(stages[n]["status"] == "done" for n in names), {n: stages.get(n) for n in names}
    return sorted(names, key=lambda n: stages[n]["started"])


def test_multitask_run_trains_the_planned_generation_evaluator_generation_steps_and_records_the_verifier(
        multitask_run):
    config, m = multitask_run["config"], multitask_run["manifest"]
    steps = ["sft-0-gen", "sft-0-verifier-samples", "sft-0-verifier-data", "sft-0-verifier", "sft-0",
             "eval-sft-0", "eval-sft-0-rerank", "promote-sft-0"]
    assert _order(m, steps) == steps and m["status"] == "done"
    # every planned job ran from the planned model with its planned settings (their step counts differ)
    done = [(v, m["versions"][v]["from"], m["versions"][v]["global_step"]) for v in ("sft-0-verifier", "sft-0")]
    assert done == [(s.version, s.start, config.stage_config(s.kind).max_steps)
                    for s in training_plan(config, "sft-0")[1:]] == [("sft-0-verifier", "sft-0-gen", EVALUATOR_STEPS),
                                                                     ("sft-0", "sft-0-verifier", SFT_STEPS)]
    data = m["stages"]["sft-0-verifier-data"]["outputs"]
    examples = read_jsonl(Path(data["path"]))
    assert data["examples"] == len(examples) > 0 and data["holdout_questions"] >= 1
    assert sum(e["correct"] for e in examples) * 2 == len(examples)  # balanced right/wrong
    assert not {e["question_id"] for e in examples} & {s["question_id"] for s in read_jsonl(Path(data["holdout_path"]))}

    verifier, final = m["versions"]["sft-0-verifier"], m["versions"]["sft-0"]
    assert verifier["kind"] == "verifier" and verifier["data_path"] == data["path"]
    assert 0.0 <= verifier["holdout_auc"] <= 1.0 and verifier["holdout_scored"] == data["holdout_samples"]
    assert (Path(verifier["path"]) / "config.json").exists()
    assert final["kind"] == "sft" and final["fields"] == "training.sft"
    assert final["data_path"] == m["stages"]["sft-0-data"]["outputs"]["path"]  # generation data: L
    assert final["path"] == m["stages"]["sft-0"]["outputs"]["checkpoint"] != verifier["path"]
    print(f"multitask: {data['examples']} verifier examples from {data['questions_used']} questions; "
          f"held-out AUC {verifier['holdout_auc']:.3f} on {verifier['holdout_scored']} samples")


def test_rerank_gate_promotes_by_the_reranked_dev_accuracy(multitask_run):
    m = multitask_run["manifest"]
    rerank = m["stages"]["eval-sft-0-rerank"]["outputs"]
    items = read_jsonl(Path(rerank["path"]))
    assert len(items) == 12 and all(len(it["verifier_scores"]) == 4 for it in items)
    assert rerank["verifier"] == m["versions"]["sft-0-verifier"]["path"]
    recomputed = sum(it["reranked_correct"]["weighted_topk"] for it in items) / len(items)
    assert rerank["dev_rerank_accuracy"] == pytest.approx(recomputed)
    assert m["versions"]["sft-0"]["dev_rerank_accuracy"] == rerank["dev_rerank_accuracy"]
    decision = m["promotions"][-1]
    assert decision["metric"] == "dev_rerank_accuracy" and decision["live"] is None
    assert decision["dev_rerank_accuracy"] == rerank["dev_rerank_accuracy"]
    assert decision["promoted"] is True and m["live"]["solver"] == "sft-0"  # nothing was live before
    print(f"gate: dev re-ranked {rerank['dev_rerank_accuracy']:.3f}, maj {rerank['dev_maj_accuracy']:.3f}, "
          f"greedy {decision['dev_accuracy']:.3f}; dev AUC {rerank['dev_verifier_auc']}")


# ---------------------------------------------------------------------------------------------- no Ray

def _sample(qid: str, correct: bool, index: int) -> dict:
    return {"question_id": qid, "question": f"question {qid}?", "completion": f"text {qid} {index}",
            "correct": correct, "sample_index": index, "model_version": "run:sft-0"}


def test_samples_without_both_labels_skip_the_verifier_with_the_reason(tmp_path):
    config = parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": True}})
    run = RunDir(tmp_path / "run")
    path = write_jsonl(tmp_path / "samples.jsonl", [_sample("a", True, 0), _sample("b", False, 0)])
    data = verifier_data(config, run, [str(path)], "sft-1-verifier")
    assert data["skipped"] == "no question has both a correct and an incorrect sample (2 questions, 2 samples)"
    step = TrainingStep("sft-1-verifier", "verifier", "sft-1", "evaluator")
    assert train_evaluator(config, run, step, "unused", data) == {"skipped": data["skipped"]}


def test_a_start_folder_that_is_no_causal_lm_skips_the_verifier_and_fails_the_config(base_checkpoint, tmp_path):
    folder = tmp_path / "vision"  # a complete checkpoint folder whose config names an image model
    shutil.copytree(base_checkpoint, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    config = parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": True}})
    step = TrainingStep("sft-0-verifier", "verifier", "x", "evaluator")
    outputs = train_evaluator(config, RunDir(tmp_path / "run"), step, str(folder),
                              {"path": "unused", "holdout_path": "unused", "examples": 2})
    assert outputs["skipped"].endswith("is not a causal LM (model_type 'vit')") and "\n" not in outputs["skipped"]
    with pytest.raises(ConfigError, match="verifier: model: checkpoint .* is not a causal LM \\(model_type 'vit'\\)"):
        parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": True, "model": str(folder)}})
    with pytest.raises(ConfigError, match="evaluation.gate rerank needs a verifier"):
        parse_config({"data": {"synthetic": {}}, "evaluation": {"gate": "rerank"},
                      "verifier": {"enabled": True, "mode": "control"}})


def test_an_iterations_sample_files_are_its_verifier_data_and_some_questions_are_held_out(tmp_path):
    config = parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": True, "holdout": 0.25}})
    run = RunDir(tmp_path / "run")
    files = {}
    for name, correct in (("it2-dpo-samples", True), ("it2-sft-samples", False), ("it1-sft-samples", False)):
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl", [_sample(q, correct, i) for i, q in enumerate("abcd")])
        run.start(name)
        run.finish(name, {"path": str(files[name])})
    paths = _training_samples(config, run, "unused", "sft-2", "sft-2", {}, progress=None)  # type: ignore[arg-type]
    assert sorted(paths) == sorted(str(files[n]) for n in ("it2-dpo-samples", "it2-sft-samples"))
    data = verifier_data(config, run, paths, "sft-2-verifier")
    assert data["questions_used"] == 3 and data["holdout_questions"] == 1 and data["examples"] == 6
    assert held_out_questions(read_jsonl(files["it2-dpo-samples"]), 0.5) == set()  # only right samples


def _plan(mode: str, **verifier) -> list[tuple[str, str, str, str, int]]:
    """`training_plan` of sft-2 as (version, kind, start, data, max_steps the job trains with)."""
    config = parse_config({"data": {"synthetic": {}}, "training": {"sft": {"max_steps": 5}},
                           "verifier": {"enabled": True, "mode": mode, "training": {"max_steps": 7}, **verifier}})
    return [(s.version, s.kind, s.start, s.data, config.stage_config(s.kind).max_steps)
            for s in training_plan(config, "sft-2")]


def test_control_plans_the_same_training_steps_as_multitask_with_generation_data_only():
    multitask, control = _plan("multitask"), _plan("control")
    assert multitask == [("sft-2-gen", "sft", "base", "generation", 5),
                         ("sft-2-verifier", "verifier", "sft-2-gen", "evaluator", 7),
                         ("sft-2", "sft", "sft-2-verifier", "generation", 5)]
    assert control == [("sft-2-gen", "sft", "base", "generation", 5),
                       ("sft-2-control", "verifier", "sft-2-gen", "generation", 7),
                       ("sft-2", "sft", "sft-2-control", "generation", 5)]
    assert [step[4] for step in control] == [step[4] for step in multitask]
    # separate: the policy is trained as without a verifier; the verifier starts where `init` or `model` says
    assert _plan("separate") == [("sft-2", "sft", "base", "generation", 5),
                                 ("sft-2-verifier", "verifier", "sft-2", "evaluator", 7)]
    assert _plan("separate", init="base")[1][2] == "base"
    without = parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": False, "mode": "multitask"}})
    assert training_plan(without, "sft-2") == [TrainingStep("sft-2", "sft", "base", "generation")]


def test_the_gate_compares_the_chosen_metric_and_falls_back_to_greedy_where_a_model_has_none(tmp_path):
    config = parse_config({"data": {"synthetic": {}}, "storage": {"root": str(tmp_path)}})
    run = RunDir(config.run_dir)
    scores = {"sft-0": {"dev_accuracy": 0.2, "dev_rerank_accuracy": 0.6}, "sft-1": {"dev_accuracy": 0.9,
              "dev_rerank_accuracy": 0.5}, "sft-2": {"dev_accuracy": 0.1}}
    for version, values in scores.items():
        run.record_scores(version, str(tmp_path / version), values)
    run.record_promotion({"version": "sft-0", "promoted": True}, live="sft-0")

    # sft-1 is far better greedy, but re-ranked it is worse than the live sft-0: not promoted
    outcome = promote(config, run, "sft-1", str(tmp_path / "sft-1"), 0.9, metric="dev_rerank_accuracy")
    decision = run.manifest["promotions"][-1]
    assert outcome["promoted"] is False and run.live() == "sft-0"
    assert {k: decision[k] for k in ("metric", "dev_rerank_accuracy", "live_dev_rerank_accuracy")} == {
        "metric": "dev_rerank_accuracy", "dev_rerank_accuracy": 0.5, "live_dev_rerank_accuracy": 0.6}
    # sft-2 has no re-ranked accuracy (its verifier was skipped): greedy decides, and 0.1 < 0.2
    assert promote(config, run, "sft-2", str(tmp_path / "sft-2"), 0.1, metric="dev_rerank_accuracy")["promoted"] is False
    decision = run.manifest["promotions"][-1]
    assert decision["metric"] == "dev_accuracy" and decision["live_dev_accuracy"] == 0.2
    assert "dev_rerank_accuracy" not in decision
