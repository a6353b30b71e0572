"""The one answer parser: numbers as GSM8K and models write them, gold answers, model answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core.answers import answers_match, extract_answer, extract_gold, format_answer, parse_number
from trainers.core.errors import DataError

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("72", 72.0),
        ("1,000", 1000.0),
        ("109,200,000", 109_200_000.0),
        ("$5", 5.0),
        ("$1,200.50", 1200.5),
        ("5.", 5.0),
        (".5", 0.5),
        ("0.50", 0.5),
        ("-3", -3.0),
        ("+3", 3.0),
        ("−3", -3.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("3/4", 0.75),
        ("50%", 50.0),
        ("  42  ", 42.0),
        ("9 (apples)", 9.0),
        ("18 dollars.", 18.0),
        ("12 hours,", 12.0),
    ],
)
def test_parse_number_normalises_number_strings(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text", ["", "   ", "abc", "about 5", "1,00", "1,0000", "1,2,3", "3/0", "1.5/3", "--5", "٣", "١٢", "1e999", "$"]
)
def test_parse_number_returns_none_for_what_is_not_one_number(text: str) -> None:
    assert parse_number(text) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**12, 10**12))
def test_parse_number_reads_integers_with_and_without_separators(n: int) -> None:
    assert parse_number(str(n)) == n
    assert parse_number(f"{n:,}") == n


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    for value in (parse_number(text), extract_answer(text), extract_answer(text, "strict")):
        assert value is None or isinstance(value, float)


def test_extract_gold_reads_a_gsm8k_answer() -> None:
    assert extract_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72.0
    assert extract_gold("... #### 1,200") == 1200.0
    assert extract_gold("... #### -3") == -3.0


@pytest.mark.parametrize("answer", ["no final answer", "#### ", "#### seventy", "####72 has no space"])
def test_extract_gold_raises_data_error_when_missing_or_unparsable(answer: str) -> None:
    with pytest.raises(DataError):
        extract_gold(answer)


@pytest.mark.parametrize("name", ["train.jsonl", "test.jsonl"])
def test_extract_gold_reads_every_gsm8k_item(name: str) -> None:
    path = GSM8K / name
    if not path.is_file():
        pytest.skip(f"GSM8K data not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    for lineno, line in enumerate(lines, start=1):
        answer = json.loads(line)["answer"]
        gold = extract_gold(answer)
        # SOURCE.md: every final answer is an integer, some with thousands separators.
        assert gold == int(answer.rsplit("#### ", 1)[1].strip().replace(",", "")), f"{name}:{lineno}"
        assert extract_answer(answer, "strict") == gold, f"{name}:{lineno}"


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("She earned <<0.2*50=10>>10.\n#### 10", 10.0, 10.0),
        ("#### $1,000.", 1000.0, 1000.0),
        ("####72", 72.0, 72.0),
        ("So the answer is 42.", None, 42.0),
        ("10 - 5 = 5", None, 5.0),
        ("10-5", None, 5.0),
        ("a loss of -7 dollars", None, -7.0),
        ("#### 72\n\nQuestion: Tom has 3 apples.\nAnswer: #### 3", 72.0, 72.0),
        ("#### seventy-two, or 72", None, 72.0),
        ("She makes 9 * 2 = <<9*2=", None, 2.0),
        ("She makes 18 dollars. Then <<18*4", None, 18.0),
        ("He ate 3/4 of it", None, 0.75),
        ("no numbers here", None, None),
        ("", None, None),
    ],
)
def test_extract_answer_strict_and_flexible(text: str, strict: float | None, flexible: float | None) -> None:
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text) == flexible


def test_extract_answer_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        extract_answer("#### 1", "loose")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pred", "gold", "match"),
    [
        (72.0, 72.0, True),
        (72.00001, 72.0, True),
        (72.01, 72.0, False),
        (0.00005, 0.0, True),
        (0.001, 0.0, False),
        (1_000_050.0, 1_000_000.0, True),  # relative above 1
        (1_000_200.0, 1_000_000.0, False),
        (-3.0, 3.0, False),
        (None, 72.0, False),
        (float("nan"), 72.0, False),
    ],
)
def test_answers_match_uses_absolute_then_relative_tolerance(pred: float | None, gold: float, match: bool) -> None:
    assert answers_match(pred, gold) is match


def test_format_answer_writes_like_the_calculator() -> None:
    assert format_answer(72.0) == "72"
    assert format_answer(2.5) == "2.5"
    assert format_answer(1 / 3) == "0.3333"
    assert format_answer(-4.0) == "-4"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-10**9, 10**9).map(float), st.floats(-1e6, 1e6, allow_nan=False)))
def test_format_answer_round_trips_through_parse_number(value: float) -> None:
    assert answers_match(parse_number(format_answer(value)), value, tol=1e-4)
