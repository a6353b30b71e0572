"""Shared fixtures. Integration tests start ONE real local Ray cluster per session (ray.init costs ~5 s and
~600 MiB) and reuse one trained tiny checkpoint, because CPU time is the scarcest thing CI has."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from services.config import apply_serve_env
from trainers.jit import extensions_dir

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
apply_serve_env()  # the Serve settings users get, before any test starts a cluster
os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the session cluster (directly or through a fixture) is `ray`, so `make test-fast`
    (`-m "not ray"`) cannot pick it up because someone forgot the marker."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    # One tiny run serves the tests that watch it while it runs and those that need it finished: the watchers
    # go just before the first test that waits for its end.
    uses = [set(getattr(item, "fixturenames", ())) for item in items]
    watching = [item for item, names in zip(items, uses) if "tiny_run_in_progress" in names and "tiny_run" not in names]
    finished = [item for item, names in zip(items, uses) if "tiny_run" in names]
    if watching and finished:
        rest = [item for item in items if item not in watching]
        at = rest.index(finished[0])
        items[:] = rest[:at] + watching + rest[at:]


@pytest.fixture(autouse=True)
def _unmarked_tests_start_no_ray(request):
    """A test without the `ray` marker that starts Ray in this process fails: mark it (or its module) `ray`."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if not was_running and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.fail(f"{request.node.nodeid} started Ray but is not marked `ray`", pytrace=False)


@pytest.fixture(scope="session")
def gsm8k_test_file() -> Path:
    """The real GSM8K test set, from the shared data next to the checkout: missing, the test fails (CI must
    have it), never skips."""
    path = GSM8K_DIR / "test.jsonl"
    assert path.is_file(), f"{path} is missing: the real GSM8K test set is expected next to the checkout"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memorise(model, ids, lr: float, max_steps: int, stop_loss: float) -> None:
    """Train `model` on the one token sequence `ids` (Adam) until its loss is below `stop_loss`: a model that
    writes a known answer, so a test can see exactly where decoding departs from it."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(max_steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < stop_loss:
            break


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
    """The session's cluster, with its dashboard: the Jobs API that `dpost submit` talks to lives there."""
    import ray

    # a submitted job runs `python -m cluster.job` through the job agent's PATH: this venv's python
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=free_port(),
                       log_to_driver=True, configure_logging=False)
    yield context
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def jobs_address(ray_cluster) -> str:
    """The session cluster's Ray Jobs API (its dashboard), for `dpost submit --address`."""
    return f"http://{ray_cluster.dashboard_url}"


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


def tiny_run_config(root: Path, name: str, port: int, warm_up: dict | None = None) -> dict:
    """configs/tiny.yaml for one test run under `root`; with `warm_up`, the run starts from that trained
    warm-up model (`model.warmup`), so its sft-0 is recorded, not trained, and its only SFT (sft-1) is short:
    100 steps still prove training, resuming and promotion."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    raw["name"] = name
    raw["storage"] = {"root": str(root / "runs")}
    raw["serving"]["port"] = port
    if warm_up:
        raw["model"] = {"path": warm_up["base"], "warmup": warm_up["checkpoint"]}
        raw["training"]["sft"]["max_steps"] = 100
    return raw


@pytest.fixture(scope="session")
def tiny_warm_up(ray_cluster, base_checkpoint, tmp_path_factory) -> dict:
    """The tiny run's warm-up model, trained once for every run that starts from it: what sft-0 trains in a
    tiny run (its SFT settings, on its labeled split, from the session's base model) with the real path (Ray
    Train, DeepSpeed, TRL). Strong enough that its samples yield DPO pairs and its rationales carry calculator
    annotations (`<<expr=result>>`)."""
    from cluster.config import parse_config
    from trainers.data.synthetic import build_synthetic_task
    from trainers.training.ray_train import train_sft

    out = tmp_path_factory.mktemp("warm-up")
    config = parse_config(tiny_run_config(out, "tiny-warm-up", free_port()))
    task = build_synthetic_task(config.synthetic_config(), out / "task")
    result = train_sft(config.stage_config("sft", model_path=str(base_checkpoint), data_path=str(task["labeled"]),
                                           output_dir=str(out / "sft-0"), run_name="tiny-warm-up"))
    return {"base": str(base_checkpoint), "checkpoint": str(result.checkpoint)}


@pytest.fixture(scope="session")
def trained_synthesizer(ray_cluster, tiny_warm_up, synthetic_dir, tmp_path_factory):
    """A problem synthesizer trained once by the real SFT path (Ray Train, TRL) from the tiny warm-up model (it
    already writes rationales) on the labeled problems paired with seed excerpts: 120 steps teach it the taught
    shape (question, `Solution:`, `#### N`) for some prompts. Runs that need a synthesizer use it as is
    (`synthesis.train: false`)."""
    import json

    from trainers.data.problems import load_problems
    from trainers.synthesis.config import SynthesisConfig
    from trainers.synthesis.prompts import load_seed_texts, training_examples
    from trainers.training.config import SFTStageConfig
    from trainers.training.ray_train import train_sft

    out = tmp_path_factory.mktemp("synthesizer")
    labeled = load_problems(synthetic_dir / "labeled.jsonl").problems
    seeds = load_seed_texts([Path(__file__).parent / "fixtures" / "synthesis_seeds.txt"])
    data = out / "synthesizer.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in training_examples(labeled, seeds,
                                                                            SynthesisConfig().seed_chars)))
    return train_sft(SFTStageConfig(
        model_path=tiny_warm_up["checkpoint"], data_path=str(data), output_dir=str(out / "synth-1"),
        max_steps=120, logging_steps=40, save_steps=120, per_device_train_batch_size=8, learning_rate=0.01,
        num_workers=1,
        run_name="test-synthesizer"))


def shared_run_config(root: Path, name: str, port: int, warm_up: dict) -> dict:
    """The settings of the session's shared tiny run (`tiny_run`): the tiny DPO-ST run from the trained warm-up,
    with Fig. 6's dev sampling on (2 samples per dev question from the models before and after the DPO step). A
    run compared with it uses the same settings under another name."""
    raw = tiny_run_config(root, name, port, warm_up)
    raw["evaluation"]["dpo_effect_samples"] = 2
    return raw


@pytest.fixture(scope="session")
def tiny_run_in_progress(ray_cluster, serve_port, tiny_warm_up, tmp_path_factory):
    """The session's tiny run (`shared_run_config`), started and not waited for: (config, its coordinator, the
    `run` call's ref). A test that watches it running is ordered before the first test that uses `tiny_run`
    (pytest_collection_modifyitems)."""
    from cluster.config import parse_config
    from cluster.job import start_coordinator

    config = parse_config(shared_run_config(tmp_path_factory.mktemp("tiny-run"), "tiny-clean", serve_port,
                                            tiny_warm_up))
    coordinator = start_coordinator(config, detached=False)
    return config, coordinator, coordinator.run.remote()


@pytest.fixture(scope="session")
def tiny_run(tiny_run_in_progress):
    """The same run, finished and never interrupted: (config, its manifest). One run serves every test that
    reads a whole tiny DPO-ST run (the coordinator's reference for resumed runs, the web page's run view)."""
    import ray

    config, coordinator, result = tiny_run_in_progress
    ray.get(result, timeout=900)
    ray.kill(coordinator, no_restart=True)
    return config, json.loads((config.run_dir / "manifest.json").read_text())
