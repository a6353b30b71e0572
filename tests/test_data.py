"""Loading every problem format into one `Problem` type, and writing GSM8K jsonl back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.data import problems as data
from trainers.data.problems import Problem, ProblemSet, load_problems, write_gsm8k_jsonl
from trainers.core.errors import ConfigError, DataError
from tests.conftest import FIXTURES


def test_gsm8k_reads_rationales_thousands_separators_and_negatives() -> None:
    problems = load_problems(FIXTURES / "gsm8k.jsonl")
    assert [p.answer for p in problems] == [9.0, 1200.0, -5.0, 7.0]
    first = problems[0]
    assert first.id == "gsm8k-1"  # no "id" key: file stem and line number
    assert first.rationale is not None and first.rationale.endswith("#### 9")
    assert problems[2].id == "neg-1"
    assert problems.skipped == 0 and problems.source.endswith("gsm8k.jsonl")


def test_gsm8k_line_with_only_a_final_answer_has_no_rationale() -> None:
    unlabeled = load_problems(FIXTURES / "gsm8k.jsonl", fmt="gsm8k")[3]
    assert unlabeled == Problem("unlabeled-1", unlabeled.question, 7.0, None)


def test_problem_set_behaves_like_a_sequence() -> None:
    problems = load_problems(FIXTURES / "gsm8k.jsonl")
    assert isinstance(problems, ProblemSet)
    assert len(problems) == 4
    assert list(problems)[1] is problems[1]
    assert problems[-1].id == "unlabeled-1"


def test_svamp_question_is_body_then_question() -> None:
    problems = load_problems(FIXTURES / "svamp.json")
    assert [p.id for p in problems] == ["chal-1", "chal-2", "svamp-3"]
    assert problems[0].question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert [p.answer for p in problems] == [51.0, 2.5, 3.0]
    assert all(p.rationale is None for p in problems)


@pytest.mark.parametrize("name, fmt", [("multiarith", "multiarith"), ("addsub", "addsub"), ("singleeq", "SingleEq")])
def test_multiarith_family_reads_under_its_names_and_by_detection(name: str, fmt: str) -> None:
    explicit = load_problems(FIXTURES / f"{name}.json", fmt=fmt)
    assert explicit.problems == load_problems(FIXTURES / f"{name}.json").problems
    assert len(explicit) == 2
    assert all(p.question == p.question.strip() and p.rationale is None for p in explicit)


def test_multiarith_takes_first_solution_even_when_it_is_a_string() -> None:
    problems = load_problems(FIXTURES / "multiarith.json")
    assert [(p.id, p.answer) for p in problems] == [("7", 39.0), ("8", 50.0)]


def test_asdiv_keeps_numeric_answers_and_counts_the_skipped_ones() -> None:
    problems = load_problems(FIXTURES / "asdiv.xml")
    assert [(p.id, p.answer) for p in problems] == [("nluds-0001", 9.0), ("nluds-0003", 1500.0), ("nluds-0004", 0.5)]
    assert problems[0].question == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    assert problems.skipped == 1
    assert "nluds-0002" in problems.skipped_reasons[0] and "2:3" in problems.skipped_reasons[0]


@pytest.mark.parametrize("answer, kept", [("yes", False), ("7;2", False), ("3 or 4", False), ("-4 (degrees)", True)])
def test_asdiv_answer_must_be_one_number_with_an_optional_unit(tmp_path: Path, answer: str, kept: bool) -> None:
    xml = (
        "<Machine-Reading-Corpus-File><ProblemSet>"
        "<Problem ID='a'><Body>B.</Body><Question>Q?</Question><Answer>5</Answer></Problem>"
        f"<Problem ID='b'><Body>B.</Body><Question>Q?</Question><Answer>{answer}</Answer></Problem>"
        "</ProblemSet></Machine-Reading-Corpus-File>"
    )
    path = tmp_path / "asdiv.xml"
    path.write_text(xml)
    problems = load_problems(path)
    assert (len(problems), problems.skipped) == ((2, 0) if kept else (1, 1))


@pytest.mark.parametrize(
    "name, expected",
    [("gsm8k.jsonl", 4), ("svamp.json", 3), ("multiarith.json", 2), ("asdiv.xml", 3)],
)
def test_auto_detection_gives_the_same_result_as_the_named_format(name: str, expected: int) -> None:
    fmt = {"gsm8k.jsonl": "gsm8k", "svamp.json": "svamp", "multiarith.json": "multiarith", "asdiv.xml": "asdiv"}
    assert load_problems(FIXTURES / name).problems == load_problems(FIXTURES / name, fmt[name]).problems
    assert len(load_problems(FIXTURES / name)) == expected


def test_detection_reads_content_when_the_extension_says_nothing(tmp_path: Path) -> None:
    for name, fmt in [("gsm8k.jsonl", "gsm8k"), ("svamp.json", "svamp"), ("asdiv.xml", "asdiv")]:
        copy = tmp_path / f"{fmt}.txt"
        copy.write_bytes((FIXTURES / name).read_bytes())
        assert [p.answer for p in load_problems(copy)] == [p.answer for p in load_problems(FIXTURES / name)]


def test_gsm8k_records_in_a_json_list_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"question": "Q?", "answer": "A <<1+1=2>>2\n#### 2"}]))
    assert load_problems(path)[0] == Problem("list-1", "Q?", 2.0, "A <<1+1=2>>2\n#### 2")


def test_invalid_json_line_error_names_file_and_line() -> None:
    with pytest.raises(DataError, match=r"bad_json\.jsonl line 2: not valid JSON \(Expecting ','"):
        load_problems(FIXTURES / "bad_json.jsonl")


def test_missing_key_error_names_item_and_key() -> None:
    with pytest.raises(DataError, match=r"missing_key\.json item 2: missing key 'Answer'"):
        load_problems(FIXTURES / "missing_key.json")


def test_answer_without_final_line_is_rejected_with_its_line() -> None:
    with pytest.raises(DataError, match=r"no_final\.jsonl line 2: answer has no '#### ' final line"):
        load_problems(FIXTURES / "no_final.jsonl")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"question": "Q?", "answer": "#### many"}\n', r"line 1: final answer is not a number"),
        ("bad.jsonl", '{"question": "", "answer": "#### 1"}\n', r"line 1: 'question' is empty"),
        ("bad.jsonl", '["question"]\n', r"line 1: expected a JSON object, got list"),
        ("bad.json", '[{"sQuestion": "Q?", "lSolutions": []}]', r"item 1: 'lSolutions' must be a non-empty list"),
        ("bad.json", '[{"Body": "B", "Question": "Q?", "Answer": true}]', r"item 1: 'Answer' is not a number"),
        ("bad.json", '"just a string"', r"cannot tell the format"),
        ("bad.json", "[]", r"problem list is empty"),
        ("bad.json", '[{"foo": 1}]', r"item 1: cannot tell the format"),
        ("bad.xml", "<a><Problem ID='x'><Body>B</Body></Problem></a>", r"item 1: missing or empty <Question>"),
        ("bad.xml", "<a><Problem>", r"line 1: not valid XML"),
        ("bad.xml", "<a></a>", r"no <Problem> elements"),
        ("dup.jsonl", '{"id": "a", "question": "Q?", "answer": "#### 1"}\n' * 2, r"duplicate problem id 'a'"),
        ("empty.jsonl", "\n  \n", r"file is empty"),
    ],
)
def test_malformed_files_raise_data_error_naming_the_problem(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_problems(path)
    assert name in str(info.value)


def test_json_formats_need_a_list(tmp_path: Path) -> None:
    path = tmp_path / "svamp.json"
    path.write_text('{"Body": "B", "Question": "Q?", "Answer": 1}')
    with pytest.raises(DataError, match=r"svamp\.json: expected a JSON list of problems, got dict"):
        load_problems(path, fmt="svamp")


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_problems(tmp_path / "nope.jsonl")


def test_oversized_file_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 100)
    path = tmp_path / "big.xml"
    path.write_text("<a>" + "x" * 200 + "</a>")
    with pytest.raises(DataError, match="over the"):
        load_problems(path)


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown data format 'csv'"):
        load_problems(FIXTURES / "gsm8k.jsonl", fmt="csv")


def test_written_gsm8k_round_trips_with_and_without_rationales(tmp_path: Path) -> None:
    problems = [
        Problem("a", "Q1?", 9.0, "x <<4+5=9>>9\n#### 9"),
        Problem("b", "Q2 \u2019quoted\u2019?", -2.5, None),
        Problem("c", "Q3?", 1200.0, None),
    ]
    path = write_gsm8k_jsonl(problems, tmp_path / "out" / "set.jsonl")
    assert load_problems(path).problems == problems
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["answer"] for line in lines[1:]] == ["#### -2.5", "#### 1200"]
    assert list(lines[0]) == ["id", "question", "answer"]


def test_write_replaces_the_file_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text("old content\n")

    def exploding() -> object:
        yield Problem("a", "Q?", 1.0)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_gsm8k_jsonl(exploding(), path)
    assert path.read_text() == "old content\n"  # a failed write never leaves a half file behind
    write_gsm8k_jsonl([Problem("a", "Q?", 1.0)], path)
    assert [p.name for p in tmp_path.iterdir()] == ["set.jsonl"]
    assert load_problems(path)[0].answer == 1.0


def test_real_gsm8k_test_set_loads_all_1319_items(gsm8k_test_file: Path) -> None:
    problems = load_problems(gsm8k_test_file)
    assert len(problems) == 1319 and problems.skipped == 0
    assert problems[0].answer == 18.0 and problems[0].id == "test-1"
    assert all(p.rationale is not None and "#### " in p.rationale for p in problems)
