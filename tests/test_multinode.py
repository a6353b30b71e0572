"""Beyond one machine, simulated on one: nodes with their own custom resources (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.rundir import read_jsonl
from tests.conftest import free_port

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


def test_placement_by_node_type_and_sampler_node_loss_during_rollout(tmp_path, base_checkpoint, sft_result):
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    port = free_port()
    raw.update(name="multinode", storage={"root": str(tmp_path / "runs")})
    # the session's trained model is the warm-up (sft-0, no training), so DPO pairs exist; dpo-1 and sft-1
    # still train on the trainer node
    raw["model"] = {"path": str(base_checkpoint), "warmup": str(sft_result.checkpoint)}
    raw["training"].update(resources_per_worker={"CPU": 1, "trainer": 1})
    raw["training"]["sft"].update(max_steps=60)
    raw["serving"] = {"port": port, "rollout": {"num_replicas": 2, "resources": {"sampler": 0.5},
                                                "max_replicas_per_node": 1},
                      "solver": {"num_replicas": 1, "resources": {"sampler": 0.25}}}
    config_path = tmp_path / "multinode.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_scenario.py"), str(config_path),
                           str(port)], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads(lines[-1][len("RESULT "):])
    manifest = seen["manifest"]

    # placement: rollout replicas only on sampler nodes, one per node; training only on the trainer node;
    # the model registry on the head, wherever it was first asked for (lost with a sampler node, it would
    # leave a swap waiting for replicas that report to a dead registry)
    assert seen["registry_node"] == seen["head_node"]
    assert seen["removed"]["placements_before"] == sorted(seen["sampler_nodes"])  # Serve's running replicas
    for version in ("dpo-1", "sft-1"):
        assert manifest["versions"][version]["rank0_node_id"] == seen["trainer_node"]

    # the node went away while the coordinator sampled; the stage still produced every planned sample
    assert seen["removed"]["at_stage"] == "it1-dpo-samples"
    stage = manifest["stages"]["it1-dpo-samples"]
    samples = read_jsonl(Path(stage["outputs"]["path"]))
    assert stage["status"] == "done" and len(samples) == 40 * 5
    assert len({(s["question_id"], s["sample_index"]) for s in samples}) == len(samples)
    assert all(manifest["stages"][s]["status"] == "done" for s in ("dpo-1", "sft-1", "promote-sft-1"))
    live = manifest["live"]["solver"]
    assert live in ("sft-0", "sft-1")
    assert seen["http_status"] == 200 and seen["http_body"]["model_version"] == f"multinode:{live}"
