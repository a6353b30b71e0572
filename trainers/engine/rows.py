"""Turn problems into decode rows and decoded rows into labeled records with provenance (docs/architecture.md).

The same two functions serve the coordinator's sampling (rows go to the Serve rollout pool) and every
evaluation (trainers/evaluation.py), so a record means the same thing wherever it was made.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from trainers.core.answers import answer_checker, cut_after_answer
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
    """Label each decoded row against its problem's gold answer, through the answer checker of the problem's
    format (`#### N` or `\\boxed{}`), and attach provenance."""
    if len(decoded) != len(problems) * params.n:
        raise ValueError(f"expected {len(problems) * params.n} decoded rows, got {len(decoded)}")
    texts, pairs = [], []
    for i, d in enumerate(decoded):
        problem = problems[i // params.n]
        # a pseudo-label must not teach what comes after the answer; only `#### N` marks where it ends
        text = cut_after_answer(d.text) if problem.answer_format == "gsm8k" else d.text
        checker = answer_checker(problem.answer_format)
        answer, strict = checker.extract(text, "flexible"), checker.extract(text, "strict")
        texts.append((text, answer, strict))
        pairs += [(problem.answer_format, strict, problem.answer), (problem.answer_format, answer, problem.answer)]
    verdicts = _equivalent(pairs)
    records = []
    for i, (d, (text, answer, strict)) in enumerate(zip(decoded, texts)):
        problem, k = problems[i // params.n], i % params.n
        records.append({
            "question_id": problem.id, "question": problem.question, "prompt": format_prompt(problem.question),
            "completion": text, "answer": answer, "strict_answer": strict, "gold": problem.answer,
            # training labels need a well-formed final answer (`#### N`, `\boxed{}`): `correct` is the strict match
            "correct": verdicts[2 * i], "correct_flexible": verdicts[2 * i + 1],
            "model_version": model_version, "sample_index": k,
            "seed": row_seed(params.seed, problem.id, k), "temperature": params.temperature,
            "calculator": params.calculator, "calculator_overrides": d.calculator_overrides,
            "finish_reason": d.finish_reason, "num_tokens": d.num_tokens,
        })
    return records


def _equivalent(pairs: Sequence[tuple[str, Any, Any]]) -> list[bool]:
    """The checker's verdict on each (answer format, pred, gold): one `equivalent_many` call per format, so
    boxed answers checked off the main thread make one trip to math-verify's process per call, not per row."""
    verdicts = [False] * len(pairs)
    for fmt in dict.fromkeys(fmt for fmt, _, _ in pairs):
        where = [i for i, (f, _, _) in enumerate(pairs) if f == fmt]
        for i, verdict in zip(where, answer_checker(fmt).equivalent_many([pairs[i][1:] for i in where])):
            verdicts[i] = verdict
    return verdicts
