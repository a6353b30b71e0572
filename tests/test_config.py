"""The run config is declared: its JSON Schema is valid and accepts the repository's configs, mistakes are one
line naming the key, `dpost config` prints the schema and resolved configs, and `training.sft`/`training.dpo`
reach TRL's own configs unchanged. Pure: no Ray."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from trl import DPOConfig, SFTConfig

from cluster.cli import main
from cluster.config import config_schema, load_config, parse_config, show_config
from trainers.core.errors import ConfigError
from trainers.training.config import DPOStageConfig, SFTStageConfig

ROOT = Path(__file__).resolve().parents[1]
REPO_CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
MINIMAL = {"data": {"synthetic": {}}}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, where="run.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_schema_is_valid_json_schema():
    schema = json.loads(json.dumps(config_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"model", "data", "sampling", "training", "evaluation", "serving",
                                         "storage", "rft"}


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: p.name)
def test_repository_configs_match_the_schema_and_parse(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), config_schema())
    config = load_config(path)
    assert parse_config(config.to_dict()) == config  # the manifest's copy gives the same config back


def test_schema_refuses_a_typo_and_an_out_of_range_value():
    schema = config_schema()
    with pytest.raises(jsonschema.ValidationError, match="learnig_rate"):
        jsonschema.validate({**MINIMAL, "training": {"sft": {"learnig_rate": 0.1}}}, schema)
    with pytest.raises(jsonschema.ValidationError, match="5 is greater than the maximum of 2"):
        jsonschema.validate({**MINIMAL, "sampling": {"temperature": 5}}, schema)


@pytest.mark.parametrize("raw, message", [
    ({"sampling": {"temperature": 5}},
     "run.yaml: sampling.temperature: Input should be less than or equal to 2 (got 5)"),
    ({"training": {"sft": {"learnig_rate": 0.1}}},
     "run.yaml: training.sft: unknown key 'learnig_rate' (did you mean 'learning_rate'?)"),
    ({"samplig": {}}, "run.yaml: unknown key 'samplig' (did you mean 'sampling'?)"),
    ({"serving": {"solver": {"max_batch_size": 0}}}, "serving.solver.max_batch_size: Input should be greater"),
    ({"serving": {"rollout": {"autoscaling": {"max_replica": 2}}}}, "serving.rollout.autoscaling: unknown key"),
    ({"data": {"synthetic": {"n_dvv": 3}}}, "data.synthetic: unknown key 'n_dvv' (did you mean 'n_dev'?)"),
    ({"training": {"zero_stage": 4}}, "training.zero_stage: Input should be 0, 1, 2 or 3 (got 4)"),
    ({"training": {"dpo": {"beta": 0}}}, "training.dpo.beta: Input should be greater than 0"),
    ({"training": {"sft": {"max_steps": -1, "num_train_epochs": 0}}}, "sft: set max_steps > 0 or num_train_epochs"),
    ({"mode": "dpo"}, "mode: Input should be 'dpo-st', 'st' or 'rft'"),
    ({"sampling": {"dedup": "exact"}}, "sampling.dedup: Input should be"),
    ({"name": "a/b"}, "name: must be a plain folder name"),
    ({"model": {"preset": None}}, "model: set preset or path"),
])
def test_a_mistake_is_one_line_naming_the_key(raw, message):
    assert message in _error({**MINIMAL, **raw})


def test_data_is_synthetic_or_four_existing_files(tmp_path):
    assert "missing ['unlabeled', 'dev', 'test']" in _error({"data": {"labeled": "a.jsonl"}})
    files = {key: str(tmp_path / f"{key}.jsonl") for key in ("labeled", "unlabeled", "dev", "test")}
    assert "data: labeled: file not found" in _error({"data": files})
    # `dpost submit`: the files may exist only on the cluster
    assert parse_config({"data": files}, check_files=False).data.dev == files["dev"]


def test_warmup_must_be_an_existing_folder_and_is_made_absolute(tmp_path, monkeypatch):
    assert "model: warmup: checkpoint folder not found: nope" in _error({**MINIMAL, "model": {"warmup": "nope"}})
    assert parse_config({**MINIMAL, "model": {"warmup": "nope"}}, check_files=False).model.warmup == "nope"
    (tmp_path / "sft-0").mkdir()
    monkeypatch.chdir(tmp_path)
    config = parse_config({**MINIMAL, "model": {"warmup": "sft-0"}})
    assert config.model.warmup == str(tmp_path / "sft-0")


def test_a_model_path_replaces_the_preset():
    config = parse_config({**MINIMAL, "model": {"path": "/models/x"}}, check_files=False)
    assert config.model.preset is None and config.model.path == "/models/x"


def test_training_sections_accept_any_trl_field_and_fill_dposts_defaults():
    config = parse_config({**MINIMAL, "seed": 7, "training": {
        "sft": {"optim": "adamw_torch", "neftune_noise_alpha": 5.0, "max_steps": 9},
        "dpo": {"loss_type": ["sigmoid"], "label_smoothing": 0.1}}})
    sft, dpo = config.training.sft, config.training.dpo
    assert (sft.optim, sft.neftune_noise_alpha, sft.max_steps) == ("adamw_torch", 5.0, 9)
    assert (sft.learning_rate, sft.per_device_train_batch_size, sft.seed) == (1e-3, 16, 7)  # dpost's, the run's
    assert (dpo.loss_type, dpo.label_smoothing, dpo.beta, dpo.max_steps) == (["sigmoid"], 0.1, 0.1, 150)


def test_paper_preset_sets_the_papers_hyper_parameters_under_explicit_ones():
    config = parse_config({**MINIMAL, "training": {"preset": "paper-llama", "sft": {"num_train_epochs": 3}}})
    assert (config.training.sft.learning_rate, config.training.sft.num_train_epochs) == (2e-5, 3)
    assert (config.training.dpo.learning_rate, config.training.dpo.max_steps) == (3e-7, 100)
    assert config.training.dpo.loss_type == ["sigmoid"]


def test_the_synthetic_task_and_training_follow_the_runs_seed_unless_set():
    config = parse_config({"seed": 3, "data": {"synthetic": {"n_dev": 10}},
                           "training": {"sft": None, "dpo": {"seed": 1}}})
    assert (config.data.synthetic.seed, config.training.sft.seed, config.training.dpo.seed) == (3, 3, 1)


@pytest.mark.parametrize("kind, trl_class", [("sft", SFTConfig), ("dpo", DPOConfig)])
def test_stage_config_builds_trls_own_config_from_the_merged_fields(kind, trl_class, tmp_path):
    config = parse_config({**MINIMAL, "training": {"zero_stage": 0, kind: {"max_steps": 12, "weight_decay": 0.2}}})
    stage = config.stage_config(kind, model_path="m", data_path="d.jsonl", output_dir=str(tmp_path / "out"))
    args = trl_class(**stage.trl_args(str(tmp_path / "scratch")))
    assert (args.max_steps, args.weight_decay, args.output_dir) == (12, 0.2, str(tmp_path / "scratch"))
    assert args.use_cpu and args.deepspeed is None and args.report_to in ("none", [])
    if kind == "dpo":
        assert args.loss_type == ["sigmoid", "sft"] and args.beta == 0.1 and args.precompute_ref_log_probs
    else:
        assert args.completion_only_loss and args.train_sampling_strategy == "group_by_length"


def test_a_stage_config_changed_after_construction_is_checked_again(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    config = SFTStageConfig(model_path="m", data_path=str(data), output_dir=str(tmp_path / "out"))
    assert config.checked().trl_args("x")["learning_rate"] == 1e-3
    config.num_workers = 0
    with pytest.raises(ConfigError, match=r"^num_workers: Input should be greater than or equal to 1 \(got 0\)$"):
        config.checked()
    with pytest.raises(ValueError, match="learnig_rate"):
        DPOStageConfig(learnig_rate=1.0)


def test_show_fills_every_default():
    shown = yaml.safe_load(show_config(parse_config(MINIMAL)))
    assert shown["sampling"]["temperature"] == 0.7 and shown["serving"]["solver"]["max_batch_size"] == 32
    assert shown["training"]["sft"]["learning_rate"] == 1e-3 and shown["training"]["dpo"]["beta"] == 0.1
    assert shown["data"]["synthetic"]["n_labeled"] == 400 and shown["model"]["preset"] == "small"
    assert parse_config(shown) == parse_config(MINIMAL)


def test_dpost_config_prints_schema_and_resolved_config(capsys, tmp_path):
    assert main(["config", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "dpost run config"
    assert main(["config", "--show", str(ROOT / "configs" / "tiny.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "tiny" and shown["evaluation"]["evaluate_test"] is True


def test_dpost_config_mistakes_exit_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {synthetic: {}}\nsampling: {temperature: 5}\n")
    assert main(["config", "--show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sampling.temperature" in err
    assert main(["config", "--show", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["config"])
    assert info.value.code == 2
    capsys.readouterr()
    matrix = ROOT / "configs" / "matrix" / "paper.yaml"
    assert main(["config", "--show", str(matrix)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run it with `dpost experiment {matrix}`" in err


def test_every_commands_help_prints(capsys):
    """argparse formats help text with %: a bare '%' in any help string crashes `--help` with a stack trace."""
    from cluster.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for argv in [["--help"], *[[name, "--help"] for name in commands]]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0, argv
        assert "usage: dpost" in capsys.readouterr().out


@pytest.mark.parametrize("replicas", ["0", "-1", "two"])
def test_scale_refuses_a_bad_replica_count_before_connecting_to_a_cluster(capsys, monkeypatch, replicas):
    import cluster.cli

    def no_cluster(address):
        raise AssertionError("connected to a cluster before checking the arguments")

    monkeypatch.setattr(cluster.cli, "connect", no_cluster)
    with pytest.raises(SystemExit) as info:
        main(["scale", "rollout", replicas])
    assert info.value.code == 2
    assert f"must be a positive integer, got '{replicas}'" in capsys.readouterr().err
