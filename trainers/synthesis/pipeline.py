"""The two decoding steps of synthesis, each through a `decode_fn` (trainers/evaluation.py's `DecodeFn`), so
the same code runs in-process (`local_decoder`) or on the Serve rollout pool:

    write_problems  the synthesizer writes `problems_per_iteration` problems; the filters keep some
    vote_on         the current policy samples k answers per question; the majority becomes the label
"""

from __future__ import annotations

from typing import Mapping, Sequence

from trainers.core.answers import cut_after_answer, extract_answer
from trainers.data.problems import Problem
from trainers.engine.decoding import Decoded, DecodeRequest
from trainers.engine.rows import DecodeParams, make_requests
from trainers.evaluation import DecodeFn
from trainers.synthesis.config import SynthesisConfig
from trainers.synthesis.filters import FilterReport, Synthesized, filter_generated
from trainers.synthesis.labels import VoteLabel, vote_labels
from trainers.synthesis.prompts import SeedText, generation_prompts, generation_requests

__all__ = ["vote_on", "write_problems"]


def _decode(decode_fn: DecodeFn, rows: list[DecodeRequest]) -> list[Decoded]:
    output = decode_fn(rows)
    decoded = output[0] if isinstance(output, tuple) else output  # the pool also returns model versions
    if len(decoded) != len(rows):
        raise RuntimeError(f"decode_fn returned {len(decoded)} rows for {len(rows)} requests")
    return decoded


def write_problems(labeled: Sequence[Problem], seed_texts: Sequence[SeedText], held_out_questions: Sequence[str],
                   config: SynthesisConfig, synthesizer_version: str, decode_fn: DecodeFn,
                   seed: int = 0) -> tuple[list[Synthesized], FilterReport]:
    """The synthesizer behind `decode_fn` writes `config.problems_per_iteration` problems (calculator on);
    returns those that pass every filter and the counts. `held_out_questions` are the dev and test questions
    decontamination protects."""
    prompts = generation_prompts(labeled, seed_texts, config.problems_per_iteration, config.seed_chars, seed)
    decoded = _decode(decode_fn, generation_requests(prompts, config, seed))
    return filter_generated(prompts, [d.text for d in decoded], [p.question for p in labeled],
                            held_out_questions, config, synthesizer_version)


def vote_on(questions: Sequence[Problem], decode_fn: DecodeFn, params: DecodeParams, threshold: float,
            gold: Mapping[str, float | None] | None = None) -> list[VoteLabel]:
    """Sample `params.n` answers per question from the policy behind `decode_fn` and label each question by
    majority vote (labels.vote_labels). The questions' own `answer` is never read: pass `gold` to grade."""
    decoded = _decode(decode_fn, make_requests(questions, params))
    records = [{"question_id": questions[i // params.n].id,
                "strict_answer": extract_answer(cut_after_answer(d.text), mode="strict")}
               for i, d in enumerate(decoded)]
    return vote_labels(records, threshold, gold)
