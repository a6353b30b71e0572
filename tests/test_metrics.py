"""pass@k, majority vote and accuracy."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core.metrics import accuracy, maj_at_k, majority_vote, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 0, 1, 0.0), (5, 0, 5, 0.0), (5, 5, 1, 1.0), (5, 5, 3, 1.0), (5, 1, 1, 0.2), (5, 1, 5, 1.0),
     (5, 2, 2, 0.7), (10, 3, 1, 0.3), (1, 1, 1, 1.0), (1, 0, 1, 0.0)],
)
def test_pass_at_k_hand_checked_cases(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_a_brute_force_count_for_small_n() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k)), (n, c, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(10_000, 10, 100) == pytest.approx(1 - math.comb(9_990, 100) / math.comb(10_000, 100))
    assert 0.0 <= pass_at_k(100_000, 50_000, 1_000) <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_the_exact_ratio_of_binomials(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 1, 6), (5, 6, 1), (-1, 0, 0), (5, -1, 1), (5, 1, -1)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_counts_answers_within_tolerance_as_one() -> None:
    assert majority_vote([72.0, 72.00001, 5.0]) == (72.0, 2)
    assert majority_vote([5.0, 72.0, 72.0, None, None, None]) == (72.0, 2)


def test_majority_vote_breaks_ties_by_first_appearance() -> None:
    assert majority_vote([3.0, 4.0, 4.0, 3.0]) == (3.0, 2)
    assert majority_vote([None, 4.0, 3.0]) == (4.0, 1)


def test_majority_vote_with_no_answers() -> None:
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
    assert majority_vote([float("nan")]) == (None, 0)


def test_maj_at_k_votes_over_the_first_k_answers() -> None:
    answers = [1.0, 2.0, 2.0, 1.0, 1.0]
    assert maj_at_k(answers, 2.0, k=3)
    assert not maj_at_k(answers, 2.0)
    assert maj_at_k(answers, 1.0, k=1)
    assert not maj_at_k([None, None], 1.0)


@pytest.mark.parametrize("k", [0, 6])
def test_maj_at_k_rejects_k_outside_the_answers(k: int) -> None:
    with pytest.raises(ValueError):
        maj_at_k([1.0] * 5, 1.0, k=k)


def test_accuracy_is_the_share_of_true_flags() -> None:
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0
    assert accuracy([False]) == 0.0
