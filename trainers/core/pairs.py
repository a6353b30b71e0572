"""Preference pairs for the DPO step: per question, a correct sample (chosen) against an incorrect one (rejected)."""

from __future__ import annotations

from typing import Any, Iterable

from trainers.core.dedup import jaccard
from trainers.core.errors import ConfigError, DataError

__all__ = ["preference_pairs"]

_REQUIRED = {"question_id": str, "prompt": str, "completion": str, "correct": bool}


def _check(sample: Any, index: int) -> None:
    if not isinstance(sample, dict):
        raise DataError(f"sample {index}: expected a dict, got {type(sample).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in sample:
            raise DataError(f"sample {index}: missing key {key!r}")
        if not isinstance(sample[key], kind):
            raise DataError(f"sample {index}: {key!r} must be {kind.__name__}, got {type(sample[key]).__name__}")


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def preference_pairs(
    samples: Iterable[dict[str, Any]], max_pairs_per_question: int = 3
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(prompt, chosen, rejected) pairs, least similar first, at most max_pairs_per_question per question.

    Questions keep their first-seen order; an exact (chosen, rejected) text pair is used once. Stats count
    every question seen and those skipped for having no correct or no incorrect sample.
    """
    if max_pairs_per_question < 1:
        raise ConfigError(f"max_pairs_per_question must be >= 1, got {max_pairs_per_question}")
    groups: dict[str, dict[str, Any]] = {}
    for index, sample in enumerate(samples):
        _check(sample, index)
        group = groups.setdefault(
            sample["question_id"], {"prompt": sample["prompt"], "correct": [], "incorrect": []}
        )
        if sample["prompt"] != group["prompt"]:
            # A pair whose prompt does not match its completions would teach the wrong thing.
            raise DataError(f"sample {index}: question {sample['question_id']!r} has two different prompts")
        group["correct" if sample["correct"] else "incorrect"].append(sample["completion"])

    pairs: list[dict[str, Any]] = []
    stats = {"questions": len(groups), "pairs": 0, "skipped_no_correct": 0, "skipped_no_incorrect": 0}
    for question_id, group in groups.items():
        chosen, rejected = _unique(group["correct"]), _unique(group["incorrect"])
        if not chosen:
            stats["skipped_no_correct"] += 1
            continue
        if not rejected:
            stats["skipped_no_incorrect"] += 1
            continue
        # (similarity, i, j): least similar first, ties in sample order, so the result is deterministic.
        candidates = sorted(
            (jaccard(c, r), i, j)
            for i, c in enumerate(chosen)
            for j, r in enumerate(rejected)
            if c != r
        )
        for similarity, i, j in candidates[:max_pairs_per_question]:
            pairs.append(
                {
                    "question_id": question_id,
                    "prompt": group["prompt"],
                    "chosen": chosen[i],
                    "rejected": rejected[j],
                    "similarity": similarity,
                }
            )
    stats["pairs"] = len(pairs)
    return pairs, stats
