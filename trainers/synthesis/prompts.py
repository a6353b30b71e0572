"""What the synthesizer reads and writes: seed texts, level/topic tags, its prompt, its training examples,
and the parser that turns its output back into (question, rationale).

A prompt carries what JiuZhang3.0's prompts carry, a seed excerpt and a level/topic tag:

    Write a new math word problem with a step-by-step solution.
    Level: 3 steps. Topic: add, mul.
    Seed: Owen has 47 cakes for the bake sale. Later, Owen
    Problem:

and the model continues with ` <question>\\nSolution: <rationale ending in #### N>`. Without a teacher, the
training targets are the labeled problems themselves: each is paired with the excerpt of its own question
(the problem grows from its seed) and, when the user gives seed texts, once more with a seed text's excerpt
(the model learns to write a problem whatever the seed). The level is the number of calculator steps, the
topic the operations they use, both read off the labeled rationale.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainers.core.answers import cut_after_answer, extract_answer
from trainers.core.calculator import annotations
from trainers.core.errors import DataError
from trainers.core.prompting import format_completion
from trainers.data.problems import Problem
from trainers.engine.decoding import DecodeRequest
from trainers.engine.rows import row_seed
from trainers.synthesis.config import SynthesisConfig

__all__ = ["Parsed", "SeedText", "SynthesisPrompt", "generation_prompts", "generation_requests", "labeled_seeds", "level_and_topic",
           "load_seed_texts", "parse_generated", "seed_excerpt", "synthesis_completion", "synthesis_prompt",
           "training_examples"]

SOLUTION_MARK = "\nSolution:"
_OPERATORS = (("+", "add"), ("-", "sub"), ("*", "mul"), ("/", "div"))
_PARAGRAPHS = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class SeedText:
    """One seed text and where it came from: `labeled:<problem id>` or `<file name>:<paragraph number>`."""

    id: str
    text: str


@dataclass(frozen=True)
class SynthesisPrompt:
    """One prompt for the synthesizer, with the tags it was built from (they become provenance)."""

    seed_id: str
    level: int
    topic: str
    text: str


@dataclass(frozen=True)
class Parsed:
    """A written problem split into its parts; `answer` is the rationale's own `#### N`."""

    question: str
    rationale: str
    answer: float


def load_seed_texts(paths: Sequence[str | Path]) -> list[SeedText]:
    """Every blank-line-separated paragraph of every file, in order. DataError (one line, naming the file)
    for a missing, unreadable, non-UTF-8 or empty file."""
    seeds = []
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(f"seed text {path}: file not found") from None
        except UnicodeDecodeError as e:
            raise DataError(f"seed text {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise DataError(f"seed text {path}: cannot read ({e.strerror or e})") from None
        paragraphs = [p.strip() for p in _PARAGRAPHS.split(text) if p.strip()]
        if not paragraphs:
            raise DataError(f"seed text {path}: file is empty")
        seeds += [SeedText(f"{path.name}:{i}", " ".join(p.split())) for i, p in enumerate(paragraphs, start=1)]
    return seeds


def labeled_seeds(problems: Sequence[Problem]) -> list[SeedText]:
    """The labeled questions as seed texts."""
    return [SeedText(f"labeled:{p.id}", p.question) for p in problems]


def seed_excerpt(text: str, chars: int) -> str:
    """The first `chars` characters of `text` (whitespace collapsed), cut back to the last whole word."""
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    cut = text[:chars + 1].rsplit(" ", 1)[0]
    return cut if cut and len(cut) <= chars else text[:chars]


def level_and_topic(rationale: str) -> tuple[int, str]:
    """(steps, operations): the number of calculator annotations (at least 1) and the operators their left
    sides use, named (`add, mul`); `mixed` when no annotation names one. GSM8K and the synthetic task both
    write one annotation per operation step."""
    lhs = [left for left, _ in annotations(rationale)]
    ops = [name for sign, name in _OPERATORS if any(sign in left for left in lhs)]
    return max(1, len(lhs)), ", ".join(ops) or "mixed"


def synthesis_prompt(excerpt: str, level: int, topic: str) -> str:
    return ("Write a new math word problem with a step-by-step solution.\n"
            f"Level: {level} steps. Topic: {topic}.\nSeed: {excerpt}\nProblem:")


def synthesis_completion(question: str, rationale: str) -> str:
    """The training target: the shared completion format applied to `question` + solution."""
    return format_completion(f"{question.strip()}{SOLUTION_MARK} {rationale.strip()}")


def training_examples(labeled: Sequence[Problem], seed_texts: Sequence[SeedText], seed_chars: int,
                      seed: int = 0) -> list[dict[str, Any]]:
    """prompt/completion records (the SFT stage's format) teaching `prompt -> problem + solution`, with the
    seed id, level and topic of each. Problems without a rationale teach nothing and are left out."""
    rng = random.Random(f"dpost-synthesis/{seed}")
    examples = []
    for problem in labeled:
        if not problem.rationale:
            continue
        level, topic = level_and_topic(problem.rationale)
        seeds = [SeedText(f"labeled:{problem.id}", problem.question)]
        if seed_texts:
            seeds.append(rng.choice(seed_texts))
        for seed_text in seeds:
            examples.append({
                "prompt": synthesis_prompt(seed_excerpt(seed_text.text, seed_chars), level, topic),
                "completion": synthesis_completion(problem.question, problem.rationale),
                "seed_id": seed_text.id, "level": level, "topic": topic, "question_id": problem.id})
    return examples


def generation_prompts(labeled: Sequence[Problem], seed_texts: Sequence[SeedText], n: int, seed_chars: int,
                       seed: int = 0) -> list[SynthesisPrompt]:
    """`n` prompts: each takes a seed from the labeled questions and `seed_texts` and, independently, the
    level/topic tag of a labeled problem, so the synthesizer is asked for combinations it has not seen.
    Deterministic in its arguments."""
    tags = [level_and_topic(p.rationale) for p in labeled if p.rationale]
    pool = labeled_seeds(labeled) + list(seed_texts)
    if n and (not tags or not pool):
        raise DataError("synthesis needs labeled problems with rationales to take levels and topics from")
    rng = random.Random(f"dpost-synthesis-prompts/{seed}")
    prompts = []
    for _ in range(n):
        seed_text, (level, topic) = rng.choice(pool), rng.choice(tags)
        prompts.append(SynthesisPrompt(seed_text.id, level, topic,
                                       synthesis_prompt(seed_excerpt(seed_text.text, seed_chars), level, topic)))
    return prompts


def generation_requests(prompts: Sequence[SynthesisPrompt], config: SynthesisConfig,
                        seed: int = 0) -> list[DecodeRequest]:
    """One sampled decode row per prompt, calculator on: the solution's `<<expr=` get the calculator's value."""
    return [DecodeRequest(prompt=p.text, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                          calculator=True, seed=row_seed(seed, p.seed_id, i)) for i, p in enumerate(prompts)]


def parse_generated(text: str) -> Parsed | None:
    """(question, rationale, answer) from what the synthesizer wrote after `Problem:`, or None when it does
    not have the taught shape: a question (no annotation or `####` in it), `Solution:`, then a rationale with
    some reasoning and a final `#### N` (read by the one answer checker). Text after the answer is cut."""
    question, mark, rest = text.partition(SOLUTION_MARK)
    question = " ".join(question.split())
    if not mark or not question or "<<" in question or "####" in question:
        return None
    rationale = cut_after_answer(rest.strip())
    answer = extract_answer(rationale, mode="strict")
    if answer is None or not rationale.partition("####")[0].strip():
        return None
    return Parsed(question, rationale.strip(), answer)
