"""The one answer parser: sampling, labelling, serving and evaluation all read numbers through here."""

from __future__ import annotations

import math
import re
from typing import Literal

from trainers.core.calculator import format_result
from trainers.core.errors import DataError

__all__ = ["answers_match", "extract_answer", "extract_gold", "format_answer", "parse_number"]

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
