"""SFT and DPO as Ray Train jobs: a `TorchTrainer` whose workers each run TRL's trainer under DeepSpeed.

`train_sft(config)` / `train_dpo(config)` validate the config, start `num_workers` Ray Train workers, and
return the final Hugging Face folder. Inside each worker the steps are the same for both stages:
load data -> load model -> build the TRL trainer (DeepSpeed ZeRO from the config) -> resume from the last
Ray Train checkpoint if the worker group was restarted -> train -> save the final model as a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.training.config import (STAGES, DPOStageConfig, SFTStageConfig, TrainStageConfig,
                                      default_extensions_dir)

FINAL_MARKER = "dpost_final.json"


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict[str, Any]


def train_sft(config: SFTStageConfig) -> TrainResult:
    return _fit("sft", config)


def train_dpo(config: DPOStageConfig) -> TrainResult:
    return _fit("dpo", config)


def _fit(kind: str, config: TrainStageConfig) -> TrainResult:
    import ray.train
    from ray.train.torch import TorchTrainer

    config = config.checked()
    remove_orphaned_training_groups()
    workers = {"CPU": 1} if not config.use_gpu else {"CPU": 1, "GPU": 1}
    trainer = TorchTrainer(
        train_loop_per_worker=_worker_loop,
        train_loop_config={"kind": kind, "config": config.model_dump(exclude_unset=True)},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=config.resources_per_worker or workers),
        run_config=ray.train.RunConfig(
            name=f"{config.run_name or kind}-{uuid.uuid4().hex[:8]}",
            storage_path=config.resolved_storage_path(),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
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
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", default_extensions_dir())
    import torch

    kind = loop_config["kind"]
    config = STAGES[kind].model_validate(loop_config["config"])
    if not config.use_gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        if config.zero_stage == 3:
            import deepspeed  # ZeRO-3 builds the reference model under zero.Init, which needs the group now

            deepspeed.init_distributed(dist_backend="gloo")

    trainer = build_trainer(kind, config)
    try:
        resumed_from = _train_resuming(trainer)
        _save_final(trainer, config, resumed_from)
    finally:  # HF checkpoints live on in Ray Train's storage; the worker's scratch copy does not need to
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def remove_orphaned_training_groups() -> list[str]:
    """Remove the placement groups of Ray Train runs whose controller is dead; returns their ids.

    A placement group lives as long as its creator's JOB, not its creator actor. When the coordinator (and with
    it the TrainController it owns) is killed mid-training, the group keeps its CPUs until the driver exits,
    and the restarted coordinator's training waits for them forever. Ray Train's own PlacementGroupCleaner
    handles this only when it can reach the State API (the dashboard), which many clusters keep off. The GCS
    knows each group's creator and whether it died: a group created by a dead TrainController is an orphan.
    """
    import ray
    from ray._private.state import state  # GCS tables; unlike ray.util.state, needs no dashboard
    from ray.core.generated import gcs_pb2
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    if not ray.is_initialized():
        return []
    removed = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if group.state == gcs_pb2.PlacementGroupTableData.REMOVED or group.is_detached \
                or not group.creator_actor_dead:
            continue
        creator = state.actor_table(group.creator_actor_id.hex())
        if creator.get("ActorClassName") != "TrainController":
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
        removed.append(group.placement_group_id.hex())
    if removed:
        print(f"[dpost] removed {len(removed)} placement group(s) left by killed training runs", flush=True)
    return removed


def build_trainer(kind: str, config: TrainStageConfig, ray_train: bool = True):
    """The TRL trainer a worker runs. `ray_train=False` gives the same trainer for one plain process (no Ray
    callbacks; set `zero_stage=0` for no DeepSpeed): the baseline benchmarks compare against."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.model_path)
    args = config.trl_args(scratch_dir=tempfile.mkdtemp(prefix=f"dpost-{kind}-"))
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**args),
                             train_dataset=_sft_dataset(_read_jsonl(config.data_path)), processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**args),
                             train_dataset=_dpo_dataset(config.data_path), processing_class=tokenizer)
    trainer.add_callback(_ProgressCallback(kind))
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


try:
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover
    _TrainerCallback = object  # type: ignore[assignment,misc]


class _ProgressCallback(_TrainerCallback):  # type: ignore[misc,valid-type]
    """One line per logging step on rank 0; Ray forwards worker stdout to the driver's console."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            extra = {k: round(v, 4) for k, v in logs.items()
                     if k in ("rewards/margins", "rewards/accuracies") and isinstance(v, float)}
            print(f"[{self.kind}] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                  f"{extra or ''}", flush=True)
