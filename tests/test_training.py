"""SFT and DPO on real Ray Train workers with DeepSpeed and TRL's trainers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from trainers.models.checkpoints import load_policy
from trainers.data.problems import load_problems
from trainers.engine.decoding import decode_all
from trainers.core.errors import ConfigError
from trainers.core.pairs import preference_pairs
from trainers.core.prompting import format_completion, format_prompt
from trainers.engine.rows import DecodeParams, make_requests, to_records
from trainers.training.config import DPOStageConfig, SFTStageConfig
from trainers.training.ray_train import train_dpo, train_sft

pytestmark = pytest.mark.ray


def _losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["log_history"] if "loss" in h]


def test_sft_on_two_workers_lowers_loss_and_checkpoint_loads_and_generates(sft_result):
    losses = _losses(sft_result.metrics)
    assert sft_result.metrics["num_workers"] == 2
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.8, losses
    model, tokenizer = load_policy(sft_result.checkpoint)
    ids = tokenizer("Question: Ava has 3 pens.\nAnswer:", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=5, do_sample=False).shape[1] > ids["input_ids"].shape[1]


def test_dpo_on_two_workers_raises_reward_margin_and_accuracy(sft_result, synthetic_dir, tmp_path):
    """Rejected = the SFT model's own wrong samples; chosen = correct ones, or the gold rationale where the
    tiny model found none (it is weak after a few steps)."""
    model, tokenizer = load_policy(sft_result.checkpoint)
    problems = load_problems(synthetic_dir / "labeled.jsonl").problems[:48]
    params = DecodeParams(n=3, temperature=0.7, max_new_tokens=96, seed=3)
    records = to_records(problems, params, decode_all(model, tokenizer, make_requests(problems, params)), "sft")
    gold = {p.id: p for p in problems}
    for p in problems:  # one gold rationale per question joins the pool as a correct sample
        records.append({"question_id": p.id, "prompt": format_prompt(p.question), "completion": p.rationale,
                        "correct": True})
    pairs, stats = preference_pairs(records, max_pairs_per_question=2)
    assert stats["pairs"] >= 40 and set(gold) >= {p["question_id"] for p in pairs}
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({**p, "chosen": format_completion(p["chosen"]),
                                        "rejected": format_completion(p["rejected"])}) + "\n" for p in pairs))
    result = train_dpo(DPOStageConfig(
        model_path=str(sft_result.checkpoint), data_path=str(data), output_dir=str(tmp_path / "dpo-1"),
        max_steps=30, logging_steps=5, save_steps=100, per_device_train_batch_size=8, learning_rate=5e-4,
        num_workers=2, run_name="test-dpo"))
    logs = [h for h in result.metrics["log_history"] if "rewards/margins" in h]
    assert len(logs) >= 3
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert logs[-1]["rewards/accuracies"] > 0.5
    load_policy(result.checkpoint)


def _registered_checkpoint(storage: Path) -> bool:
    """True once Ray Train has registered a checkpoint (its manager snapshot names a latest one)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (json.JSONDecodeError, OSError):
            pass  # being written
    return False


def _train_worker_pids() -> list[int]:
    """Ray Train workers of THIS test session's cluster (descendants of this process: ray.init's raylet is
    our child), never another cluster's on the same machine."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline() or [])]


def test_killed_worker_resumes_from_last_checkpoint_not_step_zero(ray_cluster, base_checkpoint, synthetic_dir,
                                                                  tmp_path):
    storage = tmp_path / "ray_train"
    config = SFTStageConfig(
        model_path=str(base_checkpoint), data_path=str(synthetic_dir / "labeled.jsonl"),
        output_dir=str(tmp_path / "sft"), max_steps=80, save_steps=20, logging_steps=20,
        per_device_train_batch_size=8, learning_rate=3e-3, num_workers=2, max_failures=2,
        storage_path=str(storage), run_name="test-kill")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=train_sft(config)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 400
    while not _registered_checkpoint(storage) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _registered_checkpoint(storage), "no checkpoint was registered"
    pids = _train_worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=600)
    result = box["result"]
    assert result.metrics["global_step"] == 80
    assert result.metrics["resumed_from_step"] in (20, 40, 60)


@pytest.mark.parametrize("change, message", [
    ({"data_path": "/nonexistent/data.jsonl"}, "data file not found"),
    ({"num_workers": 0}, "num_workers"),
    ({"zero_stage": 5}, "zero_stage"),
])
def test_bad_training_config_fails_before_any_worker_starts(ray_cluster, base_checkpoint, synthetic_dir,
                                                            tmp_path, change, message):
    config = SFTStageConfig(model_path=str(base_checkpoint), data_path=str(synthetic_dir / "labeled.jsonl"),
                            output_dir=str(tmp_path / "out"), storage_path=str(tmp_path / "storage"))
    for key, value in change.items():
        setattr(config, key, value)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        train_sft(config)
    assert time.monotonic() - start < 2 and not (tmp_path / "storage").exists()


def test_zero3_trains_and_saves_full_weights(ray_cluster, base_checkpoint, synthetic_dir, tmp_path):
    result = train_sft(SFTStageConfig(
        model_path=str(base_checkpoint), data_path=str(synthetic_dir / "labeled.jsonl"),
        output_dir=str(tmp_path / "z3"), max_steps=6, logging_steps=2, save_steps=100,
        per_device_train_batch_size=4, num_workers=2, zero_stage=3, run_name="test-z3"))
    assert (result.checkpoint / "model.safetensors").stat().st_size > 10_000
    load_policy(result.checkpoint)
