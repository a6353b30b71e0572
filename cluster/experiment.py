"""`dpost experiment FILE`: a matrix of methods x seeds from one YAML, every cell an ordinary run directory.

    name: paper                 # cells in runs/paper/<method>-seed<k>
    base: ../demo.yaml          # a run config (path relative to this file, or an inline mapping)
    methods: [sft, st, dpo-st]  # sft = the warm-up model, no self-training
    seeds: [0, 1, 2]
    iterations: 3
    dev_questions: 500
    test_questions: 1000

Per seed the `sft` cell runs first: data, base model and the warm-up `sft-0`. Every other cell of that seed reads
the sft cell's data files and starts from its base model and warm-up (`model.warmup`), so methods are compared
paired (same seed, same warm-up model, same questions) and nothing is trained twice. Cells run one after another;
a finished cell is skipped and an unfinished one resumes from its manifest, so running the file again only
redoes the aggregate step (cluster/aggregate.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.config import RunConfig, parse_config, plain_folder_name, read_yaml_file
from trainers.core.errors import ConfigError, config_error

Method = Literal["sft", "st", "dpo-st", "rft"]
METHOD_ORDER = ("sft", "st", "dpo-st", "rft")


class ExperimentConfig(BaseModel):
    """A seeded comparison of self-training methods on one run config."""

    model_config = ConfigDict(extra="forbid", title="dpost experiment config")

    name: str = Field(description="The experiment's folder under `root`; each cell is root/name/<method>-seed<k>.")
    base: str | dict[str, Any] = Field(
        description="The run config every cell starts from: a YAML path (relative to the experiment file) or an "
                    "inline mapping. The experiment sets each cell's name, mode, iterations, seeds, eval sizes "
                    "and storage root.")
    methods: list[Method] = Field(["sft", "st", "dpo-st"], min_length=1,
                                  description="Methods compared: sft (the warm-up model), st, dpo-st, rft. The sft "
                                              "cell of each seed always runs (it trains the shared warm-up).")
    seeds: list[int] = Field([0, 1, 2], min_length=1,
                             description="One cell per method and seed; a seed sets the task's data, the model's "
                                         "initial weights, training and sampling.")
    iterations: int = Field(3, ge=1, description="Self-training iterations of the st and dpo-st cells (rft: one "
                                                 "round).")
    dev_questions: int = Field(500, ge=1, description="Dev questions: the promotion gate's (and any tuning's) set.")
    test_questions: int = Field(1000, ge=1, description="Test questions every reported accuracy is measured on.")
    calculator_ablation: bool = Field(True, description="Also evaluate every model on test without the "
                                                        "calculator (Fig. 7).")
    dpo_effect_samples: int = Field(10, ge=0, description="Rationales per dev question sampled from the SFT "
                                                          "model before and the DPO model after each DPO step "
                                                          "(Fig. 6's pass@k); 0: use the loop's own samples.")
    bootstrap_samples: int = Field(2000, ge=100, description="Bootstrap replicates behind every 95% interval.")
    demo: bool = Field(False, description="This matrix measures the demo: its sft-1 vs sft-0 gain goes to the "
                                          "results file's `demo` key, leaving the main matrix's keys as they are.")
    root: str = Field("runs", description="Where experiment folders live.")
    results_json: str = Field("benchmarks/results/experiments.json", description="The aggregate's JSON.")
    report_md: str = Field("docs/experiments.md", description="The aggregate's tables; figures go beside it.")

    _plain_folder_name = field_validator("name")(plain_folder_name)

    @field_validator("methods", "seeds")
    @classmethod
    def _no_repeats(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"lists something twice: {values}")
        return values

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be 0 or more, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _demo_shape(self) -> "ExperimentConfig":
        if self.demo and (self.iterations != 1 or len(self.methods_trained) != 1):
            raise ValueError("demo: needs iterations 1 and exactly one method besides sft")
        return self

    @property
    def methods_trained(self) -> list[str]:
        """The methods with self-training cells (every method but sft), in the report's order."""
        return [m for m in METHOD_ORDER if m in self.methods and m != "sft"]

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser().resolve() / self.name


def load_experiment(path: str | Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The experiment and its base run config (a raw mapping, validated per cell). ConfigError on mistakes."""
    path = Path(path)
    raw = _read_yaml(path)
    if "base" not in raw and ("data" in raw or "mode" in raw):  # the schema's errors would not say what is wrong
        raise ConfigError(f"{path} is a run config, not an experiment file: run it with `dpost run {path}`, "
                          f"or name it as the `base:` of an experiment file")
    try:
        experiment = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, ExperimentConfig, str(path)) from None
    base = experiment.base
    if isinstance(base, str):
        base = _read_yaml((path.parent / base) if not Path(base).is_absolute() else Path(base))
    base = copy.deepcopy(base)
    parse_config(cell_raw(experiment, base, "sft", experiment.seeds[0], None), where=f"{path}: base")
    return experiment, base


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def cell_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def cell_raw(experiment: ExperimentConfig, base: dict[str, Any], method: str, seed: int,
             warm: dict[str, Any] | None) -> dict[str, Any]:
    """One cell's run config (raw): the base with the experiment's settings; `warm` (the seed's sft cell:
    data files, base model, warm-up checkpoint) is required for every method but sft."""
    raw = copy.deepcopy(base)
    raw.update(name=cell_name(method, seed), seed=seed)
    # the sft cell is any mode with no iterations: it trains and evaluates the warm-up only
    raw.update(mode="st", iterations=0) if method == "sft" else raw.update(mode=method,
                                                                        iterations=experiment.iterations)
    raw["storage"] = {**(raw.get("storage") or {}), "root": str(experiment.folder)}
    raw["evaluation"] = {**(raw.get("evaluation") or {}), "calculator_ablation": experiment.calculator_ablation,
                         "dpo_effect_samples": experiment.dpo_effect_samples}
    training = raw.setdefault("training", {})
    for kind in ("sft", "dpo"):  # the cell's seed decides training too
        if isinstance(training.get(kind), dict):
            training[kind].pop("seed", None)
    data = dict(raw.get("data") or {})
    data.update(dev_limit=experiment.dev_questions, test_limit=experiment.test_questions)
    if method == "sft":
        raw["model"] = {**(raw.get("model") or {}), "seed": seed}
        if isinstance(data.get("synthetic"), dict):
            synthetic = {k: v for k, v in data["synthetic"].items() if k != "seed"}
            data["synthetic"] = {**synthetic, "n_dev": experiment.dev_questions,
                                 "n_test": experiment.test_questions}
    else:
        if warm is None:
            raise ValueError(f"cell {cell_name(method, seed)} needs its seed's sft cell first")
        raw["model"] = {"path": warm["base"], "warmup": warm["warmup"]}
        data.pop("synthetic", None)
        data.update({split: warm[f"{split}_path"] for split in ("labeled", "unlabeled", "dev", "test")})
    raw["data"] = data
    return raw


def warm_outputs(run_dir: Path) -> dict[str, Any]:
    """What a finished sft cell shares with its seed's other cells."""
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    data = stages["data"]["outputs"]
    return {"base": stages["base"]["outputs"]["checkpoint"], "warmup": stages["sft-0"]["outputs"]["checkpoint"],
            **{f"{split}_path": data[f"{split}_path"] for split in ("labeled", "unlabeled", "dev", "test")}}


def cell_status(config: RunConfig) -> str | None:
    """The cell's manifest status (None before it starts); ConfigError when it was started with another
    config, which resuming would mix into its results."""
    path = config.run_dir / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    stored, wanted = manifest.get("config"), config.to_dict()
    if stored is not None:  # read with today's defaults, so a setting added since then is not a difference
        try:
            stored = parse_config(stored, where=str(path), check_files=False).to_dict()
        except ConfigError:
            pass
    if stored is not None and stored != wanted:
        changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
        raise ConfigError(f"{config.run_dir} was run with another config (differs in {', '.join(changed)}); "
                          "delete that cell or rename the experiment")
    return manifest.get("status")


@dataclass(frozen=True)
class Cell:
    """One (method, seed) of the matrix and its run directory."""

    method: str
    seed: int
    run_dir: Path


RunCell = Callable[[RunConfig], None]


def run_experiment(experiment: ExperimentConfig, base: dict[str, Any], run_cell: RunCell,
                   log: Callable[[str], None] = print) -> list[Cell]:
    """Run every unfinished cell with `run_cell` (sft first per seed), one after another; returns the cells in
    order. A finished cell is not started again."""
    cells = []
    for seed in experiment.seeds:
        warm = None
        for method in ["sft"] + experiment.methods_trained:
            config = parse_config(cell_raw(experiment, base, method, seed, warm), where=cell_name(method, seed))
            if cell_status(config) == "done":
                log(f"[experiment] {config.name}: done, skipped")
            else:
                log(f"[experiment] {config.name}: running in {config.run_dir}")
                run_cell(config)
            if method == "sft":
                warm = warm_outputs(config.run_dir)
            cells.append(Cell(method, seed, config.run_dir))
    return cells
