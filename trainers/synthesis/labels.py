"""Self-consistency labels for questions without a trusted answer: the majority of k sampled answers, kept when
its share of the k samples reaches a threshold. A gold answer, where one exists, is only compared afterwards
(`VoteLabel.correct`, `label_accuracy`): it never decides a label.

Votes are over strict answers (the number after `####`, as pseudo-labels need), grouped within the one
answer checker's tolerance by `trainers.core.metrics.majority_vote`; a sample without one votes for nothing
but still counts in k. A tie for the most votes is no majority: the question is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from trainers.core.answers import answers_match, format_answer
from trainers.core.errors import ConfigError
from trainers.core.metrics import majority_vote
from trainers.synthesis.filters import Synthesized

__all__ = ["BUCKET_EDGES", "VoteLabel", "check_threshold", "label_accuracy", "synthesized_rows", "vote_label",
           "vote_labels"]

BUCKET_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class VoteLabel:
    """One question's vote. `label` is the winning answer (None when no sample had one); `kept` whether it
    is trusted; `correct` the label against the gold answer when there is one (diagnostic only)."""

    question_id: str
    label: float | None
    votes: int
    samples: int
    vote_share: float
    kept: bool
    correct: bool | None = None


def check_threshold(threshold: float) -> float:
    """The threshold itself, or a one-line ConfigError when it is not a number in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"vote_threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def vote_label(answers: Sequence[float | None], threshold: float) -> tuple[float | None, int, bool]:
    """(majority answer, its votes, kept) for one question's k sampled answers."""
    threshold = check_threshold(threshold)
    label, votes = majority_vote(answers)
    if label is None:
        return None, 0, False
    _, runner_up = majority_vote([a for a in answers if a is not None and not answers_match(a, label)])
    # votes/k >= threshold in whole votes, so 2 of 3 passes a threshold of 2/3 written as 0.6666666666666666
    needed = math.ceil(threshold * len(answers) - 1e-9)
    return label, votes, votes >= needed and votes > runner_up


def vote_labels(records: Iterable[Mapping[str, Any]], threshold: float,
                gold: Mapping[str, float | None] | None = None) -> list[VoteLabel]:
    """One VoteLabel per question, in first-seen order, from sampled records (`question_id`,
    `strict_answer`: what `trainers.engine.rows.to_records` writes). `gold` maps question ids to a known
    answer for the diagnostic `correct`; questions it lacks (or maps to None) get None."""
    threshold = check_threshold(threshold)
    answers: dict[str, list[float | None]] = {}
    for record in records:
        answers.setdefault(record["question_id"], []).append(record["strict_answer"])
    labels = []
    for question_id, sampled in answers.items():
        label, votes, kept = vote_label(sampled, threshold)
        known = (gold or {}).get(question_id)
        labels.append(VoteLabel(question_id, label, votes, len(sampled), votes / len(sampled), kept,
                                None if known is None else answers_match(label, known)))
    return labels


def label_accuracy(labels: Sequence[VoteLabel], edges: Sequence[float] = BUCKET_EDGES) -> list[dict[str, Any]]:
    """Majority-label accuracy per vote-share bucket, over every question with a gold answer (kept or not, so
    the curve shows what a threshold would keep): `{vote_share_low, vote_share_high, questions, accuracy}`,
    buckets [low, high) with the last one closed; accuracy None for an empty bucket."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"vote-share bucket edges must increase, got {list(edges)}")
    graded = [v for v in labels if v.correct is not None]
    buckets = []
    for low, high in zip(edges, edges[1:]):
        last = high == edges[-1]
        inside = [v for v in graded if low <= v.vote_share and (v.vote_share < high or last and v.vote_share <= high)]
        buckets.append({"vote_share_low": low, "vote_share_high": high, "questions": len(inside),
                        "accuracy": sum(v.correct for v in inside) / len(inside) if inside else None})
    return buckets


def synthesized_rows(problems: Sequence[Synthesized], labels: Sequence[VoteLabel]) -> list[dict[str, Any]]:
    """GSM8K-format rows for U (`{"id", "question", "answer": "#### N"}`) for the problems whose label was
    kept, each with its `provenance`: synthesizer version, seed excerpt id, vote share (and the tags)."""
    by_id = {v.question_id: v for v in labels}
    rows = []
    for problem in problems:
        vote = by_id.get(problem.id)
        if vote is None or not vote.kept or vote.label is None:
            continue
        rows.append({"id": problem.id, "question": problem.question, "answer": f"#### {format_answer(vote.label)}",
                     "provenance": {"synthesizer_version": problem.synthesizer_version, "seed_id": problem.seed_id,
                                    "vote_share": vote.vote_share, "votes": vote.votes, "samples": vote.samples,
                                    "level": problem.level, "topic": problem.topic}})
    return rows
