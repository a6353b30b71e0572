"""One documented config per training stage, in the spirit of TRL's `SFTConfig` / `DPOConfig`.

Paper defaults (Wang et al., "Self-Training with Direct Preference Optimization Improves Chain-of-Thought
Reasoning", 2024) are kept as named presets so a run config can say `preset: paper-llama`:
- Flan-T5: SFT lr 3e-4, 8 epochs, batch 96; DPO lr 7e-7, 150 steps, beta 0.1.
- Llama:   SFT lr 2e-5, 2 epochs, batch 128; DPO lr 3e-7, 100 steps, beta 0.1.
- both: AdamW, weight decay 0.01, gradient clipping 1.0, cosine schedule, 3% warm-up.
The embedded defaults below are for a from-scratch tiny model, which needs far higher learning rates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainers.core.errors import ConfigError, reject_unknown_keys

ZERO_STAGES = (0, 1, 2, 3)


@dataclass
class TrainStageConfig:
    """Fields shared by every training stage.

    Args:
        model_path: HF folder (or cached hub id) the stage starts from.
        data_path: jsonl with `prompt`/`completion` (SFT), `prompt`/`chosen`/`rejected` (DPO); SFT also reads
            GSM8K `question`/`answer` lines.
        output_dir: where the final `save_pretrained` folder is written.
        num_workers: Ray Train workers (one process each; one GPU each when `use_gpu`).
        use_gpu: train on GPUs (NCCL, bf16) instead of CPUs (gloo, fp32).
        resources_per_worker: Ray resources per worker, e.g. `{"CPU": 1}` or `{"trainer": 1}` to pin workers
            to a node type with a custom resource.
        zero_stage: DeepSpeed ZeRO stage (0-3); 2 by default.
        max_failures: Ray Train `FailureConfig.max_failures`: worker-group restarts from the last checkpoint.
        save_steps: checkpoint (and report to Ray Train) every this many optimizer steps.
        storage_path: Ray Train `storage_path` (a shared filesystem path or a cloud URI on a cluster).
        max_steps: if > 0, overrides `num_train_epochs`.
        per_device_train_batch_size: micro batch per worker; the global batch is this x workers x accumulation.
        group_by_length: batch examples of similar length together (less padding: rationales vary 3x in
            length); SFT only.
    """

    model_path: str = ""
    data_path: str = ""
    output_dir: str = ""
    learning_rate: float = 1e-3
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "cosine"
    max_length: int = 512
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    zero_stage: int = 2
    max_failures: int = 2
    save_steps: int = 50
    logging_steps: int = 10
    storage_path: str = ""
    run_name: str = ""
    group_by_length: bool = True

    def validate(self) -> None:
        """Fail before any worker starts, with one clear message."""
        if not self.model_path:
            raise ConfigError("model_path is empty")
        if not self.data_path or not Path(self.data_path).is_file():
            raise ConfigError(f"data file not found: {self.data_path or '(empty)'}")
        if Path(self.data_path).stat().st_size == 0:
            raise ConfigError(f"data file is empty: {self.data_path}")
        if not self.output_dir:
            raise ConfigError("output_dir is empty")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ConfigError(f"num_workers must be a positive integer, got {self.num_workers!r}")
        if self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"unknown DeepSpeed ZeRO stage {self.zero_stage!r}; choose one of {ZERO_STAGES}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("batch size and gradient_accumulation_steps must be >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps > 0 or num_train_epochs > 0")

    def updated(self, **changes: Any) -> "TrainStageConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> "TrainStageConfig":
        reject_unknown_keys(values, cls, where or cls.__name__)
        return cls(**values)

    def resolved_storage_path(self) -> str:
        return self.storage_path or str(Path(self.output_dir).resolve().parent / "ray_train")


@dataclass
class SFTStageConfig(TrainStageConfig):
    """Supervised fine-tuning on (question, rationale): loss on the rationale tokens only."""

    learning_rate: float = 1e-3
    num_train_epochs: float = 3.0

    @classmethod
    def paper_flan_t5(cls, **kw: Any) -> "SFTStageConfig":
        return cls(learning_rate=3e-4, num_train_epochs=8, per_device_train_batch_size=96, **kw)

    @classmethod
    def paper_llama(cls, **kw: Any) -> "SFTStageConfig":
        return cls(learning_rate=2e-5, num_train_epochs=2, per_device_train_batch_size=128, **kw)


@dataclass
class DPOStageConfig(TrainStageConfig):
    """DPO on (prompt, chosen, rejected) pairs; the reference model is the SFT checkpoint it starts from.

    Args:
        beta: DPO temperature (paper: 0.1).
        sft_loss_weight: if > 0, adds this weight x NLL on the chosen rationale (RPO). A from-scratch tiny
            model needs learning rates far above the paper's to move at all, and at those rates plain DPO
            collapses the policy; the NLL term keeps it writing the chosen rationales.
        precompute_ref_log_probs: compute reference log-probs once up front, so a step runs no forward pass
            of the reference model.
    """

    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = 150
    per_device_train_batch_size: int = 8
    beta: float = 0.1
    sft_loss_weight: float = 1.0
    precompute_ref_log_probs: bool = True

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")

    @classmethod
    def paper_flan_t5(cls, **kw: Any) -> "DPOStageConfig":
        return cls(learning_rate=7e-7, max_steps=150, beta=0.1, sft_loss_weight=0.0, **kw)

    @classmethod
    def paper_llama(cls, **kw: Any) -> "DPOStageConfig":
        return cls(learning_rate=3e-7, max_steps=100, beta=0.1, sft_loss_weight=0.0, **kw)


def deepspeed_config(zero_stage: int, use_gpu: bool) -> dict[str, Any]:
    """DeepSpeed config with HF's "auto" values, so batch sizes and clipping come from the trainer args.
    No optimizer section: the HF Trainer's torch AdamW is used, which avoids JIT-building fused Adam on CPU."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # so save_model writes full weights
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": bool(use_gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
    }


def default_extensions_dir() -> str:
    """DeepSpeed JIT-builds its CPU comm op once per environment; keep the build where it survives."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "dpost" / "torch_extensions")
