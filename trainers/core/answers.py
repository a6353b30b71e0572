"""The one answer checker: sampling, labelling, serving, evaluation and re-ranking read answers through here.

Two answer formats, chosen per dataset (`answer_checker(fmt)`):
  gsm8k  a number after `#### ` (GSM8K, SVAMP, MultiArith, ASDiv): parsed here, compared within a tolerance.
  boxed  the LaTeX inside the last `\\boxed{...}` (MATH): compared by `math-verify` (sympy), which decides
         `\\frac{1}{2}` = `0.5` = `1/2`. Its timeouts use SIGALRM, which only a main thread may set, so a call
         from any other thread (a Serve replica's request thread, a Ray Train worker's training thread) runs in a
         one-process pool whose main thread does the work (`_boxed_equivalent_many`).
The module-level GSM8K functions (`extract_answer`, `extract_gold`, `answers_match`) are the gsm8k checker's.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import math
import multiprocessing
import re
import threading
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence, Union

from trainers.core.calculator import format_result
from trainers.core.errors import ConfigError, DataError

__all__ = ["ANSWER_FORMATS", "Answer", "AnswerChecker", "AnswerFormat", "Label", "answer_checker", "answers_match",
           "extract_answer", "extract_boxed", "extract_gold", "format_answer", "parse_number"]

AnswerFormat = Literal["gsm8k", "boxed"]
ANSWER_FORMATS: tuple[str, ...] = ("gsm8k", "boxed")
# A gsm8k answer is a float; a boxed answer is the LaTeX string inside `\boxed{}`.
Answer = Union[float, str]

# ASCII digits only: `\d` and float() would also accept unicode digits such as '٣'.
_UNSIGNED = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+"
_NUMBER = (
    r"(?P<sign>[-+\u2212]?)[$€£]?(?P<sign2>[-+\u2212]?)"
    rf"(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>[0-9]+)(?![0-9]|[.,][0-9]))?"
)
_WHOLE = re.compile(r"\s*" + _NUMBER)
# A sign only counts where it cannot be a binary minus (`10-5` ends in 5, not -5).
_IN_TEXT = re.compile(r"(?<![0-9A-Za-z).])" + _NUMBER)
# What may follow a number in parse_number: units, `%`, punctuation; not more digits (`1,0000`, `1,2`).
_AMBIGUOUS_REST = re.compile(r"[.,/]?[0-9]")


def _value(match: re.Match[str]) -> float | None:
    if match.group("sign") and match.group("sign2"):
        return None  # `--5`, `-$-5`
    value = float(match.group("num").replace(",", ""))
    if match.group("den") is not None:
        # Only integer/integer is a simple fraction; `1.5/3` does not get here (num must be an integer).
        if "." in match.group("num") or "e" in match.group("num").lower():
            return None
        den = int(match.group("den"))
        if den == 0:
            return None
        value /= den
    if (match.group("sign") or match.group("sign2")) in ("-", "\u2212"):
        value = -value
    return value if math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """One number string to a float (`1,000`, `$5`, `5.`, `-3`, `0.50`, `3/4`, `50%`, `9 (apples)`); None if none."""
    match = _WHOLE.match(text)
    if match is None or _AMBIGUOUS_REST.match(text, match.end()):
        return None
    return _value(match)


def extract_gold(answer: str) -> float:
    """The gold answer after the last `#### ` of a GSM8K answer; DataError if it is missing or not a number."""
    _, sep, tail = answer.rpartition("#### ")
    if not sep:
        raise DataError(f"no '#### ' final answer in {answer[-80:]!r}")
    value = parse_number(tail.strip())
    if value is None:
        raise DataError(f"final answer is not a number: {tail.strip()[:80]!r}")
    return value


def _last_number(text: str) -> float | None:
    for match in reversed(list(_IN_TEXT.finditer(text))):
        value = _value(match)
        if value is not None:
            return value
    return None


def extract_answer(text: str, mode: Literal["strict", "flexible"] = "flexible") -> float | None:
    """A model's final answer. strict: the number right after the first `####`; flexible: that, else the
    last number in the text. A trailing unfinished `<<...` annotation is ignored in both modes."""
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    opened = text.rfind("<<")
    if opened >= 0 and text.find(">>", opened) < 0:
        text = text[:opened]
    # The first `####` is what the model committed to; a sample that runs on into a made-up next
    # question can write another one (lm-eval's strict-match also takes the first).
    marker = text.find("####")
    if marker >= 0:
        line = text[marker + 4 :].split("\n", 1)[0]
        value = parse_number(line)
        if value is not None:
            return value
    if mode == "strict":
        return None
    return _last_number(text)


_FINAL = re.compile(r"####[ \t]*" + _NUMBER)


def final_answer_end(text: str) -> int | None:
    """Where the first `#### N` ends, once N is certainly complete (whitespace follows it), else None.
    Decoding stops a row there, and a pseudo-label is cut there, so nothing after the answer is learnt."""
    match = _FINAL.search(text)
    if match is None or match.end() >= len(text) or not text[match.end()].isspace():
        return None
    return match.end()


def cut_after_answer(text: str) -> str:
    """The rationale up to and including its first complete `#### N` (unchanged if it has none)."""
    end = final_answer_end(text + "\n")
    return text[:end] if end is not None else text


def answers_match(pred: float | None, gold: float, tol: float = 1e-4) -> bool:
    """True when pred is within tol of gold, absolute below 1 and relative above (None never matches)."""
    if pred is None:
        return False
    return abs(pred - gold) <= tol * max(1.0, abs(gold))


def format_answer(value: float) -> str:
    """`72`, `2.5`, `0.3333`: the same formatter the calculator writes with. Magnitudes past the
    calculator's range (a model can write any digit string) are shown in short scientific form."""
    if not math.isfinite(value) or abs(value) >= 1e15:
        return f"{value:.6g}"
    return format_result(value)


# ---------------------------------------------------------------------------------------------- boxed (MATH)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """The contents of the last complete, non-empty `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces
    included, stripped; None when there is none. The last one is MATH's final answer."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start, i = 1, match.end(), match.end()
        while i < len(text):
            char = text[i]
            if char == "\\":
                i += 2  # an escaped character (`\\{`, `\\}`, `\\\\`) is no brace
                continue
            depth += (char == "{") - (char == "}")
            if depth == 0:
                content = text[start:i].strip()
                if content:
                    return content
                break
            i += 1
    return None


_MV_TIMEOUT_S = 5  # math-verify's own default, per parse and per comparison


def _mv_parse(answer: str, timeout: int):
    from math_verify import parse

    # Wrapped in \boxed{} so math-verify reads the whole string as one LaTeX answer (`x=3`, `\frac12`, `1/2`).
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)


@functools.lru_cache(maxsize=65536)
def _boxed_equivalent_here(pred: str, gold: str) -> bool:
    """math-verify's verdict in this thread; its own SIGALRM timeouts bound a pathological sympy case."""
    from math_verify import verify

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("math-verify's timeouts need the main thread; use _boxed_equivalent_many")
    parsed_gold, parsed_pred = _mv_parse(gold, _MV_TIMEOUT_S), _mv_parse(pred, _MV_TIMEOUT_S)
    if not parsed_gold or not parsed_pred:
        return pred.strip() == gold.strip()  # a side math-verify cannot read: only the same text matches
    return bool(verify(parsed_gold, parsed_pred, timeout_seconds=_MV_TIMEOUT_S))


def _boxed_equivalent_batch(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """`_boxed_equivalent_here` for each pair: on the caller's main thread, or in the pool's process."""
    return [_boxed_equivalent_here(pred, gold) for pred, gold in pairs]


_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
# A whole batch of comparisons in the pool, each one bounded by _MV_TIMEOUT_S (parse and verify, both sides).
_BATCH_TIMEOUT_S = 60.0


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    """One worker process, started on first use: spawned (not forked) because the callers are threaded
    processes (Ray workers) where a fork can copy a lock another thread holds."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ProcessPoolExecutor(max_workers=1,
                                                           mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_POOL.shutdown, wait=False, cancel_futures=True)
        return _POOL


def _boxed_equivalent_many(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """math-verify's verdict on each (pred, gold): here on the main thread, else in the pool's process."""
    if threading.current_thread() is threading.main_thread():
        return _boxed_equivalent_batch(pairs)
    if not pairs:
        return []
    global _POOL
    try:
        return _pool().submit(_boxed_equivalent_batch, list(pairs)).result(timeout=_BATCH_TIMEOUT_S)
    except concurrent.futures.process.BrokenProcessPool:
        with _POOL_LOCK:  # the worker died (out of memory, killed): the next call starts a new one
            _POOL = None
        raise


# ---------------------------------------------------------------------------------------------- one checker


@dataclass(frozen=True)
class Label:
    """A completion checked against its gold answer: what `extract` reads in each mode and whether it is right."""

    answer: Answer | None  # flexible
    strict_answer: Answer | None
    correct: bool  # strict: training labels need a well-formed final answer
    correct_flexible: bool


@dataclass(frozen=True)
class AnswerChecker:
    """The answer rules of one dataset format. `answer_checker(fmt)` gives one; every caller that reads,
    compares or groups answers goes through it, so labels, votes and clusters agree.

    gsm8k: strict is the number after the first `####`, flexible falls back to the last number; equal within
        `tol` (absolute below 1, relative above).
    boxed: strict is the last `\\boxed{}`, flexible falls back to the last number in the text; equal when
        math-verify says so (`verify(gold, pred)`: not symmetric, the second argument plays gold).
    """

    format: AnswerFormat = "gsm8k"
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if self.format not in ANSWER_FORMATS:
            raise ConfigError(f"unknown answer format {self.format!r}; expected one of {', '.join(ANSWER_FORMATS)}")

    def gold(self, solution: str) -> Answer:
        """The gold answer written in a reference solution; DataError when it has none."""
        if self.format == "gsm8k":
            return extract_gold(solution)
        boxed = extract_boxed(solution)
        if boxed is None:
            raise DataError(f"no \\boxed{{}} final answer in {solution[-80:]!r}")
        return boxed

    def extract(self, text: str, mode: Literal["strict", "flexible"] = "flexible") -> Answer | None:
        """A model's final answer, or None."""
        if self.format == "gsm8k":
            return extract_answer(text, mode)
        if mode not in ("strict", "flexible"):
            raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
        boxed = extract_boxed(text)
        if boxed is not None or mode == "strict":
            return boxed
        value = _last_number(text)
        return None if value is None else format_answer(value)

    def equivalent(self, pred: Answer | None, gold: Answer | None) -> bool:
        """Whether `pred` is the same answer as `gold` (None never is)."""
        return self.equivalent_many([(pred, gold)])[0]

    def equivalent_many(self, pairs: Iterable[tuple[Answer | None, Answer | None]]) -> list[bool]:
        """`equivalent` for many (pred, gold) pairs at once: one trip to math-verify's process off the main thread."""
        pairs = list(pairs)
        if self.format == "gsm8k":
            return [gold is not None and answers_match(_float(pred), float(gold), self.tol) for pred, gold in pairs]
        checked = [i for i, (pred, gold) in enumerate(pairs) if pred is not None and gold is not None]
        verdicts = _boxed_equivalent_many([(str(pairs[i][0]), str(pairs[i][1])) for i in checked])
        result = [False] * len(pairs)
        for i, verdict in zip(checked, verdicts):
            result[i] = verdict
        return result

    def label(self, text: str, gold: Answer) -> Label:
        """Both readings of a completion and whether each matches `gold`."""
        answer, strict = self.extract(text, "flexible"), self.extract(text, "strict")
        correct_strict, correct_flexible = self.equivalent_many([(strict, gold), (answer, gold)])
        return Label(answer, strict, correct_strict, correct_flexible)


def _float(value: Answer | None) -> float | None:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, str):
        return parse_number(value)
    return float(value)


def answer_checker(fmt: str = "gsm8k", tol: float = 1e-4) -> AnswerChecker:
    """The checker for a dataset's answer format (`gsm8k` or `boxed`); ConfigError for any other."""
    return AnswerChecker(fmt, tol)  # type: ignore[arg-type]
