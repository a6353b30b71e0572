"""Evaluation metrics: accuracy, pass@k (Chen et al. 2021) and majority vote (maj@k)."""

from __future__ import annotations

import math
import operator
from typing import Sequence

from trainers.core.answers import answers_match

__all__ = ["accuracy", "maj_at_k", "majority_vote", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if n < 0 or c < 0 or k < 0:
        raise ValueError(f"pass_at_k needs non-negative n, c, k; got n={n}, c={c}, k={k}")
    if k > n or c > n:
        raise ValueError(f"pass_at_k needs k <= n and c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    # C(n-c, k) / C(n, k) as a product of factors below 1: the binomials overflow floats for large n.
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: Sequence[float | None], tol: float = 1e-4) -> tuple[float | None, int]:
    """The most common answer and its votes; answers within tol are one answer, ties go to the first seen."""
    # Each group is represented by its first value; a later answer joins the first group it matches.
    values: list[float] = []
    votes: list[int] = []
    for answer in answers:
        if answer is None or math.isnan(answer):
            continue
        for i, value in enumerate(values):
            if answers_match(answer, value, tol):
                votes[i] += 1
                break
        else:
            values.append(answer)
            votes.append(1)
    if not values:
        return None, 0
    best = max(range(len(values)), key=votes.__getitem__)  # max keeps the first of equal counts
    return values[best], votes[best]


def maj_at_k(answers: Sequence[float | None], gold: float, k: int | None = None, tol: float = 1e-4) -> bool:
    """Whether the majority vote over the first k answers (all when k is None) matches gold."""
    if k is not None and not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= {len(answers)}, got k={k}")
    winner, _ = majority_vote(answers[:k] if k is not None else answers, tol)
    return answers_match(winner, gold, tol)


def accuracy(flags: Sequence[bool]) -> float:
    """Share of True flags; 0.0 when there are none."""
    return sum(1 for f in flags if f) / len(flags) if flags else 0.0
