"""Turn problems into decode rows and decoded rows into labeled records with provenance (docs/architecture.md).

The same two functions serve the coordinator's sampling (rows go to the Serve rollout pool) and every
evaluation (trainers/evaluation.py), so a record means the same thing wherever it was made.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from trainers.core.answers import answers_match, cut_after_answer, extract_answer
from trainers.data.problems import Problem
from trainers.engine.decoding import MAX_NEW_TOKENS, Decoded, DecodeRequest
from trainers.core.prompting import format_prompt


@dataclass(frozen=True)
class DecodeParams:
    """How to decode a set of questions: `n` rows per question at `temperature` (0 = greedy)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = MAX_NEW_TOKENS
    calculator: bool = True
    seed: int = 0


def row_seed(base_seed: int, question_id: str, sample_index: int) -> int:
    """A stable per-row seed: the same (seed, question, index) gives the same sample on any replica."""
    return zlib.crc32(f"{base_seed}:{question_id}:{sample_index}".encode()) & 0x7FFFFFFF


def make_requests(problems: Sequence[Problem], params: DecodeParams) -> list[DecodeRequest]:
    """n rows per problem, problem-major: rows [i*n, (i+1)*n) belong to problems[i]."""
    return [
        DecodeRequest(prompt=format_prompt(p.question), temperature=params.temperature, top_p=params.top_p,
                      max_new_tokens=params.max_new_tokens, calculator=params.calculator,
                      seed=row_seed(params.seed, p.id, k))
        for p in problems for k in range(params.n)
    ]


def to_records(problems: Sequence[Problem], params: DecodeParams, decoded: Sequence[Decoded],
               model_version: str) -> list[dict[str, Any]]:
    """Label each decoded row against its problem's gold answer and attach provenance."""
    if len(decoded) != len(problems) * params.n:
        raise ValueError(f"expected {len(problems) * params.n} decoded rows, got {len(decoded)}")
    records = []
    for i, d in enumerate(decoded):
        problem, k = problems[i // params.n], i % params.n
        text = cut_after_answer(d.text)  # a pseudo-label must not teach what comes after the answer
        answer = extract_answer(text, mode="flexible")
        strict = extract_answer(text, mode="strict")
        records.append({
            "question_id": problem.id, "question": problem.question, "prompt": format_prompt(problem.question),
            "completion": text, "answer": answer, "strict_answer": strict, "gold": problem.answer,
            # training labels need a well-formed `#### N`, so `correct` is the strict match
            "correct": answers_match(strict, problem.answer),
            "correct_flexible": answers_match(answer, problem.answer),
            "model_version": model_version, "sample_index": k,
            "seed": row_seed(params.seed, problem.id, k), "temperature": params.temperature,
            "calculator": params.calculator, "calculator_overrides": d.calculator_overrides,
            "finish_reason": d.finish_reason, "num_tokens": d.num_tokens,
        })
    return records
