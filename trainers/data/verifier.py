"""Verifier (evaluator) training data from a run's own samples (Liu et al. 2023).

Sample records (docs/architecture.md, "Decode rows and sample records") already say whether each rationale
reached the gold answer. Per question, the unique correct and unique incorrect completions are balanced: as
many of each as the rarer kind has (at most `max_per_label`), in sample order, so the verifier sees right and
wrong equally often for every question and cannot score well by learning which questions are easy. A question
with only right or only wrong samples gives no example (counted).

An example is prompt/completion, as TRL's SFT reads it (the loss falls on the label only):
`{"prompt": verifier_prompt(question, completion), "completion": " correct" | " incorrect", "correct",
"question_id", "source" (the model version that wrote the sample), "sample_index"}`; its text is
prompt + completion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from trainers.core.errors import ConfigError, DataError
from trainers.core.files import atomic_write_text
from trainers.engine.scoring import LABELS, verifier_prompt

__all__ = ["verifier_examples", "write_verifier_data"]

_REQUIRED = {"question_id": str, "question": str, "completion": str, "correct": bool}


def verifier_examples(samples: Iterable[dict[str, Any]], max_per_label: int | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Balanced verifier examples, questions in first-seen order, right and wrong alternating within each;
    stats count questions seen, used, and skipped for having only one kind of sample."""
    if max_per_label is not None and max_per_label < 1:
        raise ConfigError(f"max_per_label must be >= 1, got {max_per_label}")
    groups: dict[str, dict[bool, dict[str, dict[str, Any]]]] = {}
    questions: dict[str, str] = {}
    for index, sample in enumerate(samples):
        _check(sample, index)
        qid = sample["question_id"]
        if questions.setdefault(qid, sample["question"]) != sample["question"]:
            raise DataError(f"sample {index}: question {qid!r} has two different question texts")
        by_label = groups.setdefault(qid, {True: {}, False: {}})
        by_label[sample["correct"]].setdefault(sample["completion"].strip(), sample)  # one per unique text

    examples: list[dict[str, Any]] = []
    stats = {"questions": len(groups), "questions_used": 0, "skipped_only_correct": 0, "skipped_only_incorrect": 0}
    for qid, by_label in groups.items():
        right, wrong = list(by_label[True].values()), list(by_label[False].values())
        if not wrong:
            stats["skipped_only_correct"] += 1
            continue
        if not right:
            stats["skipped_only_incorrect"] += 1
            continue
        count = min(len(right), len(wrong), max_per_label or len(right))
        stats["questions_used"] += 1
        for pair in zip(right[:count], wrong[:count]):
            examples += [_example(questions[qid], sample) for sample in pair]
    stats["examples"] = len(examples)
    return examples, stats


def write_verifier_data(samples_paths: Iterable[str | Path], out: str | Path, max_per_label: int | None = None
                        ) -> dict[str, Any]:
    """Read sample-record jsonl files (any run's, any stage's), write the balanced examples to `out` (jsonl,
    atomically) for `train_verifier`; returns the stats and the path. DataError when no question has both
    a right and a wrong sample: there would be nothing to learn."""
    samples = [json.loads(line) for path in samples_paths
               for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    examples, stats = verifier_examples(samples, max_per_label)
    if not examples:
        raise DataError(f"no question has both a correct and an incorrect sample ({stats['questions']} questions)")
    atomic_write_text(out, "".join(json.dumps(e) + "\n" for e in examples))
    return {"path": str(out), **stats}


def _example(question: str, sample: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": verifier_prompt(question, sample["completion"]),
            "completion": LABELS[0] if sample["correct"] else LABELS[1], "correct": sample["correct"],
            "question_id": sample["question_id"], "source": sample.get("model_version", ""),
            "sample_index": sample.get("sample_index")}


def _check(sample: Any, index: int) -> None:
    if not isinstance(sample, dict):
        raise DataError(f"sample {index}: expected a dict, got {type(sample).__name__}")
    for key, kind in _REQUIRED.items():
        if not isinstance(sample.get(key), kind):
            got = "missing" if key not in sample else f"a {type(sample[key]).__name__}"
            raise DataError(f"sample {index}: {key!r} must be {kind.__name__}, got {got}")
