"""Evaluation: hand-checked metrics, every benchmark format end to end with a random tiny model, resume after
Ctrl-C, the calculator ablation, the real GSM8K test file, and the `dpost eval` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cluster import eval_cmd
from tests.conftest import FIXTURES
from trainers.data.problems import load_problems
from trainers.engine.decoding import decode_all
from trainers.core.errors import CheckpointError, ConfigError, DataError
from trainers.evaluation import (EvalConfig, evaluate_file, evaluate_files, evaluate_problems, load_results,
                                 markdown_table, plan_runs, score_greedy, score_sampled, terminal_table)

FORMAT_FIXTURES = ["gsm8k.jsonl", "svamp.json", "multiarith.json", "addsub.json", "singleeq.json", "asdiv.xml"]


def sample(answer: float | None, gold: float, strict: float | None = None) -> dict:
    """A sample record as `to_records` makes it (only the fields the scorers read)."""
    return {"answer": answer, "strict_answer": strict, "gold": gold,
            "correct": strict is not None and abs(strict - gold) < 1e-9,
            "correct_flexible": answer is not None and abs(answer - gold) < 1e-9}


# ---------------------------------------------------------------------------------------------- metrics


def test_greedy_score_reports_strict_and_flexible_extraction_separately() -> None:
    records = [sample(9, 9, strict=9),       # `#### 9`: right both ways
               sample(9, 9, strict=None),    # no `####`, last number 9: only flexible
               sample(4, 9, strict=None),    # wrong
               sample(2, 2, strict=3)]       # `#### 3 ... 2`: strict wrong, flexible right
    assert score_greedy(records) == {"items": 4, "greedy_strict": 0.25, "greedy_flexible": 0.75}


def test_greedy_score_of_no_records_is_zero() -> None:
    assert score_greedy([]) == {"items": 0, "greedy_strict": 0.0, "greedy_flexible": 0.0}


def test_sampled_scores_are_zero_when_every_sample_is_wrong() -> None:
    scores = score_sampled({"a": [sample(1, 5), sample(None, 5), sample(1, 5)]}, [1, 3])
    assert scores == {"questions": 1, "pass@1": 0.0, "maj@1": 0.0, "pass@1_strict": 0.0,
                      "pass@3": 0.0, "maj@3": 0.0, "pass@3_strict": 0.0}


def test_sampled_scores_are_one_when_every_sample_is_right() -> None:
    scores = score_sampled({"a": [sample(5, 5, 5)] * 4, "b": [sample(-2.5, -2.5, -2.5)] * 4}, [1, 2, 4])
    assert all(scores[f"{m}@{k}"] == 1.0 for m in ("pass", "maj") for k in (1, 2, 4))
    assert scores["pass@4_strict"] == 1.0


def test_pass_at_k_is_unbiased_and_averaged_over_questions() -> None:
    groups = {"one-right": [sample(5, 5), sample(1, 5), sample(1, 5), sample(1, 5)],   # c=1 of n=4
              "two-right": [sample(1, 5), sample(5, 5), sample(1, 5), sample(5, 5)]}   # c=2 of n=4
    scores = score_sampled(groups, [1, 2, 4])
    assert scores["pass@1"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert scores["pass@2"] == pytest.approx((1 / 2 + 5 / 6) / 2)  # 1 - C(3,2)/C(4,2), 1 - C(2,2)/C(4,2)
    assert scores["pass@4"] == 1.0


def test_pass_at_k_strict_counts_only_well_formed_answers() -> None:
    groups = {"a": [sample(5, 5, strict=None), sample(5, 5, strict=5)]}
    scores = score_sampled(groups, [1, 2])
    assert scores["pass@1"] == 1.0 and scores["pass@1_strict"] == 0.5
    assert scores["pass@2"] == 1.0 and scores["pass@2_strict"] == 1.0


def test_majority_tie_goes_to_the_answer_seen_first() -> None:
    assert score_sampled({"a": [sample(7, 5), sample(5, 5)]}, [2])["maj@2"] == 0.0
    assert score_sampled({"a": [sample(5, 5), sample(7, 5)]}, [2])["maj@2"] == 1.0


def test_maj_at_k_votes_on_the_first_k_samples_only() -> None:
    answers = [sample(3, 5), sample(5, 5), sample(5, 5), sample(3, 5), sample(3, 5)]
    scores = score_sampled({"a": answers}, [1, 3, 5])
    assert (scores["maj@1"], scores["maj@3"], scores["maj@5"]) == (0.0, 1.0, 0.0)


def test_missing_answers_do_not_vote() -> None:
    scores = score_sampled({"a": [sample(None, 5), sample(None, 5), sample(5, 5)],
                            "b": [sample(None, 5)] * 3}, [3])
    assert scores["maj@3"] == 0.5 and scores["pass@3"] == 0.5


def test_eval_config_rejects_settings_that_cannot_work() -> None:
    for bad in [dict(n=-1), dict(n=2, ks=[3]), dict(ks=[1]), dict(n=2, ks=[]), dict(max_new_tokens=0),
                dict(batch_size=0), dict(limit=0), dict(greedy=False), dict(n=2, temperature=0.0)]:
        with pytest.raises(ConfigError):
            EvalConfig(data=["x"], **bad)
    assert EvalConfig(n=5).k_values == [1, 5] and EvalConfig(n=5, ks=[5, 2, 2]).k_values == [2, 5]
    assert EvalConfig().k_values == []


def test_tables_show_percentages_and_the_calculator_column() -> None:
    def result(name: str, calculator: bool, metrics: dict) -> dict:
        return {"name": name, "config": {"calculator": calculator}, "metrics": metrics,
                "data": {"evaluated": 10, "skipped": 2}}
    results = [result("gsm8k", True, {"items": 10, "greedy_strict": 0.1, "greedy_flexible": 0.25,
                                      "pass@1": 0.2, "maj@1": 0.2, "pass@5": 0.5, "maj@5": 0.3}),
               result("gsm8k (no calculator)", False, {"items": 7, "greedy_strict": 0.0, "greedy_flexible": 0.1,
                                                       "pass@1": 0.1, "maj@1": 0.1, "pass@5": 0.4, "maj@5": 0.2})]
    md = markdown_table(results).splitlines()
    assert md[0] == "| data | calculator | items | skipped | greedy strict | greedy flexible | pass@1 | pass@5 " \
                    "| maj@1 | maj@5 |"
    assert md[1] == "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert md[2] == "| gsm8k | on | 10 | 2 | 10.0 | 25.0 | 20.0 | 50.0 | 20.0 | 30.0 |"
    assert md[3] == "| gsm8k | off | 7/10 | 2 | 0.0 | 10.0 | 10.0 | 40.0 | 10.0 | 20.0 |"
    text = terminal_table(results).splitlines()
    assert text[0].split() == ["data", "calculator", "items", "skipped", "greedy", "strict", "greedy", "flexible",
                               "pass@1", "pass@5", "maj@1", "maj@5"]
    assert text[2].split() == ["gsm8k", "on", "10", "2", "10.0", "25.0", "20.0", "50.0", "20.0", "30.0"]


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def policy(base_checkpoint):
    from trainers.models.checkpoints import load_policy

    return load_policy(base_checkpoint)


class CountingDecoder:
    """decode_all on the tiny model, counting calls and rows; can raise KeyboardInterrupt on a given call."""

    def __init__(self, policy, interrupt_on_call: int | None = None) -> None:
        self.model, self.tokenizer = policy
        self.interrupt_on_call = interrupt_on_call
        self.calls = 0
        self.rows = 0

    def __call__(self, rows):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        self.rows += len(rows)
        return decode_all(self.model, self.tokenizer, rows, batch_size=64)


def read_eval(out: Path) -> dict:
    return json.loads((out / "eval.json").read_text())


@pytest.mark.parametrize("fixture", FORMAT_FIXTURES)
def test_every_benchmark_format_is_read_scored_and_written(fixture: str, policy, tmp_path: Path) -> None:
    path = FIXTURES / fixture
    loaded = load_problems(path)
    config = EvalConfig(n=2, max_new_tokens=6, batch_size=2)
    result = evaluate_file(path, CountingDecoder(policy), config, tmp_path, "tiny", progress=False)

    assert result["complete"] and result["data"]["evaluated"] == len(loaded)
    assert result["data"]["skipped"] == loaded.skipped == (1 if fixture == "asdiv.xml" else 0)
    assert result["metrics"]["items"] == result["metrics"]["questions"] == len(loaded)
    for key in ("greedy_strict", "greedy_flexible", "pass@1", "pass@2", "maj@1", "maj@2"):
        assert 0.0 <= result["metrics"][key] <= 1.0
    run = read_eval(tmp_path)["runs"][Path(fixture).stem]
    assert [it["question_id"] for it in run["items"]] == [p.id for p in loaded]
    for item, problem in zip(run["items"], loaded):
        assert item["gold"] == problem.answer and item["model_version"] == "tiny"
        assert {"prediction", "prediction_strict", "correct", "correct_flexible", "completion"} <= item.keys()
        assert len(item["sampled_answers"]) == len(item["samples"]) == 2
        assert item["votes"] <= 2 and item["majority_correct"] in (True, False)
    if fixture == "asdiv.xml":
        assert "nluds-0002" in run["data"]["skipped_reasons"][0]


def test_the_synthetic_test_split_evaluates_like_any_gsm8k_file(policy, synthetic_dir, tmp_path: Path) -> None:
    result = evaluate_file(synthetic_dir / "test.jsonl", CountingDecoder(policy),
                           EvalConfig(max_new_tokens=4, batch_size=16, limit=20), tmp_path, "tiny", progress=False)
    assert result["complete"] and result["metrics"]["items"] == 20 and result["data"]["loaded"] == 40


def test_interrupted_run_leaves_a_valid_partial_file_and_resumes_without_redecoding(policy, tmp_path: Path) -> None:
    path = FIXTURES / "svamp.json"  # 3 items
    config = EvalConfig(n=2, max_new_tokens=6, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate_file(path, CountingDecoder(policy, interrupt_on_call=2), config, tmp_path, "tiny", progress=False)
    partial = read_eval(tmp_path)["runs"]["svamp"]
    assert not partial["complete"] and len(partial["items"]) == 1 and partial["metrics"]["items"] == 1
    assert not list(tmp_path.glob(".*.tmp"))

    resumed = CountingDecoder(policy)
    result = evaluate_file(path, resumed, config, tmp_path, "tiny", progress=False)
    assert result["resumed"] == 1 and result["complete"]
    assert (resumed.calls, resumed.rows) == (2, 2 * (1 + 2))  # the two unfinished items, greedy + 2 samples
    items = read_eval(tmp_path)["runs"]["svamp"]["items"]
    assert items[0] == partial["items"][0]

    uninterrupted = evaluate_file(path, CountingDecoder(policy), config, tmp_path / "fresh", "tiny", progress=False)
    fresh_items = read_eval(tmp_path / "fresh")["runs"]["svamp"]["items"]
    assert [i["completion"] for i in items] == [i["completion"] for i in fresh_items]
    assert [i["sampled_answers"] for i in items] == [i["sampled_answers"] for i in fresh_items]
    assert result["metrics"] == uninterrupted["metrics"]

    again = CountingDecoder(policy)
    assert evaluate_file(path, again, config, tmp_path, "tiny", progress=False)["resumed"] == 3
    assert again.calls == 0


@pytest.mark.parametrize("change", [dict(max_new_tokens=7), dict(n=3), dict(calculator=False, ks=None),
                                    dict(temperature=1.0), dict(model="other-model"), dict(limit=1)])
def test_resuming_with_other_settings_is_refused(change: dict, policy, tmp_path: Path) -> None:
    path = FIXTURES / "svamp.json"
    base = dict(n=2, max_new_tokens=6, batch_size=4, model="tiny-model")
    evaluate_file(path, CountingDecoder(policy), EvalConfig(**base), tmp_path, "tiny", progress=False,
                  name="svamp")
    with pytest.raises(ConfigError, match="pick another --out"):
        evaluate_file(path, CountingDecoder(policy), EvalConfig(**{**base, **change}), tmp_path, "tiny",
                      progress=False, name="svamp")


def test_another_file_with_the_same_name_is_not_mixed_into_a_run(policy, tmp_path: Path) -> None:
    other = tmp_path / "data" / "svamp.json"
    other.parent.mkdir()
    other.write_text(json.dumps([{"Body": "Ann has 2 pens.", "Question": "How many?", "Answer": 2}]))
    config = EvalConfig(max_new_tokens=4)
    evaluate_file(FIXTURES / "svamp.json", CountingDecoder(policy), config, tmp_path / "out", "tiny", progress=False)
    with pytest.raises(ConfigError, match="data items differ"):
        plan_runs(EvalConfig(data=[other], max_new_tokens=4), tmp_path / "out")
    assert plan_runs(EvalConfig(data=[FIXTURES / "svamp.json"], max_new_tokens=4), tmp_path / "out")[0].done == 3


def test_calculator_ablation_writes_both_runs_and_a_markdown_table(policy, tmp_path: Path) -> None:
    config = EvalConfig(data=[FIXTURES / "gsm8k.jsonl", FIXTURES / "asdiv.xml"], max_new_tokens=6)
    results = evaluate_files(config, CountingDecoder(policy), tmp_path, "tiny", calculators=[True, False],
                       progress=False)
    assert [r["name"] for r in results] == ["gsm8k", "gsm8k (no calculator)", "asdiv", "asdiv (no calculator)"]
    assert [r["config"]["calculator"] for r in results] == [True, False, True, False]
    runs = read_eval(tmp_path)["runs"]
    assert all(it["calculator_overrides"] == [] for it in runs["asdiv (no calculator)"]["items"])
    assert runs["asdiv (no calculator)"]["config"]["calculator"] is False
    md = (tmp_path / "eval.md").read_text()
    assert "| gsm8k | on |" in md and "| gsm8k | off |" in md and "| asdiv | off | 3 | 1 |" in md
    assert "nluds-0002" in md  # the skipped item is shown
    assert [r["name"] for r in load_results(tmp_path)] == [r["name"] for r in results]


def test_the_eval_stage_path_and_dpost_eval_score_the_same_items(policy, tmp_path: Path) -> None:
    """The coordinator's eval stage calls evaluate_problems directly; `dpost eval` reaches it through
    evaluate_file and eval.json: the same problems give the same items and metrics, chunk by chunk."""
    path = FIXTURES / "gsm8k.jsonl"
    config = EvalConfig(n=2, max_new_tokens=6, batch_size=2)
    chunks: list[int] = []
    items, metrics = evaluate_problems(load_problems(path).problems, CountingDecoder(policy), config, "tiny",
                                       on_chunk=lambda chunk, seconds, tokens: chunks.append(len(chunk)))
    result = evaluate_file(path, CountingDecoder(policy), config, tmp_path, "tiny", progress=False)
    assert items == read_eval(tmp_path)["runs"]["gsm8k"]["items"] and metrics == result["metrics"]
    assert sum(chunks) == len(items) == len(load_problems(path)) and max(chunks) == 2


def test_decode_fn_may_return_the_model_version_of_every_row(policy, tmp_path: Path) -> None:
    """The Serve pool's decode_on_pool returns (rows, versions); each record keeps the version that made it."""
    decoder = CountingDecoder(policy)

    def pool_like(rows):
        decoded = decoder(rows)
        return decoded, ["sft-1" if i % 2 else "sft-2" for i in range(len(decoded))]

    result = evaluate_file(FIXTURES / "svamp.json", pool_like, EvalConfig(n=1, max_new_tokens=4), tmp_path,
                           "live:rollout", progress=False)
    assert result["model_versions"] == ["sft-1", "sft-2"]


def test_sampling_only_skips_the_greedy_decode(policy, tmp_path: Path) -> None:
    decoder = CountingDecoder(policy)
    result = evaluate_file(FIXTURES / "svamp.json", decoder, EvalConfig(greedy=False, n=2, max_new_tokens=4),
                           tmp_path, "tiny", progress=False)
    assert decoder.rows == 3 * 2 and "greedy_strict" not in result["metrics"] and "maj@2" in result["metrics"]
    assert "prediction" not in read_eval(tmp_path)["runs"]["svamp"]["items"][0]
    assert markdown_table([result]).splitlines()[0] == "| data | calculator | items | skipped | pass@1 | pass@2 " \
                                                       "| maj@1 | maj@2 |"


def test_decode_fn_returning_the_wrong_number_of_rows_is_a_bug(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="returned 0 rows"):
        evaluate_file(FIXTURES / "svamp.json", lambda rows: [], EvalConfig(), tmp_path, "x", progress=False)


def test_a_bad_data_file_fails_before_anything_is_decoded(tmp_path: Path) -> None:
    decoded = []
    config = EvalConfig(data=[FIXTURES / "svamp.json", FIXTURES / "missing_key.json"])
    with pytest.raises(DataError):
        evaluate_files(config, lambda rows: decoded.append(rows) or [], tmp_path, "x", progress=False)
    assert decoded == [] and not (tmp_path / "eval.json").exists()


def test_an_eval_json_from_something_else_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text('{"accuracy": 1}')
    with pytest.raises(ConfigError, match="not a dpost eval file"):
        plan_runs(EvalConfig(data=[FIXTURES / "svamp.json"]), tmp_path)


# ---------------------------------------------------------------------------------------------- the command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dpost eval")
    eval_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_eval_command_scores_a_checkpoint_on_a_fixture(base_checkpoint, tmp_path: Path, capsys) -> None:
    args = parse("--checkpoint", str(base_checkpoint), "--data", str(FIXTURES / "asdiv.xml"),
                 "--data", str(FIXTURES / "gsm8k.jsonl"), "--n", "3", "--k", "1", "3", "--max-new-tokens", "5",
                 "--ablate-calculator", "--out", str(tmp_path))
    assert eval_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert "greedy strict" in out and "maj@3" in out and "items/s" in out and "tokens/s" in out
    assert "asdiv: 1 item(s) skipped by the loader" in out
    runs = read_eval(tmp_path)["runs"]
    assert list(runs) == ["asdiv", "asdiv (no calculator)", "gsm8k", "gsm8k (no calculator)"]
    assert runs["gsm8k"]["config"]["model"] == str(base_checkpoint.resolve())
    assert runs["gsm8k"]["items"][0]["model_version"] == base_checkpoint.name
    assert "| asdiv | on | 3 | 1 |" in (tmp_path / "eval.md").read_text()

    assert eval_cmd.run(args) == 0  # everything done: nothing decoded again, the same table
    assert "resuming, 3 item(s)" in capsys.readouterr().err


def test_eval_command_turns_user_mistakes_into_typed_errors(base_checkpoint, tmp_path: Path) -> None:
    fixture = str(FIXTURES / "svamp.json")
    with pytest.raises(DataError, match="file not found"):
        eval_cmd.run(parse("--checkpoint", str(base_checkpoint), "--data", str(tmp_path / "nope.json")))
    with pytest.raises(CheckpointError):
        eval_cmd.run(parse("--checkpoint", str(tmp_path), "--data", fixture, "--out", str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="between 1 and n=2"):
        eval_cmd.run(parse("--checkpoint", str(base_checkpoint), "--data", fixture, "--n", "2", "--k", "5"))
    with pytest.raises(ConfigError, match="only used with --live"):
        eval_cmd.run(parse("--checkpoint", str(base_checkpoint), "--data", fixture, "--address", "x:1"))
    with pytest.raises(SystemExit):  # argparse: --checkpoint or --live is required, not both
        parse("--data", fixture)
    with pytest.raises(SystemExit):
        parse("--no-calculator", "--ablate-calculator", "--live", "--data", fixture)


def test_the_real_gsm8k_test_file_runs_end_to_end_with_a_tiny_model(base_checkpoint, gsm8k_test_file,
                                                                    tmp_path: Path, capsys) -> None:
    """The real file read, decoded and scored end to end. A slice of it is enough here: tests/test_data.py
    proves every one of its 1319 items loads."""
    args = parse("--checkpoint", str(base_checkpoint), "--data", str(gsm8k_test_file), "--limit", "64",
                 "--max-new-tokens", "8", "--batch-size", "64", "--out", str(tmp_path))
    assert eval_cmd.run(args) == 0
    out = capsys.readouterr().out
    print(out)  # the table and the throughput, for the record (pytest -s)
    run = read_eval(tmp_path)["runs"]["gsm8k/test"]
    assert run["complete"] and len(run["items"]) == 64 and run["data"]["skipped"] == 0
    ids = {it["question_id"] for it in run["items"]}
    assert len(ids) == 64 and {"test-1", "test-64"} <= ids  # the file's first 64 questions
    assert run["metrics"]["items"] == 64 and run["metrics"]["greedy_flexible"] <= 0.05
    assert run["throughput"]["items_per_s"] > 0 and run["throughput"]["tokens_per_s"] > 0
    assert "gsm8k/test: 64 items in" in out and "items/s" in out


@pytest.mark.ray
def test_live_eval_scores_a_file_on_the_running_rollout_pool(serve_port, sft_result, tmp_path):
    from cluster.cli import main
    from services.config import ServingConfig
    from services.pools import deploy_pool

    deploy_pool("rollout", ServingConfig(port=serve_port), "live-eval", str(sft_result.checkpoint))
    out = tmp_path / "live"
    rc = main(["eval", "--live", "--data", str(FIXTURES / "gsm8k.jsonl"), "--max-new-tokens", "16",
               "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "eval.json").read_text())
    run = next(iter(doc["runs"].values()))
    assert len(run["items"]) == len(load_problems(FIXTURES / "gsm8k.jsonl"))
