"""Dedup of sampled rationales: Jaccard near-duplicates, RFT equation paths, provenance clusters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core import dedup as dedup_module
from trainers.core.dedup import DEDUP_METHODS, dedup, dedup_clusters, equations, jaccard, register_dedup, tokens
from trainers.core.errors import ConfigError

A = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
A_REWORDED = "In May she sold 48 / 2 = <<48 / 2=24>>24.\nAltogether 48+24=<<48+24=72>>72.\n#### 72"
A_NEAR = "Natalia sold 48/2 = <<48/2=24>>24 clips in May!\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
B = "She sold 48*2 = <<48*2=96>>96 clips in May, so 48+96 = <<48+96=144>>144 in total.\n#### 144"


def test_tokens_are_lowercased_words_and_numbers_without_punctuation() -> None:
    assert tokens("Natalia SOLD 48/2 = 24 clips, $1,000.50!") == frozenset(
        {"natalia", "sold", "48", "2", "24", "clips", "1000.50"}
    )
    assert tokens("...!?") == frozenset()


def test_jaccard_is_one_for_same_words_and_zero_for_disjoint() -> None:
    assert jaccard("A b, c.", "c B a") == 1.0
    assert jaccard("a b", "c d") == 0.0
    assert jaccard("a b c", "b c d") == pytest.approx(0.5)
    assert jaccard("", "!!") == 1.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_jaccard_is_symmetric_and_bounded(a: str, b: str) -> None:
    assert jaccard(a, b) == jaccard(b, a)
    assert 0.0 <= jaccard(a, b) <= 1.0
    assert jaccard(a, a) == 1.0


def test_equations_are_the_ordered_calculator_steps_without_whitespace() -> None:
    assert equations(A) == ("48/2=24", "48+24=72")
    assert equations(A_REWORDED) == equations(A)
    assert equations("no calculations") == ()


def test_jaccard_dedup_drops_near_duplicates_and_keeps_the_first() -> None:
    texts = [A, A_NEAR, B, A]
    assert jaccard(A, A_NEAR) >= 0.7 and jaccard(A, B) < 0.7
    assert dedup(texts) == [0, 2]
    assert dedup_clusters(texts) == [0, 0, 2, 0]


def test_jaccard_dedup_threshold_is_inclusive() -> None:
    texts = ["a b c", "b c d"]  # Jaccard exactly 0.5
    assert dedup(texts, threshold=0.5) == [0]
    assert dedup(texts, threshold=0.51) == [0, 1]


def test_equation_dedup_merges_paths_with_the_same_equations() -> None:
    texts = [A, A_REWORDED, B, "no calculations", "also none"]
    assert dedup(texts, method="equations") == [0, 2, 3]
    assert dedup_clusters(texts, method="equations") == [0, 0, 2, 3, 3]


def test_unknown_dedup_method_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="equations.*jaccard"):
        dedup([A], method="minhash")


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_jaccard_threshold_outside_zero_one_is_a_config_error(threshold: float) -> None:
    with pytest.raises(ConfigError):
        dedup([A], threshold=threshold)


def test_register_dedup_adds_a_pluggable_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup_module, "DEDUP_METHODS", dict(DEDUP_METHODS))

    @register_dedup("exact")
    def exact(texts: list[str], threshold: float) -> list[int]:
        first: dict[str, int] = {}
        return [first.setdefault(t, i) for i, t in enumerate(texts)]

    assert dedup(["x", "y", "x"], method="exact") == [0, 1]
    with pytest.raises(ValueError, match="already registered"):
        register_dedup("exact")(exact)


def test_empty_input_keeps_nothing() -> None:
    assert dedup([]) == [] and dedup([], method="equations") == []


WORDS = st.sampled_from(["she", "sold", "48", "24", "clips", "in", "may", "72", "total", "apples"])
TEXTS = st.lists(st.lists(WORDS, max_size=8).map(" ".join), max_size=12)


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_jaccard_clusters_point_to_an_earlier_similar_kept_text(texts: list[str], threshold: float) -> None:
    clusters = dedup_clusters(texts, "jaccard", threshold)
    kept = dedup(texts, "jaccard", threshold)
    assert kept == [i for i, c in enumerate(clusters) if c == i]
    for i, c in enumerate(clusters):
        assert c in kept and c <= i
        if c != i:
            assert jaccard(texts[i], texts[c]) >= threshold
    for x in kept:
        for y in kept:
            if x < y:
                assert jaccard(texts[x], texts[y]) < threshold
