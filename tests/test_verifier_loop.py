"""The verifier in the loop (cluster/verifier_stages.py) on a real local Ray cluster: tiny warm-up-only runs
(`iterations: 0`, sft-0 recorded from the session's trained warm-up) with the evaluator trained under Ray Train
after the SFT step, multi-task sequential fine-tuning against its control, and the re-ranked promotion gate;
plus the bad inputs that must skip a verifier or stop a config, not crash a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import parse_config
from cluster.rundir import RunDir, read_jsonl, write_jsonl
from cluster.verifier_stages import _training_samples, held_out_questions, train_evaluator, verifier_data
from tests.conftest import tiny_run_config
from trainers.core.errors import ConfigError

STEPS = 6  # evaluator (or control) steps, and generation SFT steps after them


def _loop_config(root: Path, name: str, port: int, warm_up: dict, verifier: dict, **evaluation) -> dict:
    raw = tiny_run_config(root, name, port, warm_up)
    raw["iterations"] = 0
    raw["training"].update(num_workers=1, zero_stage=0)
    raw["training"]["sft"]["max_steps"] = STEPS
    raw["data"]["dev_limit"] = 12
    raw["evaluation"] = {"max_new_tokens": 64, "evaluate_test": False, **evaluation}
    raw["verifier"] = {"enabled": True, "warmup_questions": 32, "warmup_samples": 4, **verifier,
                       "training": {"max_steps": STEPS, "per_device_train_batch_size": 8, "learning_rate": 2e-3,
                                    "save_steps": 1000, "logging_steps": 2}}
    return raw


def _run(raw: dict) -> dict:
    import ray

    from cluster.job import start_coordinator

    config = parse_config(raw)
    coordinator = start_coordinator(config, detached=False)
    try:
        ray.get(coordinator.run.remote(), timeout=600)
    finally:
        ray.kill(coordinator, no_restart=True)
    return json.loads((config.run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def multitask_run(ray_cluster, serve_port, tiny_warm_up, tmp_path_factory) -> dict:
    """Multi-task sequential fine-tuning on the warm-up, promoted by re-ranked dev accuracy."""
    root = tmp_path_factory.mktemp("multitask")
    return _run(_loop_config(root, "tiny-multitask", serve_port, tiny_warm_up, {"mode": "multitask"},
                             gate="rerank", rerank_n=4))


@pytest.fixture(scope="module")
def control_run(ray_cluster, serve_port, tiny_warm_up, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("control")
    return _run(_loop_config(root, "tiny-control", serve_port, tiny_warm_up, {"mode": "control"}))


def _order(manifest: dict, names: list[str]) -> list[str]:
    stages = manifest["stages"]
    assert all(stages[n]["status"] == "done" for n in names), {n: stages.get(n) for n in names}
    return sorted(names, key=lambda n: stages[n]["started"])


def test_multitask_run_trains_generation_then_evaluator_then_generation_and_records_the_verifier(multitask_run):
    m = multitask_run
    steps = ["sft-0-gen", "sft-0-verifier-samples", "sft-0-verifier-data", "sft-0-verifier", "sft-0",
             "eval-sft-0", "eval-sft-0-rerank", "promote-sft-0"]
    assert _order(m, steps) == steps and m["status"] == "done"
    data = m["stages"]["sft-0-verifier-data"]["outputs"]
    examples = read_jsonl(Path(data["path"]))
    assert data["examples"] == len(examples) > 0 and data["holdout_questions"] >= 1
    assert sum(e["correct"] for e in examples) * 2 == len(examples)  # balanced right/wrong
    assert not {e["question_id"] for e in examples} & {s["question_id"] for s in read_jsonl(Path(data["holdout_path"]))}

    verifier = m["versions"]["sft-0-verifier"]
    assert verifier["kind"] == "verifier" and verifier["from"] == "sft-0-gen" and verifier["global_step"] == STEPS
    assert verifier["data_path"] == data["path"]
    assert 0.0 <= verifier["holdout_auc"] <= 1.0 and verifier["holdout_scored"] == data["holdout_samples"]
    assert (Path(verifier["path"]) / "config.json").exists()
    final = m["stages"]["sft-0"]["outputs"]
    assert final["from"] == "sft-0-verifier" and final["global_step"] == STEPS
    assert m["versions"]["sft-0"]["path"] == final["checkpoint"] != verifier["path"]
    print(f"multitask: {data['examples']} verifier examples from {data['questions_used']} questions; "
          f"held-out AUC {verifier['holdout_auc']:.3f} on {verifier['holdout_scored']} samples")


def test_rerank_gate_records_the_reranked_dev_accuracy_in_the_promotion_decision(multitask_run):
    m = multitask_run
    rerank = m["stages"]["eval-sft-0-rerank"]["outputs"]
    items = read_jsonl(Path(rerank["path"]))
    assert len(items) == 12 and all(len(it["verifier_scores"]) == 4 for it in items)
    assert rerank["verifier"] == m["versions"]["sft-0-verifier"]["path"]
    recomputed = sum(it["reranked_correct"]["weighted_topk"] for it in items) / len(items)
    assert rerank["dev_rerank_accuracy"] == pytest.approx(recomputed)
    decision = m["promotions"][-1]
    assert decision["gate"] == "rerank" and decision["strategy"] == "weighted_topk" and decision["n"] == 4
    assert decision["dev_rerank_accuracy"] == rerank["dev_rerank_accuracy"]
    assert decision["promoted"] is True and m["live"]["solver"] == "sft-0"  # nothing was live before
    print(f"gate: dev re-ranked {rerank['dev_rerank_accuracy']:.3f}, maj {rerank['dev_maj_accuracy']:.3f}, "
          f"greedy {decision['dev_accuracy']:.3f}; dev AUC {rerank['dev_verifier_auc']}")


def test_control_spends_the_same_extra_steps_on_generation_sft_only(control_run, multitask_run):
    c = control_run
    steps = ["sft-0-gen", "sft-0-control", "sft-0", "eval-sft-0", "promote-sft-0"]
    assert _order(c, steps) == steps
    assert not [name for name in c["stages"] if "verifier" in name]
    extra = c["versions"]["sft-0-control"]
    assert extra["kind"] == "sft" and extra["from"] == "sft-0-gen"
    assert extra["global_step"] == multitask_run["versions"]["sft-0-verifier"]["global_step"]
    assert c["stages"]["sft-0"]["outputs"]["from"] == "sft-0-control"
    assert c["stages"]["sft-0"]["outputs"]["global_step"] == multitask_run["stages"]["sft-0"]["outputs"]["global_step"]
    assert extra["data_path"] == c["stages"]["sft-0-data"]["outputs"]["path"]  # generation data: L
    assert c["promotions"][-1].get("gate") is None  # the default greedy gate


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
    assert train_evaluator(config, run, "sft-1-verifier", "sft-1", "unused", data) == {"skipped": data["skipped"]}


def test_a_start_folder_that_is_no_causal_lm_skips_the_verifier_and_fails_the_config(tmp_path):
    folder = tmp_path / "vision"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    config = parse_config({"data": {"synthetic": {}}, "verifier": {"enabled": True}})
    outputs = train_evaluator(config, RunDir(tmp_path / "run"), "sft-0-verifier", "x", str(folder),
                              {"path": "unused", "holdout_path": "unused", "examples": 2})
    assert "is not a causal LM" in outputs["skipped"] and "\n" not in outputs["skipped"]
    with pytest.raises(ConfigError, match="verifier: model: .*'vit' model is not a causal LM"):
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
