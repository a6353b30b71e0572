"""The run config: one YAML file says what to train, on what data, how to sample, train and serve.

    name: demo
    mode: dpo-st            # dpo-st | st | rft
    iterations: 1
    model: {preset: small}  # or {path: /models/my-hf-folder}
    data: {synthetic: {...}} # or {labeled: a.jsonl, unlabeled: b.jsonl, dev: c.jsonl, test: d.jsonl}
    sampling: {...}; training: {...}; evaluation: {...}; serving: {...}; storage: {...}; rft: {...}
    synthesis: {enabled: true, problems_per_iteration: 200, vote_threshold: 0.6, seed_texts: [...]}

Every section is a pydantic model below, each field documented and bounded; `dpost config --schema` prints the
JSON Schema and `dpost config --show FILE` the config with every default filled in. An unknown key or a bad
value is a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_serializer,
                      field_validator, model_validator)

from services.config import ServingConfig, checks_files
from trainers.core.dedup import DEDUP_METHODS
from trainers.core.errors import CheckpointError, ConfigError, config_error
from trainers.data.synthetic import SyntheticTaskConfig
from trainers.engine.decoding import MAX_NEW_TOKENS
from trainers.models.checkpoints import validate_causal_lm
from trainers.models.scratch import PRESETS
from trainers.synthesis.config import SynthesisConfig
from trainers.training.config import (PRESET_NAMES, STAGES, DPOArgs, Placement, SFTArgs, TrainStageConfig,
                                      VerifierArgs)

Mode = Literal["dpo-st", "st", "rft"]
ModelPreset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
DedupMethod = Literal[tuple(DEDUP_METHODS)]  # type: ignore[valid-type]
TrainingPreset = Literal[PRESET_NAMES]  # type: ignore[valid-type]
SPLIT_FILES = ("labeled", "unlabeled", "dev", "test")


def plain_folder_name(name: str) -> str:
    """A run's (or experiment's) name is its folder: one path component, not hidden."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"must be a plain folder name, got {name!r}")
    return name


class ModelSection(BaseModel):
    """The base model f0: a from-scratch `preset` or a Hugging Face folder (`path`), and optionally an existing
    warm-up model."""

    model_config = ConfigDict(extra="forbid")

    preset: ModelPreset | None = Field(
        "small", description="Build a from-scratch Llama-style model with a tokenizer trained on the task's text: "
                             "`tiny`/`small` (every digit one token; tests and demo) or `llama-100m` / "
                             "`llama-100m-digits3` (~100M parameters, 32k vocabulary, numbers split GPT-2-style or "
                             "in Llama-3-style chunks of up to 3 digits; for measuring, not accuracy).")
    path: str | None = Field(None, description="Any HF folder or cached hub id; replaces `preset`.")
    seed: int = Field(0, ge=0, description="Seed of the from-scratch model's initial weights.")
    warmup: str | None = Field(
        None, description="An existing SFT checkpoint folder to use as the warm-up model sft-0 instead of "
                          "training it (it must share the base model's tokenizer); lets experiments and tests "
                          "reuse one warm-up. It is still evaluated and goes through the promotion gate.")

    @model_validator(mode="after")
    def _preset_or_path(self, info: ValidationInfo) -> "ModelSection":
        if self.path is not None:
            self.preset = None  # a user's model replaces the from-scratch preset
        if self.preset is None and self.path is None:
            raise ValueError("set preset or path")
        if self.warmup is not None and checks_files(info):
            if not Path(self.warmup).expanduser().is_dir():
                raise ValueError(f"warmup: checkpoint folder not found: {self.warmup}")
            self.warmup = str(Path(self.warmup).expanduser().resolve())  # the coordinator may run elsewhere
        return self


class DataSection(BaseModel):
    """Either the embedded `synthetic` task or GSM8K-format files (all four splits)."""

    model_config = ConfigDict(extra="forbid")

    synthetic: SyntheticTaskConfig | None = Field(
        None, description="Generate the synthetic GSM8K-style task with these settings (its seed defaults to "
                          "the run's).")
    labeled: str | None = Field(None, description="Problems with rationales: the SFT set L.")
    unlabeled: str | None = Field(None, description="Problems with final answers only: the self-training "
                                                    "pool U.")
    dev: str | None = Field(None, description="Held-in problems whose accuracy decides promotion.")
    test: str | None = Field(None, description="Held-in problems for the report.")
    unlabeled_per_iteration: int = Field(0, ge=0, description="Unlabeled questions each iteration samples (a "
                                                              "fresh slice each iteration, cycling); 0: all.")
    dev_limit: int = Field(0, ge=0, description="Evaluate only the first this many dev problems; 0: all.")
    test_limit: int = Field(0, ge=0, description="Evaluate only the first this many test problems; 0: all.")

    @model_validator(mode="after")
    def _synthetic_or_files(self, info: ValidationInfo) -> "DataSection":
        files = {key: getattr(self, key) for key in SPLIT_FILES}
        if self.synthetic is not None:
            return self
        missing = [key for key, path in files.items() if not path]
        if missing:
            raise ValueError(f"give `synthetic` or all of labeled/unlabeled/dev/test (missing {missing})")
        if checks_files(info):
            for key, path in files.items():
                if not Path(path).expanduser().is_file():
                    raise ValueError(f"{key}: file not found: {path}")
        return self


class SamplingSection(BaseModel):
    """The paper's sampling: n=5 at T=0.7 for DPO pairs, K for pseudo-labels, Jaccard dedup at 0.7."""

    model_config = ConfigDict(extra="forbid")

    dpo_samples: int = Field(5, ge=2, description="Samples per question for DPO pairs (a correct one is chosen, "
                                                  "an incorrect one rejected).")
    sft_samples: int = Field(3, ge=1, description="K: samples per question for pseudo-labels.")
    temperature: float = Field(0.7, gt=0, le=2, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens with "
                                                      "this much probability.")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="Most tokens a sampled rationale may have.")
    calculator: bool = Field(True, description="Let the calculator write the results of `<<expr=` annotations.")
    dedup: DedupMethod = Field("jaccard", description="How correct samples of one question are deduplicated.")
    dedup_threshold: float = Field(0.7, ge=0, le=1, description="Jaccard similarity at which two rationales are "
                                                                "duplicates.")
    max_pairs_per_question: int = Field(3, ge=1, description="Most DPO pairs built from one question.")
    chunk_rows: int = Field(40, ge=1, description="Rows (question x sample) per request to the rollout pool; "
                                                  "the progress bar advances once per chunk.")


class TrainingSection(Placement):
    """Training placement (shared by both stages) plus the `sft` and `dpo` stages' TRL fields.

    `sft` and `dpo` take any field of TRL's SFTConfig / DPOConfig; what they leave unset comes from the paper
    `preset` if one is named, else from dpost's defaults for a from-scratch model, else from TRL."""

    model_config = ConfigDict(extra="forbid")

    preset: TrainingPreset | None = Field(None, description="Start both stages from the paper's "
                                                            "hyper-parameters for this model family.")
    sft: SFTArgs = Field(default_factory=SFTArgs, description="TRL SFTConfig fields for every SFT stage.")
    dpo: DPOArgs = Field(default_factory=DPOArgs, description="TRL DPOConfig fields for every DPO stage.")

    @model_validator(mode="before")
    @classmethod
    def _fill_stage_defaults(cls, raw: Any) -> Any:
        """Each stage's fields become the ones it trains with (defaults and preset filled in), so the manifest
        and `--show` record them."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for kind, args in (("sft", SFTArgs), ("dpo", DPOArgs)):
            values = raw.get(kind) or {}
            if isinstance(values, dict):
                raw[kind] = args.resolved(values, raw.get("preset"))
        return raw

    @field_serializer("sft", "dpo")
    def _set_fields_only(self, args: BaseModel, info: Any) -> dict[str, Any]:
        return args.model_dump(exclude_unset=True, mode=info.mode)


class EvaluationSection(BaseModel):
    """Greedy accuracy on dev decides promotion: a new model goes live when dev >= live dev + margin."""

    model_config = ConfigDict(extra="forbid")

    promotion_margin: float = Field(0.0, ge=-1, le=1, description="Dev accuracy a new model must gain over the "
                                                                  "live one to be promoted (a fraction).")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="Most tokens a greedy answer may have.")
    evaluate_test: bool = Field(True, description="Evaluate every model on test too, for the report.")
    calculator_ablation: bool = Field(False, description="Also evaluate every model on test without the "
                                                         "calculator (the paper's Fig. 7).")
    dpo_effect_samples: int = Field(0, ge=0, description="The DPO step's effect on sampling (the paper's Fig. "
                                    "6): with k > 0, each DPO-ST iteration samples k rationales per dev question "
                                    "at the sampling temperature from the SFT model before and the DPO model after "
                                    "the DPO step (pass@1, pass@k, distinct correct rationales). 0: off.")
    gate: Literal["greedy", "rerank"] = Field(
        "greedy", description="What the promotion gate compares: greedy dev accuracy, or re-ranked dev accuracy "
                              "(`rerank_n` samples per dev question, clustered by answer and chosen from by "
                              "`rerank_strategy` with the verifier trained after the same SFT step; needs "
                              "`verifier.enabled`, mode separate or multitask).")
    rerank_n: int = Field(8, ge=2, description="gate rerank: samples per dev question.")
    rerank_top_k: int | None = Field(None, ge=1, description="gate rerank: K of the top-K strategies, at most "
                                                             "rerank_n; default min(8, rerank_n // 2).")
    rerank_strategy: Literal["rr_topk", "weighted", "weighted_topk"] = Field(
        "weighted_topk", description="gate rerank: the re-ranking whose dev accuracy is compared (Liu et al. "
                                     "2023): the best-scored solution's answer within the top-K answer clusters, "
                                     "the cluster with the largest summed score, or that within the top-K.")

    @model_validator(mode="after")
    def _top_k_within_n(self) -> "EvaluationSection":
        if self.rerank_top_k is not None and self.rerank_top_k > self.rerank_n:
            raise ValueError(f"rerank_top_k ({self.rerank_top_k}) must be at most rerank_n ({self.rerank_n})")
        return self


class StorageSection(BaseModel):
    """Where the run directory and Ray Train's checkpoints live."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("runs", description="The run directory is root/name.")
    ray_storage: str | None = Field(None, description="Ray Train storage_path: a shared path or a cloud URI on "
                                                      "a multi-node cluster; default: inside the run directory.")


class RFTSection(BaseModel):
    """Rejection-sampling fine-tuning (mode rft): pool correct samples from several models."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: list[str] = Field(default_factory=list, description="Checkpoint folders sampled besides the "
                                                                     "warm-up model.")
    dedup: DedupMethod = Field("equations", description="How pooled correct samples of one question are "
                                                        "deduplicated.")


class VerifierSection(BaseModel):
    """The evaluator of Liu et al. 2023, trained after every SFT step on the run's own samples of that model's
    training questions (cluster/verifier_stages.py), labelled by final-answer match and balanced per question.

    `mode` separate: a verifier model `sft-t-verifier` beside the policy `sft-t`. multitask (multi-task
    sequential fine-tuning): `sft-t-gen` = SFT as usual, `sft-t-verifier` = the evaluator task on it, then
    `sft-t` = generation SFT (training.sft) again from that: the policy evaluated and promoted. control: the
    same with the evaluator step replaced by generation SFT with the evaluator's own `training` fields (the same
    steps), so multitask and control differ only in what those steps learn."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Train a verifier after every SFT step.")
    mode: Literal["separate", "multitask", "control"] = Field(
        "separate", description="separate: a verifier model beside the policy; multitask: generation SFT -> "
                                "evaluator -> generation SFT on the policy itself; control: the same steps, all "
                                "generation SFT.")
    init: Literal["sft", "base"] = Field("sft", description="separate: start the verifier from this step's SFT "
                                                            "model or from the base model f0.")
    model: str | None = Field(None, description="separate: start the verifier from this Hugging Face causal LM "
                                                "folder instead (its own tokenizer is fine).")
    max_per_label: int = Field(4, ge=1, description="Most right (and as many wrong) examples per question.")
    holdout: float = Field(0.2, ge=0, lt=1, description="Share of the questions with right and wrong samples "
                                                        "kept out of training to measure the verifier's AUC.")
    warmup_questions: int = Field(64, ge=1, description="sft-0 has no samples of its own: this many labeled "
                                                        "questions are sampled from it for its verifier data "
                                                        "(later steps use their iteration's sample files).")
    warmup_samples: int = Field(4, ge=2, description="Samples per question for sft-0's verifier data.")
    training: VerifierArgs = Field(default_factory=VerifierArgs,
                                   description="TRL SFTConfig fields of the evaluator task (and of the control's "
                                               "extra generation steps).")

    @model_validator(mode="before")
    @classmethod
    def _fill_training_defaults(cls, raw: Any) -> Any:
        """The evaluator's fields become the ones it trains with, so the manifest records them."""
        if isinstance(raw, dict) and isinstance(raw.get("training") or {}, dict):
            raw = {**raw, "training": VerifierArgs.resolved(raw.get("training") or {})}
        return raw

    @model_validator(mode="after")
    def _checked(self, info: ValidationInfo) -> "VerifierSection":
        if self.mode != "separate" and self.training.max_steps is not None and self.training.max_steps <= 0:
            raise ValueError("training.max_steps: multitask and control compare by steps: set max_steps > 0")
        if self.model is not None and checks_files(info):
            try:
                validate_causal_lm(str(Path(self.model).expanduser()))
            except CheckpointError as exc:
                raise ValueError(f"model: {exc}") from None
        return self

    @field_serializer("training")
    def _set_fields_only(self, args: BaseModel, info: Any) -> dict[str, Any]:
        return args.model_dump(exclude_unset=True, mode=info.mode)


class RunConfig(BaseModel):
    """A dpost run: DPO-augmented self-training (or plain self-training, or RFT) from one YAML file."""

    model_config = ConfigDict(extra="forbid", title="dpost run config")

    name: str = Field("run", description="The run's name: its folder under storage.root and its model labels.")
    mode: Mode = Field("dpo-st", description="dpo-st: a DPO step before each sampling round; st: plain "
                                             "self-training; rft: one round of rejection-sampling fine-tuning.")
    iterations: int = Field(1, ge=0, description="Self-training iterations after the warm-up; 0: the warm-up "
                                                 "model only (the SFT baseline, in every mode).")
    seed: int = Field(0, ge=0, description="Seeds sampling, and (unless they set their own) training.sft, "
                                           "training.dpo and the synthetic task.")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field({}, validate_default=True)  # validated, so a config without data fails there
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    storage: StorageSection = Field(default_factory=StorageSection)
    rft: RFTSection = Field(default_factory=RFTSection)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig, description=(
        "JiuZhang3.0 problem synthesis (trainers/synthesis/config.py): with `enabled`, a synthesizer trained "
        "once per run writes problems each iteration; the filtered ones join U_t with vote labels. Its "
        "`samples_per_question` and `vote_threshold` also label unlabeled rows that come without an answer."))
    verifier: VerifierSection = Field(default_factory=VerifierSection)

    @model_validator(mode="before")
    @classmethod
    def _seeds_follow_the_run(cls, raw: Any) -> Any:
        """The synthetic task, both training stages and the verifier's training take the run's seed unless
        they set their own."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for section, key in (("data", "synthetic"), ("training", "sft"), ("training", "dpo"),
                             ("verifier", "training")):
            outer = raw.get(section) or {}
            inner = outer.get(key) if isinstance(outer, dict) else None
            if inner is None and section != "data":
                inner = {}  # the stages always exist; a run without `synthetic` reads files
            if isinstance(inner, dict) and "seed" not in inner:
                raw[section] = {**outer, key: {**inner, "seed": raw.get("seed", 0)}}
        return raw

    @model_validator(mode="after")
    def _rerank_gate_has_a_verifier(self) -> "RunConfig":
        if self.evaluation.gate == "rerank" and not (self.verifier.enabled and self.verifier.mode != "control"):
            raise ValueError("evaluation.gate rerank needs a verifier: set verifier.enabled with mode separate or "
                             "multitask")
        return self

    _plain_folder_name = field_validator("name")(plain_folder_name)

    @property
    def run_dir(self) -> Path:
        return Path(self.storage.root).expanduser().resolve() / self.name

    def synthetic_config(self) -> SyntheticTaskConfig:
        if self.data.synthetic is None:
            raise ConfigError("data: this run reads files, not the synthetic task")
        return self.data.synthetic

    def stage_config(self, kind: str, **paths: Any) -> TrainStageConfig:
        """The SFT, DPO or verifier stage config: the section's TRL fields (`training.<kind>`, the verifier's
        `verifier.training`) <- placement <- paths (and any field a caller sets for one stage, such as the
        synthesizer's max_steps)."""
        stage, section = STAGES[kind], "verifier.training" if kind == "verifier" else f"training.{kind}"
        args = self.verifier.training if kind == "verifier" else getattr(self.training, kind)
        values = {**args.model_dump(exclude_unset=True),
                  **self.training.model_dump(include=set(Placement.model_fields)),
                  "storage_path": self.storage.ray_storage or "", **paths}
        try:
            return stage.model_validate(values)
        except ValidationError as exc:
            raise config_error(exc, stage, prefix=section) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the manifest's copy); `parse_config` of it gives this config again."""
        return self.model_dump(mode="json")


def parse_config(raw: Any, where: str = "config", check_files: bool = True) -> RunConfig:
    """`check_files=False` for `dpost submit`: data paths and the warm-up folder may exist only on the cluster."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    try:
        return RunConfig.model_validate(raw, context={"check_files": check_files})
    except ValidationError as exc:
        raise config_error(exc, RunConfig, where) from None


def read_yaml_file(path: str | Path) -> Any:
    """A config file's YAML (None when empty); a missing file or bad YAML is a one-line ConfigError."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, check_files: bool = True
                ) -> RunConfig:
    raw = read_yaml_file(path) or {}
    if isinstance(raw, dict):
        if "methods" in raw and "base" in raw:  # the schema's errors would not say what is wrong
            raise ConfigError(f"{path} is an experiment file (methods x seeds), not a run config: "
                              f"run it with `dpost experiment {path}`")
        raw.update(overrides or {})
    return parse_config(raw, where=str(path), check_files=check_files)


def config_from_yaml_text(text: str) -> RunConfig:
    try:
        return parse_config(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: not valid YAML ({str(exc).splitlines()[0]})") from None


def config_schema() -> dict[str, Any]:
    """The run config's JSON Schema (what `dpost config --schema` prints, for editors validating YAML)."""
    return RunConfig.model_json_schema()


def show_config(config: RunConfig) -> str:
    """The config as YAML with every default filled in (what `dpost config --show` prints)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
