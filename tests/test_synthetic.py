"""The synthetic GSM8K-style task: deterministic, calculator-exact, compositional, with held-out templates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainers.core.answers import extract_gold
from trainers.core.calculator import annotations, calculate
from trainers.data.problems import load_problems
from trainers.core.errors import ConfigError
from trainers.data.synthetic import (
    LIMIT,
    SPLITS,
    TEMPLATES,
    SyntheticTaskConfig,
    _generate,
    build_synthetic_task,
    corpus_texts,
    generate_split,
    split_templates,
)

SMALL = dict(n_labeled=60, n_unlabeled=150, n_dev=40, n_test=60, n_ood=60)
# The "1" of "1/4 as many" is wording, not an operand; everything else that looks like a number is one.
_NUMBER = re.compile(r"(?<![0-9])(?!1/)[0-9]+(?![0-9])")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_synthetic_task(SyntheticTaskConfig(seed=3, **SMALL), tmp_path_factory.mktemp("task"))


def test_same_config_writes_byte_identical_files(task: dict[str, Path], tmp_path: Path) -> None:
    again = build_synthetic_task(SyntheticTaskConfig(seed=3, **SMALL), tmp_path)
    assert list(again) == list(SPLITS)
    for split in SPLITS:
        assert again[split].read_bytes() == task[split].read_bytes(), split


def test_another_seed_gives_other_problems() -> None:
    a = generate_split(SyntheticTaskConfig(seed=0), "test", 20)
    b = generate_split(SyntheticTaskConfig(seed=1), "test", 20)
    assert {p.question for p in a}.isdisjoint({p.question for p in b})


def test_evaluation_splits_do_not_depend_on_training_sizes(tmp_path: Path) -> None:
    small = build_synthetic_task(SyntheticTaskConfig(seed=3, **SMALL), tmp_path / "a")
    more = build_synthetic_task(SyntheticTaskConfig(seed=3, **{**SMALL, "n_unlabeled": 300}), tmp_path / "b")
    for split in ("test", "dev", "ood"):
        assert small[split].read_bytes() == more[split].read_bytes()


def test_there_are_at_least_twelve_templates_in_both_families() -> None:
    assert len(TEMPLATES) >= 12
    assert len({t.name for t in TEMPLATES}) == len(TEMPLATES)
    held_out = split_templates(SyntheticTaskConfig(), "ood")
    assert {t.family for t in held_out} == {t.family for t in TEMPLATES} == {"stock", "compare"}


def test_loaders_read_every_split_back_and_unlabeled_has_no_rationales(task: dict[str, Path]) -> None:
    sizes = {"labeled": 60, "unlabeled": 150, "dev": 40, "test": 60, "ood": 60}
    for split, path in task.items():
        problems = load_problems(path)
        assert len(problems) == sizes[split]
        assert problems[12].id == f"syn-{split}-00012"
        if split == "unlabeled":
            assert all(p.rationale is None for p in problems)
        else:
            assert all(p.rationale is not None and extract_gold(p.rationale) == p.answer for p in problems)


def test_unlabeled_answers_match_the_rationales_they_were_made_from(task: dict[str, Path]) -> None:
    config = SyntheticTaskConfig(seed=3, **SMALL)
    # Same generator stream as build_synthetic_task: the splits made before unlabeled are excluded.
    seen = {p.question for split in ("test", "dev", "ood", "labeled") for p in load_problems(task[split])}
    full = generate_split(config, "unlabeled", 150, exclude=seen)
    written = load_problems(task["unlabeled"])
    assert [(p.question, p.answer) for p in written] == [(p.question, p.answer) for p in full]


def test_no_question_appears_in_two_splits(task: dict[str, Path]) -> None:
    questions = [p.question for split in SPLITS for p in load_problems(task[split])]
    assert len(questions) == len(set(questions))


def test_every_annotation_is_exactly_what_the_calculator_writes(task: dict[str, Path]) -> None:
    for split in ("labeled", "dev", "test", "ood"):
        for problem in load_problems(task[split]):
            pairs = annotations(problem.rationale or "")
            assert pairs, problem.id
            for expr, result in pairs:
                assert calculate(expr) == result, (problem.id, expr)
                assert f"{expr} = <<{expr}={result}>>{result}" in problem.rationale


def test_gold_answer_is_the_last_calculator_result(task: dict[str, Path]) -> None:
    for split in ("labeled", "dev", "test", "ood"):
        for problem in load_problems(task[split]):
            assert float(annotations(problem.rationale or "")[-1][1]) == problem.answer


def test_step_counts_stay_within_the_configured_range() -> None:
    config = SyntheticTaskConfig(min_steps=2, max_steps=5)
    counts = {len(annotations(p.rationale or "")) for p in generate_split(config, "dev", 200)}
    assert counts == {2, 3, 4, 5}
    # One step per rationale line, then the `#### N` line.
    assert all(len((p.rationale or "").splitlines()) == len(annotations(p.rationale or "")) + 1
               for p in generate_split(config, "dev", 50))


def test_every_quantity_is_an_integer_below_the_limit() -> None:
    for problem in generate_split(SyntheticTaskConfig(max_steps=5), "test", 300):
        for _, result in annotations(problem.rationale or ""):
            assert result.isdigit() and 2 <= int(result) < LIMIT


def test_answer_uses_every_number_of_the_question_when_there_is_no_distractor() -> None:
    for problem in generate_split(SyntheticTaskConfig(distractor_prob=0.0, max_steps=5), "test", 200):
        exprs = " ".join(expr for expr, _ in annotations(problem.rationale or ""))
        stated = _NUMBER.findall(problem.question)
        assert len(stated) == len(annotations(problem.rationale or "")) + 1, problem.question
        assert set(stated) <= set(_NUMBER.findall(exprs)), problem.question


def test_a_distractor_adds_exactly_one_irrelevant_number() -> None:
    for problem in generate_split(SyntheticTaskConfig(distractor_prob=1.0), "test", 100):
        steps = len(annotations(problem.rationale or ""))
        assert len(_NUMBER.findall(problem.question)) == steps + 2, problem.question


def test_ood_split_uses_only_held_out_templates_and_larger_numbers() -> None:
    config = SyntheticTaskConfig()
    held_out = {t.name for t in split_templates(config, "ood")}
    assert held_out == {t.name for t in TEMPLATES[-config.ood_templates:]}
    ood = _generate(config, "ood", 200, ())
    assert {name for _, name in ood} == held_out
    for split in ("labeled", "unlabeled", "dev", "test"):
        assert held_out.isdisjoint(name for _, name in _generate(config, split, 200, ()))
    assert held_out.isdisjoint(name for _, name in _generate(config, "corpus", 200, ()))
    starts = [int(_NUMBER.findall(p.question)[0]) for p, _ in ood]
    assert max(starts) > config.max_number


def test_only_configured_operations_are_used() -> None:
    config = SyntheticTaskConfig(operations=["add", "sub"], max_steps=5)
    assert config.operations == ("add", "sub")
    for problem in generate_split(config, "dev", 100):
        assert all(set(expr) <= set("0123456789+-") for expr, _ in annotations(problem.rationale or ""))


def test_division_and_percent_always_come_out_whole() -> None:
    config = SyntheticTaskConfig(operations=("div", "percent"), min_steps=2, max_steps=3, max_number=100)
    problems = generate_split(config, "dev", 50)
    assert all("/" in expr for p in problems for expr, _ in annotations(p.rationale or ""))


def test_corpus_texts_are_deterministic_question_and_rationale_pairs() -> None:
    config = SyntheticTaskConfig()
    texts = corpus_texts(config, 50)
    assert texts == corpus_texts(config, 50) and len(texts) == 50
    assert all("?\n" in t and "\n#### " in t for t in texts)


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_steps": 0},
        {"max_steps": 6},
        {"min_steps": 4, "max_steps": 3},
        {"max_number": 2},
        {"distractor_prob": 1.5},
        {"operations": ()},
        {"operations": ("add", "pow")},
        {"operations": ("add", "add")},
        {"ood_templates": 0},
        {"ood_templates": len(TEMPLATES)},
        {"n_test": -1},
        {"seed": "zero"},
    ],
)
def test_bad_config_values_raise_config_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SyntheticTaskConfig(**overrides)  # type: ignore[arg-type]


def test_no_ood_split_needs_no_held_out_templates() -> None:
    config = SyntheticTaskConfig(n_ood=0, ood_templates=0)
    assert split_templates(config, "test") == TEMPLATES
    assert generate_split(config, "ood", 0) == []
    with pytest.raises(ConfigError, match="no templates"):
        generate_split(config, "ood", 1)


def test_impossible_chains_raise_config_error_instead_of_looping() -> None:
    config = SyntheticTaskConfig(operations=("div",), min_steps=5, max_steps=5, max_number=5)
    with pytest.raises(ConfigError, match="distinct problems"):
        generate_split(config, "test", 3)


def test_unknown_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown synthetic split"):
        generate_split(SyntheticTaskConfig(), "train", 3)
