"""A training stage's config: dpost's placement plus TRL's own `SFTConfig` / `DPOConfig` fields, passed through.

dpost owns only what TRL does not: the stage's paths, where its Ray Train workers run (`Placement`: workers,
GPU, resources, DeepSpeed ZeRO stage, restarts) and Ray Train's storage. Every other key is a field of TRL's
config, with TRL's name, type and meaning (an unknown key is refused); what is not set takes dpost's default
below, and then TRL's. Four TRL fields are dpost's instead: `output_dir` (the final model's folder; TRL's own
checkpoints go to a scratch folder per worker), `run_name` (Ray Train's run), `deepspeed` (built from
`zero_stage`) and `use_cpu` (from `use_gpu`).

Paper defaults (Wang et al., "Self-Training with Direct Preference Optimization Improves Chain-of-Thought
Reasoning", 2024) are named presets, so a run config can say `preset: paper-llama`:
- Flan-T5: SFT lr 3e-4, 8 epochs, batch 96; DPO lr 7e-7, 150 steps, beta 0.1.
- Llama:   SFT lr 2e-5, 2 epochs, batch 128; DPO lr 3e-7, 100 steps, beta 0.1.
- both: AdamW, weight decay 0.01, gradient clipping 1.0, cosine schedule, 3% warm-up.
The embedded defaults are for a from-scratch tiny model, which needs far higher learning rates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from trl import DPOConfig, SFTConfig

from trainers.core.errors import ConfigError, config_error
from trainers.models.checkpoints import validate_causal_lm

DPOST_OWNED = ("output_dir", "run_name", "deepspeed", "use_cpu")

# Bounds dpost checks before any worker starts; TRL checks the rest of its fields when a worker builds it.
TRL_BOUNDS: dict[str, dict[str, float]] = {
    "learning_rate": {"gt": 0}, "per_device_train_batch_size": {"ge": 1}, "gradient_accumulation_steps": {"ge": 1},
    "num_train_epochs": {"ge": 0}, "warmup_steps": {"ge": 0}, "weight_decay": {"ge": 0}, "max_grad_norm": {"ge": 0},
    "save_steps": {"gt": 0}, "logging_steps": {"gt": 0}, "max_length": {"ge": 1}, "beta": {"gt": 0},
}

# Fields both stages set away from TRL's defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "gradient_accumulation_steps": 1,
    "warmup_steps": 0.03,  # transformers 5: a float < 1 is a ratio of the total steps
    "weight_decay": 0.01, "max_grad_norm": 1.0, "lr_scheduler_type": "cosine", "max_length": 512, "seed": 0,
    "save_strategy": "steps", "save_steps": 50, "save_total_limit": 1, "logging_steps": 10,
    # TRL turns gradient checkpointing on by default: it recomputes activations every step, which only pays
    # when memory is short, and these models are small
    "activation_checkpointing": False,
    "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0,
}


def trl_fields(trl_class: type) -> dict[str, Any]:
    """Every field of a TRL config dataclass (but dpost's own four) as an optional pydantic field documented
    with TRL's help text: an unset field keeps dpost's default or TRL's, a key that is not a field is refused."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(trl_class):
        if f.name in DPOST_OWNED:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "").strip()
        fields[f.name] = (f.type | None, Field(None, description=f"{help_text} (TRL's default: {default!r})",
                                               **TRL_BOUNDS.get(f.name, {})))
    return fields


class TRLArgs(BaseModel):
    """Fields of one TRL config, all optional: the ones set here, over `DEFAULTS`, are passed to TRL."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    TRL_CLASS: ClassVar[type]
    DEFAULTS: ClassVar[dict[str, Any]]  # dpost's values for TRL fields, under everything set explicitly
    PRESETS: ClassVar[dict[str, dict[str, Any]]]

    @classmethod
    def trl_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls.TRL_CLASS)} - set(DPOST_OWNED)

    @classmethod
    def resolved(cls, values: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
        """The TRL fields a stage trains with: dpost's defaults <- the paper preset (if any) <- `values`."""
        named = cls.PRESETS.get(preset, {}) if isinstance(preset, str) else {}
        return {**cls.DEFAULTS, **named, **values}

    def set_trl_fields(self) -> dict[str, Any]:
        return self.model_dump(include=self.trl_names(), exclude_unset=True)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TRLArgs":
        args = self.resolved(self.set_trl_fields())
        if args.get("max_steps", -1) <= 0 and args.get("num_train_epochs", 0) <= 0:
            raise ValueError("set max_steps > 0 or num_train_epochs > 0")
        return self


class SFTArgs(create_model("SFTFields", __base__=TRLArgs, **trl_fields(SFTConfig))):  # type: ignore[misc]
    """Fields of TRL's SFTConfig, passed through to it; unset ones take dpost's defaults (for a from-scratch
    model), then TRL's."""

    TRL_CLASS: ClassVar[type] = SFTConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "learning_rate": 1e-3, "num_train_epochs": 3.0, "max_steps": -1,
        "per_device_train_batch_size": 16, "completion_only_loss": True,
        # batches of similar length pad less: rationales vary about 3x in length
        "train_sampling_strategy": "group_by_length",
    }
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper-flan-t5": {"learning_rate": 3e-4, "num_train_epochs": 8, "per_device_train_batch_size": 96},
        "paper-llama": {"learning_rate": 2e-5, "num_train_epochs": 2, "per_device_train_batch_size": 128},
    }


class DPOArgs(create_model("DPOFields", __base__=TRLArgs, **trl_fields(DPOConfig))):  # type: ignore[misc]
    """Fields of TRL's DPOConfig, passed through to it; unset ones take dpost's defaults (for a from-scratch
    model), then TRL's. dpost adds an NLL term on the chosen rationale (`loss_type: [sigmoid, sft]`, RPO): a
    from-scratch tiny model needs learning rates far above the paper's to move at all, and at those rates
    plain DPO collapses the policy. Reference log-probs are computed once up front, so a step runs no forward
    pass of the reference model."""

    TRL_CLASS: ClassVar[type] = DPOConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "learning_rate": 2e-5, "num_train_epochs": 1.0, "max_steps": 150,
        "per_device_train_batch_size": 8, "beta": 0.1, "loss_type": ["sigmoid", "sft"],
        "precompute_ref_log_probs": True,
    }
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper-flan-t5": {"learning_rate": 7e-7, "max_steps": 150, "beta": 0.1, "loss_type": ["sigmoid"]},
        "paper-llama": {"learning_rate": 3e-7, "max_steps": 100, "beta": 0.1, "loss_type": ["sigmoid"]},
    }


class Placement(BaseModel):
    """Where a stage's Ray Train workers run and how they recover: what dpost adds to TRL's config."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each; one GPU each with "
                                                  "use_gpu); the global batch is per-device batch x workers x "
                                                  "gradient accumulation.")
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL, bf16) instead of CPUs (gloo, fp32).")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Ray resources per worker, e.g. {CPU: 1} or {trainer: 1} to pin workers to a node type "
                          "with a custom resource; default one CPU (and one GPU with use_gpu).")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage; 0 trains without DeepSpeed.")
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig.max_failures: worker-group restarts "
                                                    "from the last checkpoint (-1: no limit).")


class TrainStageConfig(Placement):
    """One training stage: dpost's paths and placement; the SFT and DPO subclasses add TRL's fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    KIND: ClassVar[str]

    model_path: str = Field("", description="HF folder (or cached hub id) the stage starts from.")
    data_path: str = Field("", description="jsonl with prompt/completion (SFT; GSM8K question/answer lines "
                                           "too) or prompt/chosen/rejected (DPO).")
    output_dir: str = Field("", description="Where the final save_pretrained folder is written.")
    storage_path: str = Field("", description="Ray Train storage_path (a shared path or a cloud URI on a "
                                              "cluster); default: ray_train beside output_dir.")
    run_name: str = Field("", description="Ray Train run name prefix (default: the stage kind).")

    def trl_args(self, scratch_dir: str) -> dict[str, Any]:
        """Keyword arguments for TRL's config: dpost's defaults, what the placement implies, every TRL field
        set on this config, and `scratch_dir` for TRL's own checkpoints."""
        implied = {"use_cpu": not self.use_gpu,  # without it accelerate sees no device on CPU: world size 1
                   "bf16": self.use_gpu,
                   "deepspeed": deepspeed_config(self.zero_stage, self.use_gpu) if self.zero_stage else None}
        assert isinstance(self, TRLArgs)
        return {**self.DEFAULTS, **implied, **self.set_trl_fields(), "output_dir": scratch_dir}

    def checked(self) -> "TrainStageConfig":
        """This config validated again (fields may have been assigned since) with its files present: fail
        before any worker starts, in one line."""
        try:
            config = type(self).model_validate(self.model_dump(exclude_unset=True))
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None
        if not config.model_path:
            raise ConfigError("model_path is empty")
        if not config.data_path or not Path(config.data_path).is_file():
            raise ConfigError(f"data file not found: {config.data_path or '(empty)'}")
        if Path(config.data_path).stat().st_size == 0:
            raise ConfigError(f"data file is empty: {config.data_path}")
        if not config.output_dir:
            raise ConfigError("output_dir is empty")
        return config

    def resolved_storage_path(self) -> str:
        return self.storage_path or str(Path(self.output_dir).resolve().parent / "ray_train")


class SFTStageConfig(TrainStageConfig, SFTArgs):  # type: ignore[misc,valid-type]
    """Supervised fine-tuning on (question, rationale) with TRL's SFTTrainer: loss on the rationale only."""

    KIND: ClassVar[str] = "sft"


class DPOStageConfig(TrainStageConfig, DPOArgs):  # type: ignore[misc,valid-type]
    """DPO on (prompt, chosen, rejected) pairs with TRL's DPOTrainer; the reference model is the checkpoint the
    stage starts from."""

    KIND: ClassVar[str] = "dpo"


class VerifierArgs(SFTArgs):
    """Fields of TRL's SFTConfig for the verifier (evaluator) task; unset ones take SFT's defaults but for a
    fixed step count, so a multi-task run and its control (which trains these same fields on generation data)
    spend the same number of steps whatever the number of examples."""

    DEFAULTS: ClassVar[dict[str, Any]] = {**SFTArgs.DEFAULTS, "max_steps": 200}


class VerifierStageConfig(TrainStageConfig, VerifierArgs):  # type: ignore[misc,valid-type]
    """The verifier (evaluator) task of Liu et al. 2023: TRL's SFTTrainer on `trainers.data.verifier` examples
    (the paper's prompt, then ` correct` / ` incorrect`), loss on the label only: cross-entropy on the label
    sequence. `model_path` is a separate verifier's start or the policy itself (multi-task fine-tuning); the
    fields and placement are SFT's, the defaults `VerifierArgs`'."""

    KIND: ClassVar[str] = "verifier"

    def checked(self) -> "TrainStageConfig":
        """Also: `model_path` must be a causal LM, whose next-token probabilities are the verifier's score."""
        config = super().checked()
        validate_causal_lm(config.model_path)
        return config


STAGES: dict[str, type[TrainStageConfig]] = {"sft": SFTStageConfig, "dpo": DPOStageConfig,
                                             "verifier": VerifierStageConfig}
PRESET_NAMES = tuple(SFTArgs.PRESETS)


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

