"""Evaluation metrics: accuracy, pass@k (Chen et al. 2021) and majority vote (maj@k; its clusters are
`trainers.core.rerank`'s, so maj@k and the re-ranking strategies count votes the same way)."""

from __future__ import annotations

import operator
from typing import Sequence

from trainers.core.answers import answer_checker, answers_match
from trainers.core.rerank import cluster_answers

__all__ = ["accuracy", "auc", "maj_at_k", "majority_vote", "pass_at_k"]


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
    clusters = cluster_answers(answers, answer_checker("gsm8k", tol))
    if not clusters:
        return None, 0
    return float(clusters[0].answer), clusters[0].votes


def maj_at_k(answers: Sequence[float | None], gold: float, k: int | None = None, tol: float = 1e-4) -> bool:
    """Whether the majority vote over the first k answers (all when k is None) matches gold."""
    if k is not None and not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= {len(answers)}, got k={k}")
    winner, _ = majority_vote(answers[:k] if k is not None else answers, tol)
    return answers_match(winner, gold, tol)


def accuracy(flags: Sequence[bool]) -> float:
    """Share of True flags; 0.0 when there are none."""
    return sum(1 for f in flags if f) / len(flags) if flags else 0.0


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC: the chance that a random positive scores above a random negative (ties count half); how well
    a verifier's scores separate right from wrong solutions. ValueError without both kinds of label."""
    if len(scores) != len(labels):
        raise ValueError(f"auc needs one label per score: {len(labels)} labels for {len(scores)} scores")
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        raise ValueError("auc needs at least one positive and one negative label")
    # rank-sum (Mann-Whitney U) with average ranks for ties: O(n log n)
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    positive_ranks = sum(r for r, y in zip(ranks, labels) if y)
    n_pos, n_neg = len(positives), len(negatives)
    return (positive_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
