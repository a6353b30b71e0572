"""SFT, DPO and verifier training as Ray Train jobs: a `TorchTrainer` whose workers each run TRL's trainer
under DeepSpeed.

`train_sft(config)` / `train_dpo(config)` / `train_verifier(config)` validate the config, start `num_workers` Ray Train workers, and
return the final Hugging Face folder. Inside each worker the steps are the same for both stages:
load data -> load model -> build the TRL trainer (DeepSpeed ZeRO from the config) -> resume from the last
Ray Train checkpoint if the worker group was restarted -> train -> save the final model as a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from trainers.jit import extensions_dir
from trainers.training.config import (STAGES, DPOStageConfig, SFTStageConfig, TrainStageConfig,
                                      VerifierStageConfig)

FINAL_MARKER = "dpost_final.json"

# Called on the main worker as `progress(step, total, loss=...)` while training runs (the driver's bar).
StepProgress = Callable[..., None]


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict[str, Any]


def train_sft(config: SFTStageConfig, progress: StepProgress | None = None) -> TrainResult:
    return _fit("sft", config, progress)


def train_dpo(config: DPOStageConfig, progress: StepProgress | None = None) -> TrainResult:
    return _fit("dpo", config, progress)


def train_verifier(config: VerifierStageConfig, progress: StepProgress | None = None) -> TrainResult:
    """The verifier task: SFT on prompt/completion examples whose completion is the label."""
    return _fit("verifier", config, progress)


def _fit(kind: str, config: TrainStageConfig, progress: StepProgress | None) -> TrainResult:
    import ray.train

    from trainers.training.orphaned_groups import Trainer, remove_orphaned_training_groups

    config = config.checked()
    remove_orphaned_training_groups()
    workers = {"CPU": 1} if not config.use_gpu else {"CPU": 1, "GPU": 1}
    trainer = Trainer(
        train_loop_per_worker=_worker_loop,
        train_loop_config={"kind": kind, "config": config.model_dump(exclude_unset=True), "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=config.resources_per_worker or workers),
        run_config=ray.train.RunConfig(
            name=f"{config.run_name or kind}-{uuid.uuid4().hex[:8]}",
            storage_path=config.resolved_storage_path(),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's print patch sends each print() in a worker both to stdout and, through the root
            # logger, to stderr: every line TRL prints would be in the logs twice
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{kind} training finished without a final checkpoint")
    out = Path(config.output_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result.checkpoint.to_directory(str(tmp))
    if not (tmp / FINAL_MARKER).exists():
        raise RuntimeError(f"{kind} training's last checkpoint is not a final model: {result.checkpoint}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the folder appears complete or not at all
    metrics = json.loads((out / FINAL_MARKER).read_text())
    return TrainResult(checkpoint=out, metrics=metrics)


# ---------------------------------------------------------------------------------------------- in a worker

def _worker_loop(loop_config: dict[str, Any]) -> None:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    _ignore_library_deprecations()
    import torch

    kind = loop_config["kind"]
    config = STAGES[kind].model_validate(loop_config["config"])
    if not config.use_gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        if config.zero_stage == 3:
            import deepspeed  # ZeRO-3 builds the reference model under zero.Init, which needs the group now

            deepspeed.init_distributed(dist_backend="gloo")

    trainer = build_trainer(kind, config, progress=loop_config["progress"])
    try:
        resumed_from = _train_resuming(trainer)
        _save_final(trainer, config, resumed_from)
    finally:  # HF checkpoints live on in Ray Train's storage; the worker's scratch copy does not need to
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def build_trainer(kind: str, config: TrainStageConfig, ray_train: bool = True,
                  progress: StepProgress | None = None):
    """The TRL trainer a worker runs. `ray_train=False` gives the same trainer for one plain process (no Ray
    callbacks; set `zero_stage=0` for no DeepSpeed): the baseline benchmarks compare against. `progress`
    hears the main process's step count and loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.model_path)
    args = config.trl_args(scratch_dir=tempfile.mkdtemp(prefix=f"dpost-{kind}-"))
    if kind in ("sft", "verifier"):  # a verifier example is a prompt/completion record like SFT's
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**args),
                             train_dataset=_sft_dataset(_read_jsonl(config.data_path)), processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**args),
                             train_dataset=_dpo_dataset(config.data_path), processing_class=tokenizer)
    if progress is not None:
        trainer.add_callback(StepReporter(progress))
    if not ray_train:
        return trainer
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    trainer.add_callback(RayTrainReportCallback())
    return prepare_trainer(trainer)


def _train_resuming(trainer) -> int:
    """Train, starting from the last reported checkpoint when Ray Train restarted the worker group."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.train()
        return 0
    with checkpoint.as_directory() as folder:
        hf_folder = os.path.join(folder, "checkpoint")
        step = json.loads(Path(hf_folder, "trainer_state.json").read_text())["global_step"]
        print(f"[dpost] resuming from checkpoint at step {step}", flush=True)
        trainer.train(resume_from_checkpoint=hf_folder)
    return int(step)


def _save_final(trainer, config: TrainStageConfig, resumed_from: int) -> None:
    """Every rank joins save_model (ZeRO-3 gathers shards); rank 0 reports the HF folder as the final checkpoint."""
    import ray.train

    final = tempfile.mkdtemp(prefix="dpost-final-")
    trainer.save_model(final)
    context = ray.train.get_context()
    if context.get_world_rank() != 0:
        ray.train.report({"final": 1}, checkpoint=None)
        shutil.rmtree(final, ignore_errors=True)
        return
    try:
        _report_final(trainer, config, resumed_from, context, final)
    finally:  # report() has copied it into Ray Train's storage
        shutil.rmtree(final, ignore_errors=True)


def _report_final(trainer, config: TrainStageConfig, resumed_from: int, context, final: str) -> None:
    import ray
    import ray.train

    trainer.processing_class.save_pretrained(final)
    history = trainer.state.log_history
    metrics = {
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "num_workers": context.get_world_size(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "log_history": history,
        "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "first_loss": next((h["loss"] for h in history if "loss" in h), None),
        "config": config.model_dump(mode="json", exclude_unset=True),
    }
    Path(final, FINAL_MARKER).write_text(json.dumps(metrics, default=str))
    ray.train.report({"final": 1, "global_step": trainer.state.global_step},
                     checkpoint=ray.train.Checkpoint.from_directory(final))


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sft_dataset(records: list[dict[str, Any]]):
    """prompt/completion records; GSM8K question/answer lines are converted with the shared prompt format."""
    from datasets import Dataset

    from trainers.core.prompting import format_completion, format_prompt

    rows = [r if "prompt" in r else {"prompt": format_prompt(r["question"]),
                                     "completion": format_completion(r["answer"])} for r in records]
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def _dpo_dataset(path: str):
    """File-backed, with its cache beside the data: TRL caches reference log-probs next to the dataset's own
    cache files and every rank reads rank 0's file, so an in-memory dataset (per-process temp dir) breaks
    on 2+ workers. Pairs are written with `format_completion` already applied."""
    from datasets import Dataset

    cache = Path(path).resolve().parent / ".hf_datasets_cache"
    return Dataset.from_json(path, cache_dir=str(cache)).select_columns(["prompt", "chosen", "rejected"])


# Deprecations raised inside libraries dpost calls, not by dpost's own arguments: DeepSpeed's ZeRO gathers
# through torch's old collective name, TRL reads the model's old `is_gradient_checkpointing`. Each is matched by
# category, module and message, so any other warning still reaches the worker's log.
LIBRARY_DEPRECATIONS = [
    (FutureWarning, r"torch\.distributed\.c10d_logger", r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"transformers\.modeling_utils", r"`is_gradient_checkpointing` is deprecated"),
]


def _ignore_library_deprecations() -> None:
    for category, module, message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class StepReporter(TrainerCallback):
    """Sends the main process's step/total and latest loss to `progress`: at most once per `interval` seconds
    (the driver redraws its bar about once a second), at each logging step, and at the end."""

    def __init__(self, progress: StepProgress, interval: float = 1.0) -> None:
        self.progress = progress
        self.interval = interval
        self.info: dict[str, float] = {}
        self.sent = 0.0

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if time.monotonic() - self.sent >= self.interval:
            self._send(state)

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            shown = {"loss": "loss", "rewards/margins": "margin"}
            self.info = {name: round(float(logs[key]), 4) for key, name in shown.items() if key in logs}
            self._send(state)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._send(state)

    def _send(self, state) -> None:
        if state.is_world_process_zero:
            self.sent = time.monotonic()
            self.progress(state.global_step, state.max_steps, **self.info)
