"""The coordinator on a real local Ray cluster: a tiny DPO-ST run end to end from the session's trained warm-up
model (`tiny_warm_up` in tests/conftest.py), killed mid-iteration and resumed, and the same loop submitted as a Ray
job through the cluster's Jobs API."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.aggregate import sampling_effect
from cluster.config import load_config, parse_config
from cluster.rundir import read_jsonl
from tests.conftest import shared_run_config, tiny_run_config

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


def _digest(path: str) -> tuple[str, float]:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), os.stat(path).st_mtime


def _stages(manifest_path: Path) -> dict:
    return json.loads(manifest_path.read_text())["stages"] if manifest_path.exists() else {}


def _wait_for(manifest_path: Path, ready, what: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stages = _stages(manifest_path)
        if ready(stages):
            return stages
        time.sleep(0.5)
    raise TimeoutError(f"the coordinator never reached: {what}")


@pytest.fixture(scope="module")
def killed_and_resumed_run(tiny_run, ray_cluster, serve_port, tiny_warm_up, tmp_path_factory):
    """The session's tiny run (`tiny_run`, the reference, never interrupted) again under another name, its
    coordinator killed twice, at different stages, letting Ray restart it each time: first right after the first
    sampling stage, then in the middle of sft-1's Ray Train run."""
    import ray
    from ray.util import placement_group_table

    from cluster.job import start_coordinator

    config = parse_config(shared_run_config(tmp_path_factory.mktemp("coord"), "tiny-kill", serve_port, tiny_warm_up))
    coordinator = start_coordinator(config, detached=False)
    result_ref = coordinator.run.remote()
    manifest_path = config.run_dir / "manifest.json"

    _wait_for(manifest_path, lambda s: s.get("it1-dpo-samples", {}).get("status") == "done", "it1-dpo-samples")
    before = _stages(manifest_path)
    finished = {name: s for name, s in before.items() if s.get("status") == "done"}
    files = {name: {k: _digest(v) for k, v in s["outputs"].items() if k.endswith("path") and Path(v).is_file()}
             for name, s in finished.items()}
    ray.kill(coordinator, no_restart=False)

    stages = _wait_for(manifest_path, lambda s: s.get("sft-1", {}).get("status") == "running", "sft-1 running")
    earlier_groups = set(placement_group_table())
    deadline = time.monotonic() + 300  # inside sft-1: Ray Train holds its workers' placement group
    while not any(g["state"] == "CREATED" for pg, g in placement_group_table().items() if pg not in earlier_groups):
        assert time.monotonic() < deadline, "sft-1 never reserved its workers"
        time.sleep(0.2)
    time.sleep(3)
    assert _stages(manifest_path)["sft-1"]["status"] == "running"
    training_kill = {"before": {n: s for n, s in _stages(manifest_path).items() if s.get("status") == "done"},
                     "sft-1-started": stages["sft-1"]["started"]}
    ray.kill(coordinator, no_restart=False)
    result = ray.get(result_ref, timeout=900)  # the twice-retried `run` on the twice-restarted actor
    after = json.loads(manifest_path.read_text())
    return config, finished, files, after, result, training_kill


def test_killed_coordinator_resumes_without_redoing_finished_stages(killed_and_resumed_run):
    config, finished, files, after, _, training_kill = killed_and_resumed_run
    # first kill, after a sampling stage: nothing finished was recomputed or rewritten
    assert "it1-dpo-samples" in finished and "sft-0" in finished
    for name, entry in finished.items():
        assert after["stages"][name]["started"] == entry["started"], f"{name} was run again"
        for key, (digest, mtime) in files[name].items():
            path = after["stages"][name]["outputs"][key]
            assert _digest(path) == (digest, mtime), f"{name}.{key} changed"
    samples = read_jsonl(Path(after["stages"]["it1-dpo-samples"]["outputs"]["path"]))
    assert len(samples) == 40 * 5  # every planned sample of the finished stage is kept, once
    assert len({(s["question_id"], s["sample_index"]) for s in samples}) == len(samples)
    # second kill, mid-training: the stages done before it were kept, the interrupted SFT ran again
    assert set(training_kill["before"]) >= {"data", "base", "sft-0", "it1-pairs", "dpo-1", "it1-pseudo-labels"}
    assert "sft-1" not in training_kill["before"]
    for name, entry in training_kill["before"].items():
        assert after["stages"][name]["started"] == entry["started"], f"{name} was run again"
    assert after["stages"]["sft-1"]["started"] > training_kill["sft-1-started"]
    assert len(after["coordinator_starts"]) == 3 and after["started"] == after["coordinator_starts"][0]


def _normalized_lines(path: str, run_name: str) -> list[str]:
    """A stage file's records with the run's name (in model versions) and the serving replica taken out."""
    lines = []
    for record in read_jsonl(Path(path)):
        record.pop("served_by", None)
        lines.append(json.dumps(record, sort_keys=True).replace(f"{run_name}:", "RUN:"))
    return lines


def _weights_digest(checkpoint: str) -> str:
    return hashlib.sha256(Path(checkpoint, "model.safetensors").read_bytes()).hexdigest()


def test_twice_killed_run_has_the_same_stage_outputs_as_a_clean_run(killed_and_resumed_run, tiny_run):
    clean_config, clean = tiny_run
    config, _, _, killed, _, _ = killed_and_resumed_run
    assert set(killed["stages"]) == set(clean["stages"])
    compared = 0
    for name, entry in clean["stages"].items():
        for key, path in entry["outputs"].items():
            other = killed["stages"][name]["outputs"][key]
            if key == "checkpoint":  # training is deterministic for a seed: same weights, byte for byte
                assert _weights_digest(other) == _weights_digest(path), f"{name} weights differ"
                compared += 1
            elif key.endswith("path") and str(path).endswith(".jsonl"):
                assert _normalized_lines(other, config.name) == _normalized_lines(path, clean_config.name), \
                    f"{name}.{key} differs from the clean run"
                compared += 1
            elif isinstance(path, (int, float)) and not key.endswith("seconds"):
                assert other == path, f"{name}.{key}: {other} != {path}"
    assert compared >= 15
    decisions = [[{k: v for k, v in p.items() if k != "at"} for p in m["promotions"]] for m in (clean, killed)]
    assert decisions[0] == decisions[1] and killed["live"] == clean["live"]


def test_tiny_run_completes_every_stage_writes_report_and_serves_promoted_model(killed_and_resumed_run,
                                                                                 serve_port):
    config, _, _, manifest, result, _ = killed_and_resumed_run
    expected = ["data", "base", "sft-0", "eval-sft-0", "promote-sft-0", "it1-questions", "it1-dpo-samples",
                "it1-pairs", "dpo-1", "it1-dpo-effect", "it1-sft-samples", "it1-pseudo-labels", "sft-1", "eval-sft-1",
                "promote-sft-1"]
    assert [s for s in expected if manifest["stages"].get(s, {}).get("status") != "done"] == []
    for version in ("sft-0", "dpo-1", "sft-1"):
        assert (Path(manifest["versions"][version]["path"]) / "config.json").exists()
    assert [p["version"] for p in manifest["promotions"]] == ["sft-0", "sft-1"]
    assert manifest["promotions"][0]["promoted"] is True
    live = manifest["live"]["solver"]
    assert live == ("sft-1" if manifest["promotions"][1]["promoted"] else "sft-0")
    assert manifest["status"] == "done"
    report = Path(result["report"])
    assert report.read_text().count("| sft-") >= 2 and (report.parent / "report.png").stat().st_size > 1000
    pairs = read_jsonl(Path(manifest["stages"]["it1-pairs"]["outputs"]["path"]))
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    effect = sampling_effect(config.run_dir, 1)  # Fig. 6 on dev: the SFT model's samples vs the DPO model's
    assert effect["on"] == "dev" and effect["k"] == 2
    assert len(effect["dpo"]["pass1"]) == config.synthetic_config().n_dev
    for model, version in (("sft", "sft-0"), ("dpo", "dpo-1")):
        records = read_jsonl(Path(manifest["stages"]["it1-dpo-effect"]["outputs"][f"{model}_path"]))
        assert {r["model_version"] for r in records} == {f"{config.name}:{version}"}
    r = httpx.post(f"http://127.0.0.1:{serve_port}/v1/solve", json={"question": "Ava has 3 pens. How many?"},
                   timeout=60)
    assert r.status_code == 200 and r.json()["model_version"] == f"{config.name}:{live}"


def test_bad_run_config_is_one_clear_error(tmp_path):
    from cluster.cli import main

    bad = tmp_path / "bad.yaml"
    for text, message in [("mode: dpo-xx\n", "mode"), ("model: {preset: huge}\n", "preset"),
                          ("training: {zero_stage: 7}\n", "zero_stage"), ("nope: 1\n", "unknown key"),
                          ("sampling: [1, 2\n", "not valid YAML")]:
        bad.write_text("data: {synthetic: {}}\n" + text)
        with pytest.raises(Exception, match=message):
            load_config(bad)
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "run", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not found" in proc.stderr
    assert main(["status", "--root", str(tmp_path)]) == 2


def test_submitted_job_runs_to_completion_and_status_shows_its_stages(jobs_address, serve_port, tiny_warm_up,
                                                                     tmp_path):
    """`dpost submit` through the session cluster's Jobs API: the job's driver joins that cluster, runs the
    loop on a detached coordinator and exits when the run is done."""
    import ray

    from cluster.job import coordinator_name
    from services.registry import NAMESPACE

    raw = tiny_run_config(tmp_path, "tiny-job", serve_port, tiny_warm_up)
    raw["mode"] = "st"  # the DPO step and accuracy are covered above; this checks the job plumbing, briefly
    raw["training"]["sft"]["max_steps"] = 30
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    dpost = [sys.executable, "-m", "cluster.cli"]
    try:
        proc = subprocess.run(dpost + ["submit", str(config_path), "--address", jobs_address, "--wait"],
                              capture_output=True, text=True, cwd=ROOT, timeout=900)
    finally:  # the job's coordinator is detached: it would outlive the test on the session cluster
        try:
            ray.kill(ray.get_actor(coordinator_name("tiny-job"), namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # never started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = subprocess.run(dpost + ["status", "tiny-job", "--root", str(tmp_path / "runs")],
                            capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    for stage in ("sft-0", "it1-sft-samples", "it1-pseudo-labels", "sft-1", "promote-sft-1"):
        assert f"{stage} " in status.stdout and "done" in status.stdout
    assert "[done]" in status.stdout
