"""Solution-cluster re-ranking (Liu et al. 2023, "Improving Large Language Model Fine-tuning for Solving Math
Problems"): sample N solutions, cluster them by equivalent final answer, rank the clusters by size, then pick
an answer with the verifier's per-solution scores.

Strategies (`STRATEGIES`):
  maj            the largest cluster's answer (majority vote; no scores needed)
  rr_topk        the answer of the single best-scored solution inside the top-K clusters (paper: RR.Top-8)
  weighted       the answer whose cluster has the largest summed score
  weighted_topk  the same, within the top-K clusters

Equivalence is the dataset's `AnswerChecker` (numbers within a tolerance, or math-verify for `\\boxed{}`), the
same one that labels samples. Ties go to the higher-ranked cluster: larger, then seen first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from trainers.core.answers import Answer, AnswerChecker, answer_checker

__all__ = ["STRATEGIES", "Cluster", "choose", "cluster_answers", "rerank_correct"]

STRATEGIES = ("maj", "rr_topk", "weighted", "weighted_topk")


@dataclass
class Cluster:
    """Solutions with one answer: `answer` is the first one seen, `members` the solutions' indices in order."""

    answer: Answer
    members: list[int] = field(default_factory=list)

    @property
    def votes(self) -> int:
        return len(self.members)

    def best_score(self, scores: Sequence[float]) -> float:
        return max(scores[i] for i in self.members)

    def summed_score(self, scores: Sequence[float]) -> float:
        return sum(scores[i] for i in self.members)


def cluster_answers(answers: Sequence[Answer | None], checker: AnswerChecker | None = None) -> list[Cluster]:
    """Group `answers` by equivalence under `checker` (default gsm8k) and rank the groups: most votes first,
    then the one seen first. An answer joins the first cluster whose first answer it matches (that answer
    plays gold: math-verify is not symmetric); missing (None, NaN) answers join none."""
    checker = checker or answer_checker()
    clusters: list[Cluster] = []
    same_text: dict[Answer, Cluster] = {}  # identical answers need no checker call
    for i, answer in enumerate(answers):
        if answer is None or (isinstance(answer, float) and math.isnan(answer)):
            continue
        cluster = same_text.get(answer)
        if cluster is None:
            matches = checker.equivalent_many([(answer, c.answer) for c in clusters])
            cluster = next((c for c, match in zip(clusters, matches) if match), None)
            if cluster is None:
                cluster = Cluster(answer)
                clusters.append(cluster)
            same_text[answer] = cluster
        cluster.members.append(i)
    order = sorted(range(len(clusters)), key=lambda c: (-clusters[c].votes, c))  # stable: seen first wins ties
    return [clusters[c] for c in order]


def choose(clusters: Sequence[Cluster], strategy: str, scores: Sequence[float] | None = None,
           k: int | None = None) -> Cluster | None:
    """The cluster `strategy` picks from ranked `clusters` (None when there are none). `scores` holds one
    verifier score per solution (needed by all but `maj`); `k` is the top-K of the *_topk strategies."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown re-ranking strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if not clusters:
        return None
    if strategy == "maj":
        return clusters[0]
    if scores is None:
        raise ValueError(f"strategy {strategy!r} needs one score per solution")
    if strategy.endswith("_topk"):
        if k is None or k < 1:
            raise ValueError(f"strategy {strategy!r} needs k >= 1, got {k!r}")
        clusters = clusters[:k]
    if strategy == "rr_topk":
        return max(clusters, key=lambda c: c.best_score(scores))  # max keeps the first (higher-ranked) of ties
    return max(clusters, key=lambda c: c.summed_score(scores))


def rerank_correct(answers: Sequence[Answer | None], scores: Sequence[float], gold: Answer, k: int,
                   checker: AnswerChecker | None = None) -> dict[str, bool]:
    """For one question's N solutions: whether each strategy's chosen answer is `gold` (one clustering)."""
    if len(scores) != len(answers):
        raise ValueError(f"need one score per answer: {len(scores)} scores for {len(answers)} answers")
    checker = checker or answer_checker()
    clusters = cluster_answers(answers, checker)
    chosen = {s: choose(clusters, s, scores, k) for s in STRATEGIES}
    verdicts = checker.equivalent_many([(c.answer if c else None, gold) for c in chosen.values()])
    return dict(zip(chosen, verdicts))
