"""Shared fixtures. Integration tests start ONE real local Ray cluster per session (ray.init costs ~5 s and
~600 MiB) and reuse one trained tiny checkpoint, because CPU time is the scarcest thing CI has."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from services.config import apply_serve_env

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
apply_serve_env()  # the Serve settings users get, before any test starts a cluster
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "dpost" / "torch_extensions"))

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
FIXTURES = Path(__file__).parent / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from trainers.data.synthetic import SyntheticTaskConfig, build_synthetic_task

    out = tmp_path_factory.mktemp("synthetic")
    build_synthetic_task(SyntheticTaskConfig(seed=0, n_labeled=200, n_unlabeled=200, n_dev=40, n_test=40,
                                             n_ood=20, max_steps=2), out)
    return out


@pytest.fixture(scope="session")
def base_checkpoint(synthetic_dir, tmp_path_factory) -> Path:
    from trainers.data.synthetic import SyntheticTaskConfig, corpus_texts
    from trainers.models.scratch import build_tiny_model

    texts = corpus_texts(SyntheticTaskConfig(seed=0), 2000)
    return build_tiny_model(tmp_path_factory.mktemp("models") / "base", "tiny", texts, seed=0)


@pytest.fixture(scope="session")
def other_base_checkpoint(base_checkpoint, tmp_path_factory) -> Path:
    """Same tokenizer, different random weights: a second, distinguishable model for swap tests."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("models") / "base-seed1"
    shutil.copytree(base_checkpoint, out)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(base_checkpoint).config)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    from services.config import ServingConfig
    from services.pools import start_serve

    port = free_port()
    start_serve(ServingConfig(port=port))
    return port


@pytest.fixture(scope="session")
def sft_result(ray_cluster, base_checkpoint, synthetic_dir, tmp_path_factory):
    """A tiny model SFT-trained by the real path: Ray Train, 2 workers, DeepSpeed ZeRO-2, TRL SFTTrainer."""
    from trainers.training.config import SFTStageConfig
    from trainers.training.ray_train import train_sft

    out = tmp_path_factory.mktemp("sft")
    return train_sft(SFTStageConfig(
        model_path=str(base_checkpoint), data_path=str(synthetic_dir / "labeled.jsonl"),
        output_dir=str(out / "sft-0"), max_steps=120, save_steps=60, logging_steps=20,
        per_device_train_batch_size=8, learning_rate=3e-3, num_workers=2, run_name="test-sft"))
