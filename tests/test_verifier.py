"""Verifier data: balanced right/wrong examples per question from sample records, in the paper's prompt."""

from __future__ import annotations

import pytest

from trainers.core.errors import ConfigError, DataError
from trainers.data.verifier import verifier_examples
from trainers.engine.scoring import LABELS, verifier_prompt


def _sample(qid: str, completion: str, correct: bool, index: int = 0) -> dict:
    return {"question_id": qid, "question": f"question {qid}?", "completion": completion, "correct": correct,
            "model_version": "run/sft-1", "sample_index": index, "prompt": "ignored", "answer": 1.0}


SAMPLES = [
    _sample("a", "right 1", True, 0), _sample("a", "wrong 1", False, 1), _sample("a", "right 2", True, 2),
    _sample("a", "right 1", True, 3),  # the same text again: one example at most
    _sample("a", "right 3", True, 4), _sample("a", "wrong 2", False, 5),
    _sample("b", "right", True), _sample("b", "right again", True),  # only right: nothing to contrast
    _sample("c", "wrong", False),
    _sample("d", "wrong", False), _sample("d", "right", True),
]


def test_each_question_gives_as_many_right_as_wrong_examples_in_the_papers_format() -> None:
    examples, stats = verifier_examples(SAMPLES)
    assert stats == {"questions": 4, "questions_used": 2, "skipped_only_correct": 1, "skipped_only_incorrect": 1,
                     "examples": 6}
    assert [(e["question_id"], e["completion"], e["sample_index"]) for e in examples] == [
        ("a", LABELS[0], 0), ("a", LABELS[1], 1), ("a", LABELS[0], 2), ("a", LABELS[1], 5),
        ("d", LABELS[0], 0), ("d", LABELS[1], 0)]
    first = examples[0]
    assert first["prompt"] == verifier_prompt("question a?", "right 1") and first["correct"] is True
    assert first["prompt"] + first["completion"] == ("Here is a math problem: question a?\nHere is a candidate "
                                                     "solution: right 1\nThe above candidate solution is correct")
    assert first["source"] == "run/sft-1"
    for qid in ("a", "d"):
        labels = [e["correct"] for e in examples if e["question_id"] == qid]
        assert labels.count(True) == labels.count(False)


def test_max_per_label_caps_each_question() -> None:
    examples, stats = verifier_examples(SAMPLES, max_per_label=1)
    assert [(e["question_id"], e["correct"]) for e in examples] == [("a", True), ("a", False), ("d", True),
                                                                    ("d", False)]
    with pytest.raises(ConfigError, match="max_per_label must be >= 1"):
        verifier_examples(SAMPLES, max_per_label=0)


@pytest.mark.parametrize(("sample", "message"), [
    ("text", "sample 0: expected a dict, got str"),
    ({"question_id": "a", "question": "q", "completion": "c"}, "sample 0: 'correct' must be bool, got missing"),
    ({**_sample("a", "c", True), "correct": 1}, "'correct' must be bool, got a int"),
])
def test_malformed_samples_are_one_line_data_errors(sample, message: str) -> None:
    with pytest.raises(DataError, match=message):
        verifier_examples([sample])


def test_one_question_with_two_texts_is_refused() -> None:
    with pytest.raises(DataError, match="sample 1: question 'a' has two different question texts"):
        verifier_examples([_sample("a", "x", True), {**_sample("a", "y", False), "question": "other"}])
