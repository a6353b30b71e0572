"""Preference pairs for the DPO step."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core.dedup import jaccard
from trainers.core.errors import ConfigError, DataError
from trainers.core.pairs import preference_pairs


def sample(qid: str, completion: str, correct: bool, prompt: str | None = None) -> dict[str, Any]:
    return {"question_id": qid, "prompt": prompt or f"Q{qid}?", "completion": completion, "correct": correct}


RIGHT_1 = "48/2 = <<48/2=24>>24, 48+24 = <<48+24=72>>72 clips.\n#### 72"
RIGHT_2 = "Half of 48 is 24, so 48 and 24 make 72 clips.\n#### 72"
WRONG_1 = "48/2 = <<48/2=24>>24, 48+24 = <<48+24=73>>73 clips.\n#### 73"
WRONG_2 = "She sold 48*2 = <<48*2=96>>96 more.\n#### 144"


def test_pairs_put_a_correct_sample_against_an_incorrect_one_least_similar_first() -> None:
    samples = [sample("q1", RIGHT_1, True), sample("q1", WRONG_1, False), sample("q1", RIGHT_2, True),
               sample("q1", WRONG_2, False)]
    pairs, stats = preference_pairs(samples, max_pairs_per_question=3)
    assert stats == {"questions": 1, "pairs": 3, "skipped_no_correct": 0, "skipped_no_incorrect": 0}
    assert [set(p) for p in pairs] == [{"question_id", "prompt", "chosen", "rejected", "similarity"}] * 3
    sims = [p["similarity"] for p in pairs]
    assert sims == sorted(sims)
    assert all(p["similarity"] == jaccard(p["chosen"], p["rejected"]) for p in pairs)
    # The near-identical (RIGHT_1, WRONG_1) pair is the most similar of the four and is the one left out.
    assert (RIGHT_1, WRONG_1) not in {(p["chosen"], p["rejected"]) for p in pairs}
    assert all(p["prompt"] == "Qq1?" and p["question_id"] == "q1" for p in pairs)


def test_questions_without_a_correct_or_an_incorrect_sample_are_skipped_and_counted() -> None:
    samples = [sample("all-right", RIGHT_1, True), sample("all-wrong", WRONG_1, False),
               sample("both", RIGHT_1, True), sample("both", WRONG_1, False)]
    pairs, stats = preference_pairs(samples)
    assert stats == {"questions": 3, "pairs": 1, "skipped_no_correct": 1, "skipped_no_incorrect": 1}
    assert [p["question_id"] for p in pairs] == ["both"]


def test_duplicate_samples_never_repeat_a_chosen_rejected_pair() -> None:
    samples = [sample("q", RIGHT_1, True)] * 3 + [sample("q", WRONG_1, False)] * 3
    pairs, stats = preference_pairs(samples, max_pairs_per_question=5)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(RIGHT_1, WRONG_1)]
    assert stats["pairs"] == 1


def test_pairs_are_capped_per_question_and_keep_question_order() -> None:
    samples = []
    for qid in ("b", "a"):
        samples += [sample(qid, f"right {i} #### 1", True) for i in range(3)]
        samples += [sample(qid, f"wrong {i} #### 2", False) for i in range(3)]
    pairs, _ = preference_pairs(samples, max_pairs_per_question=2)
    assert [p["question_id"] for p in pairs] == ["b", "b", "a", "a"]


def test_pairs_are_deterministic() -> None:
    samples = [sample(str(q), f"answer {q} {i} #### {i}", i % 2 == 0) for q in range(5) for i in range(6)]
    assert preference_pairs(samples) == preference_pairs(list(samples))


def test_bad_samples_are_data_errors_naming_the_sample() -> None:
    with pytest.raises(DataError, match="sample 1.*'correct'"):
        preference_pairs([sample("q", "a", True), {"question_id": "q", "prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match="'correct' must be bool"):
        preference_pairs([{**sample("q", "a", True), "correct": "yes"}])
    with pytest.raises(DataError, match="two different prompts"):
        preference_pairs([sample("q", "a", True, "P1"), sample("q", "b", False, "P2")])


def test_max_pairs_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        preference_pairs([], max_pairs_per_question=0)


def test_no_samples_give_no_pairs() -> None:
    assert preference_pairs([]) == ([], {"questions": 0, "pairs": 0, "skipped_no_correct": 0,
                                         "skipped_no_incorrect": 0})


SAMPLES = st.lists(
    st.builds(sample, st.sampled_from(["q1", "q2", "q3"]),
              st.lists(st.sampled_from(["48", "24", "72", "clips", "half", "sold"]), max_size=6).map(" ".join),
              st.booleans()),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(SAMPLES, st.integers(1, 4))
def test_pairs_hold_for_any_samples(samples: list[dict[str, Any]], cap: int) -> None:
    pairs, stats = preference_pairs(samples, max_pairs_per_question=cap)
    by_question: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        by_question.setdefault(p["question_id"], []).append(p)
    for qid, group in by_question.items():
        right = {s["completion"] for s in samples if s["question_id"] == qid and s["correct"]}
        wrong = {s["completion"] for s in samples if s["question_id"] == qid and not s["correct"]}
        combos = {(c, r) for c in right for r in wrong if c != r}
        used = [(p["chosen"], p["rejected"]) for p in group]
        assert len(used) == len(set(used)) == min(cap, len(combos))
        assert set(used) <= combos
        sims = [p["similarity"] for p in group]
        assert sims == sorted(sims)
        # Least similar first: nothing left out is less similar than what was taken.
        left_out = [jaccard(c, r) for c, r in combos - set(used)]
        assert not left_out or min(left_out) >= max(sims)
    assert stats["pairs"] == len(pairs)
    assert stats["questions"] == len({s["question_id"] for s in samples})
