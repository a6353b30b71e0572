"""Run state has one writer: the run's coordinator owns its manifest, `dpost rollback` goes through it while
it lives, and readers get copies. The integration test (`ray`) rolls the live solver back in the middle of a
run; the others need no cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import yaml

from cluster.cli import main
from cluster.config import parse_config
from cluster.rundir import RunDir
from cluster.stages import promote

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, port: int, **model: Any) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.update(name=name, mode="st", iterations=2, storage={"root": str(tmp_path / "runs")})
    raw["model"] = model or raw["model"]
    raw["data"].update(unlabeled_per_iteration=8, dev_limit=8)
    raw["sampling"]["sft_samples"] = 2
    raw["training"]["sft"].update(max_steps=4, logging_steps=2)
    raw["evaluation"]["evaluate_test"] = False
    raw["serving"]["port"] = port
    return raw


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def _done(manifest: dict[str, Any]) -> set[str]:
    return {name for name, s in manifest["stages"].items() if s.get("status") == "done"}


def _wait_for(path: Path, ready: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 900
              ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        manifest = _manifest(path)
        if manifest["stages"] and ready(manifest):
            return manifest
        time.sleep(0.3)
    raise TimeoutError(f"the coordinator never reached: {what}")


def _solved_by(port: int) -> str:
    """The model version that answered a question on the public solver."""
    r = httpx.post(f"http://127.0.0.1:{port}/v1/solve", json={"question": "Ava has 3 pens. How many?"},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


@pytest.mark.ray
def test_rollback_during_a_run_stays_in_force_and_gates_the_next_promotion(
        ray_cluster, serve_port, sft_result, base_checkpoint, tmp_path):
    import ray

    from cluster.job import start_coordinator

    # sft-0 is the untrained base (model.warmup: no training) and sft-1 is trained from the SFT checkpoint,
    # so sft-1 is promoted past sft-0 and a rollback to sft-0 is a real change of the live model
    config = parse_config(_config(tmp_path, "rollback-run", serve_port, path=str(sft_result.checkpoint),
                                  warmup=str(base_checkpoint)))
    path = config.run_dir / "manifest.json"
    coordinator = start_coordinator(config, detached=False)
    result_ref = coordinator.run.remote()
    try:
        before = _wait_for(path, lambda m: "it2-questions" in _done(m), "iteration 2")
        assert before["live"]["solver"] == "sft-1", before["promotions"]

        assert main(["rollback", "sft-0", "--run", str(config.run_dir)]) == 0  # through the live coordinator
        rolled_back = _done(_manifest(path))
        after = _wait_for(path, lambda m: _done(m) - rolled_back, "a stage after the rollback")
        assert after["live"]["solver"] == "sft-0"  # the coordinator's next save kept the rollback
        assert after["promotions"][-1]["rollback"] is True and after["promotions"][-1]["live"] == "sft-1"
        assert ray.get(coordinator.status.remote())["manifest"]["live"]["solver"] == "sft-0"
        assert _solved_by(serve_port) == f"{config.name}:sft-0"

        result = ray.get(result_ref, timeout=900)
    finally:
        ray.kill(coordinator, no_restart=True)
    final = _manifest(path)
    gate = next(p for p in final["promotions"] if p["version"] == "sft-2")
    assert gate["live"] == "sft-0" and gate["live_dev_accuracy"] == final["versions"]["sft-0"]["dev_accuracy"]
    assert result["live"]["solver"] == final["live"]["solver"]

    # the run's coordinator is gone: the CLI is now the only writer and rolls back itself
    assert main(["rollback", "sft-1", "--run", str(config.run_dir)]) == 0
    assert _manifest(path)["live"]["solver"] == "sft-1"
    assert _solved_by(serve_port) == f"{config.name}:sft-1"


def test_manifest_handed_out_does_not_change_when_the_run_goes_on(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start("data")
    run.finish("data", {"labeled_path": "x", "labeled_count": 3})
    seen = run.manifest  # what `Coordinator.status` returns
    kept = json.dumps(seen, sort_keys=True)
    run.start("base")
    run.finish("data", {"labeled_path": "y"})
    run.add_version("sft-0", tmp_path / "sft-0", {"kind": "sft"})
    run.record_scores("sft-0", str(tmp_path / "sft-0"), {"dev_accuracy": 0.5})
    run.record_promotion({"version": "sft-0", "promoted": True}, live="sft-0")
    run.update(status="done")
    assert json.dumps(seen, sort_keys=True) == kept
    seen["stages"]["data"]["outputs"]["labeled_path"] = "changed by a reader"
    assert run.outputs("data") == {"labeled_path": "y"}
    assert json.loads(run.manifest_path.read_text()) == run.manifest  # every change is saved


def test_promotion_after_a_rollback_is_gated_against_the_rolled_back_version(tmp_path):
    config = parse_config(_config(tmp_path, "gate", 8000))
    run = RunDir(config.run_dir)
    for version, dev in (("sft-0", 0.8), ("sft-1", 0.5)):
        run.add_version(version, tmp_path / version)
        run.record_scores(version, str(tmp_path / version), {"dev_accuracy": dev})
    run.record_promotion({"version": "sft-1", "promoted": True}, live="sft-1")
    run.record_promotion({"version": "sft-0", "promoted": True, "rollback": True}, live="sft-0")  # as rollback()

    # 0.6 beats sft-1, the last model the gate promoted, but not sft-0, which the solver serves now
    outcome = promote(config, run, "sft-2", str(tmp_path / "sft-2"), dev_accuracy=0.6)
    assert outcome["promoted"] is False and outcome["live"] == "sft-0"
    assert run.live() == "sft-0" and run.manifest["promotions"][-1]["live_dev_accuracy"] == 0.8
