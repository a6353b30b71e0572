"""The run config: one YAML file says what to train, on what data, how to sample, train and serve.

    name: demo
    mode: dpo-st            # dpo-st | st | rft
    iterations: 1
    model: {preset: small}  # or {path: /models/my-hf-folder}
    data: {synthetic: {...}} # or {labeled: a.jsonl, unlabeled: b.jsonl, dev: c.jsonl, test: d.jsonl}
    sampling: {...}; training: {...}; evaluation: {...}; serving: {...}; storage: {...}

Every section is a dataclass below; unknown keys and bad values are a `ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.config import ServingConfig
from trainers.core.errors import ConfigError, reject_unknown_keys
from trainers.training.config import DPOStageConfig, SFTStageConfig
from trainers.data.synthetic import SyntheticTaskConfig
from trainers.models.scratch import PRESETS

MODES = ("dpo-st", "st", "rft")


@dataclass
class ModelSection:
    """`preset` builds a model from scratch (tiny | small); `path` is any HF folder or cached hub id.
    `warmup` is an existing SFT checkpoint folder used as the warm-up model sft-0 instead of training it (it
    must share the base model's tokenizer); lets experiments and tests reuse one warm-up."""

    preset: str | None = "small"
    path: str | None = None
    seed: int = 0
    warmup: str | None = None


@dataclass
class DataSection:
    """Either `synthetic` (SyntheticTaskConfig fields) or GSM8K-format files. `unlabeled_per_iteration`
    caps how many unlabeled questions each iteration samples (a fresh slice each iteration, cycling)."""

    synthetic: dict[str, Any] | None = None
    labeled: str | None = None
    unlabeled: str | None = None
    dev: str | None = None
    test: str | None = None
    unlabeled_per_iteration: int = 0
    dev_limit: int = 0
    test_limit: int = 0


@dataclass
class SamplingSection:
    """The paper's sampling: n=5 at T=0.7 for DPO pairs, K for pseudo-labels, Jaccard dedup at 0.7."""

    dpo_samples: int = 5
    sft_samples: int = 3
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 300
    calculator: bool = True
    dedup: str = "jaccard"
    dedup_threshold: float = 0.7
    max_pairs_per_question: int = 3
    chunk_rows: int = 40


@dataclass
class TrainingSection:
    """Shared training placement plus per-stage overrides (`sft`, `dpo`: SFTStageConfig / DPOStageConfig
    fields). `preset: paper-llama | paper-flan-t5` starts from the paper's hyper-parameters."""

    num_workers: int = 2
    use_gpu: bool = False
    zero_stage: int = 2
    resources_per_worker: dict[str, float] | None = None
    max_failures: int = 2
    preset: str | None = None
    sft: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationSection:
    """Greedy accuracy on dev decides promotion: a new model goes live when dev >= live dev + margin."""

    promotion_margin: float = 0.0
    max_new_tokens: int = 300
    evaluate_test: bool = True


@dataclass
class StorageSection:
    """`root/name` is the run directory; `ray_storage` is Ray Train's storage_path (a shared path or a
    cloud URI on a multi-node cluster; default: inside the run directory)."""

    root: str = "runs"
    ray_storage: str | None = None


@dataclass
class RFTSection:
    """Rejection-sampling fine-tuning: pool correct samples from these checkpoints (default: warm-up)."""

    checkpoints: list[str] = field(default_factory=list)
    dedup: str = "equations"


@dataclass
class RunConfig:
    name: str = "run"
    mode: str = "dpo-st"
    iterations: int = 1
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    serving: ServingConfig = field(default_factory=ServingConfig)
    storage: StorageSection = field(default_factory=StorageSection)
    rft: RFTSection = field(default_factory=RFTSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.storage.root).expanduser().resolve() / self.name

    def synthetic_config(self) -> SyntheticTaskConfig:
        values = dict(self.data.synthetic or {})
        values.setdefault("seed", self.seed)
        try:
            config = SyntheticTaskConfig(**values)
        except TypeError as exc:
            raise ConfigError(f"data.synthetic: {exc}") from None
        config.validate()
        return config

    def stage_config(self, kind: str, **paths: str) -> SFTStageConfig | DPOStageConfig:
        """The SFT or DPO stage config: paper preset (if any) <- section overrides <- placement <- paths."""
        cls = SFTStageConfig if kind == "sft" else DPOStageConfig
        base = {"paper-llama": cls.paper_llama, "paper-flan-t5": cls.paper_flan_t5}.get(
            self.training.preset or "", cls)()
        values = asdict(base)
        values.update(self.training.sft if kind == "sft" else self.training.dpo)
        t = self.training
        values.update(num_workers=t.num_workers, use_gpu=t.use_gpu, zero_stage=t.zero_stage,
                      resources_per_worker=t.resources_per_worker, max_failures=t.max_failures,
                      seed=self.seed, storage_path=self.storage.ray_storage or "", **paths)
        return cls.from_dict(values, where=f"training.{kind}")  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    reject_unknown_keys(values, cls, where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(raw: dict[str, Any], where: str = "config", check_files: bool = True) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    sections = {"model": ModelSection, "data": DataSection, "sampling": SamplingSection,
                "training": TrainingSection, "evaluation": EvaluationSection, "storage": StorageSection,
                "rft": RFTSection}
    reject_unknown_keys(raw, RunConfig, where)
    values = {k: v for k, v in raw.items() if k not in sections and k != "serving"}
    for key, cls in sections.items():
        values[key] = _section(cls, raw.get(key), f"{where}: {key}")
    serving = raw.get("serving") or {}
    if not isinstance(serving, dict):
        raise ConfigError(f"{where}: serving: expected a mapping")
    values["serving"] = ServingConfig.from_dict(serving)
    config = RunConfig(**values)
    validate(config, check_files)
    return config


def validate(config: RunConfig, check_files: bool = True) -> None:
    """`check_files=False` for `dpost submit`: data paths may exist only on the cluster."""
    if config.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {config.mode!r}")
    if not isinstance(config.iterations, int) or config.iterations < 1:
        raise ConfigError(f"iterations must be a positive integer, got {config.iterations!r}")
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise ConfigError(f"name must be a plain folder name, got {config.name!r}")
    m = config.model
    if m.path is not None:
        m.preset = None  # a user's model replaces the from-scratch preset
    if m.preset is None and m.path is None:
        raise ConfigError("model: set preset or path")
    if m.preset is not None and m.preset not in PRESETS:
        raise ConfigError(f"model.preset must be one of {sorted(PRESETS)}, got {m.preset!r}")
    if m.warmup is not None and check_files:
        if not Path(m.warmup).expanduser().is_dir():
            raise ConfigError(f"model.warmup: checkpoint folder not found: {m.warmup}")
        m.warmup = str(Path(m.warmup).expanduser().resolve())  # the coordinator may run in another folder
    d = config.data
    files = {k: getattr(d, k) for k in ("labeled", "unlabeled", "dev", "test")}
    if d.synthetic is None and not all(files.values()):
        missing = [k for k, v in files.items() if not v]
        raise ConfigError(f"data: give `synthetic` or all of labeled/unlabeled/dev/test (missing {missing})")
    if d.synthetic is not None:
        config.synthetic_config()
    elif check_files:
        for key, path in files.items():
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"data.{key}: file not found: {path}")
    s = config.sampling
    if s.dpo_samples < 2 or s.sft_samples < 1:
        raise ConfigError("sampling: dpo_samples must be >= 2 and sft_samples >= 1")
    if not 0 < s.temperature <= 2:
        raise ConfigError(f"sampling.temperature must be in (0, 2], got {s.temperature}")
    if not 0 <= s.dedup_threshold <= 1:
        raise ConfigError(f"sampling.dedup_threshold must be in [0, 1], got {s.dedup_threshold}")
    from trainers.core.dedup import DEDUP_METHODS

    for name in (s.dedup, config.rft.dedup):
        if name not in DEDUP_METHODS:
            raise ConfigError(f"unknown dedup method {name!r}; choose one of {sorted(DEDUP_METHODS)}")
    if config.training.preset not in (None, "paper-llama", "paper-flan-t5"):
        raise ConfigError(f"training.preset must be paper-llama or paper-flan-t5, got {config.training.preset!r}")
    for kind in ("sft", "dpo"):  # unknown stage fields, bad workers or ZeRO stage fail here, before Ray
        stage = config.stage_config(kind, model_path="x", data_path=__file__, output_dir="x")
        stage.validate()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, check_files: bool = True
                ) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    raw = raw or {}
    for key, value in (overrides or {}).items():
        raw[key] = value
    return parse_config(raw, where=str(path), check_files=check_files)


def config_from_yaml_text(text: str) -> RunConfig:
    try:
        return parse_config(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: not valid YAML ({str(exc).splitlines()[0]})") from None
