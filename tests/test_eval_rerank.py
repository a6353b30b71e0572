"""`dpost eval --rerank`: a verifier scores every sampled solution and the table reports pass@1, maj@n, the
three re-ranking strategies and pass@n side by side; answers are read and compared by the data's own checker
(`#### N` or `\\boxed{}` through math-verify), and the calculator follows the data unless the user chooses.

All in-process with the untrained tiny model (no Ray): as a verifier it is only plumbing, so these tests prove
the wiring and the consistency of the numbers, not that re-ranking helps (tests/test_verifier.py trains one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cluster.cli import main
from tests.conftest import FIXTURES
from trainers.core.answers import answer_checker, format_answer
from trainers.core.prompting import format_prompt
from trainers.core.rerank import rerank_correct
from trainers.data.problems import load_problems
from trainers.engine.decoding import Decoded, decode_all
from trainers.engine.scoring import score_candidates
from trainers.evaluation import EvalConfig, evaluate_file, evaluate_problems

RERANKED = ("rr_topk", "weighted", "weighted_topk")


@pytest.fixture(scope="module")
def policy(base_checkpoint):
    from trainers.models.checkpoints import load_policy

    return load_policy(base_checkpoint)


def read_run(out: Path) -> dict:
    return next(iter(json.loads((out / "eval.json").read_text())["runs"].values()))


def scripted(problems, write):
    """A decode_fn that answers each row with `write(problem, sample index)`; rows map back to problems by
    prompt, and index 0 of each problem is its first row (the greedy one when there is one)."""
    by_prompt = {format_prompt(p.question): p for p in problems}

    def decode(rows):
        seen: dict[str, int] = {}
        out = []
        for row in rows:
            index = seen[row.prompt] = seen.get(row.prompt, -1) + 1
            text = write(by_prompt[row.prompt], index)
            out.append(Decoded(text=text, num_tokens=len(text.split()), finish_reason="stop"))
        return out

    return decode


def test_dpost_eval_rerank_reports_every_strategy_consistently_with_per_item_scores(base_checkpoint, policy,
                                                                                   tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(base_checkpoint), "--data", str(FIXTURES / "gsm8k.jsonl"),
               "--n", "4", "--max-new-tokens", "12", "--rerank", str(base_checkpoint), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    header = printed.splitlines()[0].split()
    assert header[-7:] == ["pass@1", "pass@4", "maj@1", "maj@4", "rr_topk@4", "weighted@4", "weighted_topk@4"]
    assert "re-ranked 4 samples per item with verifier" in printed and "keep the 2 largest" in printed

    run = read_run(out)
    metrics, items = run["metrics"], run["items"]
    assert run["config"]["verifier"] == str(base_checkpoint.resolve()) and run["config"]["rerank_top_k"] == 2
    assert metrics["rerank_top_k"] == 2  # min(8, n // 2)
    for key in ("greedy_strict", "greedy_flexible", "pass@4", "maj@4", "rr_topk@4", "weighted@4",
                "weighted_topk@4"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("maj@4", "rr_topk@4", "weighted@4", "weighted_topk@4"):
        assert metrics[key] <= metrics["pass@4"], key

    model, tokenizer = policy
    checker = answer_checker("gsm8k")
    for item in items:
        scores = item["verifier_scores"]
        assert len(scores) == len(item["samples"]) == 4 and all(0.0 < s < 1.0 for s in scores)
        # the stored scores are the verifier's own, and re-aggregate to the stored verdicts
        expected = score_candidates(model, tokenizer, [item["question"]] * 4,
                                    [s["completion"] for s in item["samples"]])
        assert scores == pytest.approx(expected, abs=1e-5)
        again = rerank_correct(item["sampled_answers"], scores, item["gold"], 2, checker)
        assert {s: again[s] for s in RERANKED} == item["reranked_correct"]
        assert again["maj"] == item["majority_correct"]
        if any(item["reranked_correct"].values()) or item["majority_correct"]:
            assert any(s["correct_flexible"] for s in item["samples"])  # a chosen answer is a sampled one
    for strategy in RERANKED:
        assert metrics[f"{strategy}@4"] == sum(it["reranked_correct"][strategy] for it in items) / len(items)


def test_rerank_strategies_differ_as_the_paper_defines_them_and_agree_with_maj_on_equal_scores(tmp_path) -> None:
    """Three samples per question: the gold answer twice, a wrong `#### 12345` once. Equal scores leave
    every strategy on the majority; a verifier that prefers the wrong answer moves `weighted` (summed score)
    but not the top-1 strategies (K = min(8, 3 // 2) = 1 keeps only the largest cluster)."""
    problems = load_problems(FIXTURES / "gsm8k.jsonl").problems
    decode = scripted(problems, lambda p, i: "We work it out. #### 12345" if i == 2
                      else f"It is {format_answer(p.answer)}.\n#### {format_answer(p.answer)}")
    config = EvalConfig(greedy=False, n=3, verifier="scripted", max_new_tokens=8)

    items, metrics = evaluate_problems(problems, decode, config, "gold", score_fn=lambda q, c: [0.5] * len(c))
    assert metrics["pass@3"] == metrics["maj@3"] == 1.0 and metrics["pass@1"] == pytest.approx(2 / 3)
    assert all(metrics[f"{s}@3"] == metrics["maj@3"] for s in RERANKED)
    assert all(it["reranked"][s] == it["majority"] for it in items for s in RERANKED)

    def prefers_wrong(questions, completions):
        return [1.0 if "12345" in c else 0.25 for c in completions]

    items, metrics = evaluate_problems(problems, decode, config, "gold", score_fn=prefers_wrong)
    assert metrics["rerank_top_k"] == 1
    assert (metrics["rr_topk@3"], metrics["weighted_topk@3"], metrics["weighted@3"]) == (1.0, 1.0, 0.0)
    assert all(it["reranked"]["weighted"] == 12345.0 for it in items)

    top3 = EvalConfig(greedy=False, n=3, verifier="scripted", rerank_top_k=3, max_new_tokens=8)
    _, metrics = evaluate_problems(problems, decode, top3, "gold", score_fn=prefers_wrong)
    assert (metrics["rr_topk@3"], metrics["weighted_topk@3"], metrics["weighted@3"]) == (0.0, 0.0, 0.0)


def test_math_format_answers_are_checked_as_boxed_latex_with_the_calculator_off(tmp_path: Path) -> None:
    """The MATH fixture's gold solutions score 100% through the boxed checker (strict and flexible, sampled
    and voted); an equivalent answer in another form (`0.5` for `\\frac{1}{2}`) counts, a wrong one does not;
    the calculator follows the data (off: MATH solutions carry no `<<expr=result>>`)."""
    path = FIXTURES / "math_small.jsonl"
    loaded = load_problems(path)
    other_form = {"\\frac{1}{2}": "0.5", "(2, 1)": "(2,1)"}

    def write(problem, index):
        if index == 1:
            return f"So the answer is $\\boxed{{{other_form.get(problem.answer, problem.answer)}}}$."
        if index == 3:
            return "I guess $\\boxed{12345}$."
        return problem.rationale

    config = EvalConfig(n=3, max_new_tokens=8)  # rows per item: greedy (0), samples 1, 2, 3
    result = evaluate_file(path, scripted(loaded.problems, write), config, tmp_path, "gold", progress=False)
    metrics = result["metrics"]
    assert result["name"] == "math_small (no calculator)" and result["config"]["calculator"] is False
    assert result["data"]["answer_format"] == "boxed" and metrics["items"] == len(loaded) == 5
    assert metrics["greedy_strict"] == metrics["greedy_flexible"] == 1.0
    assert metrics["pass@3"] == metrics["maj@3"] == 1.0 and metrics["pass@1"] == pytest.approx(2 / 3)
    items = read_run(tmp_path)["items"]
    assert [it["gold"] for it in items] == ["\\frac{1}{2}", "x = 3", "4", "(2, 1)", "90^\\circ"]
    assert items[0]["samples"][0]["answer"] == "0.5" and items[0]["samples"][0]["correct"]
    assert all(it["votes"] == 2 and it["majority_correct"] for it in items)
    assert not any(it["samples"][2]["correct_flexible"] for it in items)


def test_the_calculator_follows_the_data_unless_the_user_chooses(base_checkpoint, tmp_path: Path) -> None:
    gsm8k, math = str(FIXTURES / "gsm8k.jsonl"), str(FIXTURES / "math_small.jsonl")
    base = ["eval", "--checkpoint", str(base_checkpoint), "--max-new-tokens", "2", "--limit", "1"]
    assert main([*base, "--data", gsm8k, "--data", math, "--out", str(tmp_path / "auto")]) == 0
    runs = json.loads((tmp_path / "auto" / "eval.json").read_text())["runs"]
    assert {name: run["config"]["calculator"] for name, run in runs.items()} == {
        "gsm8k": True, "math_small (no calculator)": False}
    assert main([*base, "--data", gsm8k, "--no-calculator", "--out", str(tmp_path / "off")]) == 0
    assert read_run(tmp_path / "off")["config"]["calculator"] is False


def test_bad_rerank_requests_fail_in_one_line_before_anything_decodes(base_checkpoint, tmp_path: Path,
                                                                     capsys) -> None:
    not_causal = tmp_path / "t5"
    shutil.copytree(base_checkpoint, not_causal)
    (not_causal / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1}))
    base = ["eval", "--checkpoint", str(base_checkpoint), "--data", str(FIXTURES / "gsm8k.jsonl"),
            "--max-new-tokens", "2"]
    cases = {
        "empty": ([*base, "--n", "2", "--rerank", str(tmp_path / "empty")], "--rerank: checkpoint"),
        "not_causal": ([*base, "--n", "2", "--rerank", str(not_causal)], "expected a causal LM"),
        "no_samples": ([*base, "--rerank", str(base_checkpoint)], "--rerank needs --n 2 or more"),
        "one_sample": ([*base, "--n", "1", "--rerank", str(base_checkpoint)], "--rerank needs --n 2 or more"),
        "k_too_big": ([*base, "--n", "2", "--rerank", str(base_checkpoint), "--rerank-top-k", "3"],
                      "rerank_top_k must be between 1 and n=2"),
        "k_alone": ([*base, "--n", "2", "--rerank-top-k", "1"], "--rerank-top-k is only used with --rerank"),
    }
    (tmp_path / "empty").mkdir()
    for name, (argv, message) in cases.items():
        out = tmp_path / f"out-{name}"
        assert main([*argv, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("dpost: error: ") and message in err and err.count("\n") == 1, (name, err)
        assert not out.exists(), name
