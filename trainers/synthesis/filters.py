"""The filters a written problem passes before it may join U, each counted in a `FilterReport`, in order:

  parseable        a question, `Solution:`, and a rationale ending in `#### N` (prompts.parse_generated)
  calculator       every `<<expr=value>>` agrees with the safe calculator (none at all passes)
  final_answer     `#### N` equals the last computed value when the last reasoning line computes one
  length           question and rationale word counts within the configured bounds
  dedup            not a near-duplicate of a labeled question nor of an earlier kept one (trainers/core/dedup.py)
  decontamination  no word n-gram of its question or solution is in a dev or test question

A later filter only sees what the earlier ones kept, so the counts never increase.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from trainers.core.answers import answers_match, parse_number
from trainers.core.calculator import CalculatorError, annotations, compute
from trainers.core.dedup import dedup_clusters, near_duplicates_of
from trainers.synthesis.config import SynthesisConfig
from trainers.synthesis.prompts import Parsed, SynthesisPrompt, parse_generated

__all__ = ["FilterReport", "Synthesized", "calculator_consistent", "contaminated", "filter_generated",
           "final_answer_consistent", "ngrams"]

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Synthesized:
    """A written problem that passed every filter, with its provenance. `answer` is the synthesizer's own
    final answer: a diagnostic gold for its vote label, never the label itself."""

    id: str
    question: str
    rationale: str
    answer: float
    seed_id: str
    level: int
    topic: str
    synthesizer_version: str


@dataclass
class FilterReport:
    """How many written problems were left after each filter, in the order they run."""

    generated: int = 0
    parseable: int = 0
    calculator: int = 0
    final_answer: int = 0
    length: int = 0
    dedup: int = 0
    decontamination: int = 0

    def as_dict(self) -> dict[str, int]:
        """stage -> count kept, in order (what `synthesis.json`'s `filters` holds)."""
        return asdict(self)

    def summary(self) -> str:
        """One line for a stage's log, and the explanation when nothing is left: `generated 16 -> parseable
        11 -> ... -> decontamination 4`."""
        return " -> ".join(f"{stage} {count}" for stage, count in self.as_dict().items())


def calculator_consistent(rationale: str) -> bool:
    """Whether every complete `<<lhs=rhs>>` has rhs equal to the calculator's value of lhs; an expression the
    calculator refuses, or an rhs that is no number, is inconsistent."""
    for lhs, rhs in annotations(rationale):
        try:
            value = compute(lhs)
        except CalculatorError:
            return False
        if not answers_match(parse_number(rhs.strip()), float(value)):
            return False
    return True


def final_answer_consistent(rationale: str, answer: float) -> bool:
    """Whether `answer` equals the last annotation's value, checked only where the rationale implies it: its
    last line of reasoning (before `####`) computes something. Otherwise the answer may be read off the text."""
    lines = [line for line in rationale.partition("####")[0].splitlines() if line.strip()]
    computed = annotations(lines[-1]) if lines else []
    if not computed:
        return True
    last = parse_number(computed[-1][1].strip())
    return last is not None and answers_match(answer, last)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of text, lowercased, punctuation ignored (a text shorter than n has none)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contaminated(texts: Sequence[str], eval_questions: Iterable[str], n: int) -> list[bool]:
    """For each text, whether it shares a word n-gram with any evaluation question. A text shorter than n
    words has no n-gram and is never contaminated."""
    held_out: set[tuple[str, ...]] = set()
    for question in eval_questions:
        held_out |= ngrams(question, n)
    return [not held_out.isdisjoint(ngrams(text, n)) for text in texts]


def _within_length(parsed: Parsed, config: SynthesisConfig) -> bool:
    words = len(parsed.question.split())
    return (config.min_question_words <= words <= config.max_question_words
            and len(parsed.rationale.split()) <= config.max_rationale_words)


def _near_duplicates(questions: Sequence[str], labeled: Sequence[str], threshold: float) -> list[bool]:
    """Dropped by dedup: merged into an earlier written question, or that close to a labeled one."""
    clusters = dedup_clusters(questions, method="jaccard", threshold=threshold)
    of_labeled = near_duplicates_of(questions, labeled, threshold)
    return [cluster != i or copied for i, (cluster, copied) in enumerate(zip(clusters, of_labeled))]


def filter_generated(prompts: Sequence[SynthesisPrompt], texts: Sequence[str], labeled_questions: Sequence[str],
                     eval_questions: Iterable[str], config: SynthesisConfig,
                     synthesizer_version: str) -> tuple[list[Synthesized], FilterReport]:
    """The written problems (`texts[i]` answers `prompts[i]`) that pass every filter, and the counts."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts but {len(texts)} written texts")
    report = FilterReport(generated=len(texts))
    kept = [(i, parsed) for i, parsed in enumerate(map(parse_generated, texts)) if parsed is not None]
    report.parseable = len(kept)
    kept = [(i, p) for i, p in kept if calculator_consistent(p.rationale)]
    report.calculator = len(kept)
    kept = [(i, p) for i, p in kept if final_answer_consistent(p.rationale, p.answer)]
    report.final_answer = len(kept)
    kept = [(i, p) for i, p in kept if _within_length(p, config)]
    report.length = len(kept)
    dropped = _near_duplicates([p.question for _, p in kept], labeled_questions, config.dedup_threshold)
    kept = [item for item, drop in zip(kept, dropped) if not drop]
    report.dedup = len(kept)
    dropped = contaminated([f"{p.question}\n{p.rationale}" for _, p in kept], eval_questions, config.ngram)
    kept = [item for item, drop in zip(kept, dropped) if not drop]
    report.decontamination = len(kept)
    return [Synthesized(f"{synthesizer_version}-{i:05d}", p.question, p.rationale, p.answer, prompts[i].seed_id,
                        prompts[i].level, prompts[i].topic, synthesizer_version) for i, p in kept], report
