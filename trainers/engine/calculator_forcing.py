"""What the calculator forces into a row, under any tokenizer.

Real vocabularies merge `=`, `<<` and `>>` with their neighbours (`)=`, `=$`, ` <<`, `>>.`) and write numbers
as multi-digit pieces (`4140` -> `4` + `140`, or `414` + `0`), so "the row's last token is `=`" and "force the
result one character at a time" are both wrong in general. `plan_forcing` works on text instead:

- a row needs the calculator when its newest token put an `=` that closes `<<expr=` (the token may carry more
  text after the `=`, e.g. `=$`: that text is dropped, the calculator writes the right-hand side);
- the newest token is not in the model's cache yet (the engine feeds each token on the next step), so it is
  replaced: from its start, the row gets the tokenizer's own encoding of `<that token's text up to the '='>
  + result + '>>'`, encoded in the context of the row's text, so the ids are the ones the tokenizer gives
  the whole text whenever it puts a token boundary where the row's committed tokens end. Where one of its
  tokens would cross that boundary (the model wrote `)` then `=`, the tokenizer writes `)=`), the committed
  tokens cannot change, and the continuation is encoded on its own.

Text after the forced `>>` is the model's again; a merge across that end (`>>` + `.` -> `>>.`) is the one
place the row's ids may differ from the tokenizer's encoding of its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from transformers import PreTrainedTokenizerBase

from trainers.core.calculator import CalculatorError, calculate, pending_expression
from trainers.engine.fast_tokenizer import decode, encode_remembered, piece_texts, row_cut, text_of


@dataclass(frozen=True)
class Forcing:
    """The calculator's answer to an open `<<expr=`: `ids` replace the row's newest token."""

    expr: str
    result: str
    ids: list[int]


def plan_forcing(tokenizer: PreTrainedTokenizerBase, generated: Sequence[int]) -> Forcing | None:
    """The forcing a row needs after its newest token (`generated[-1]`), or None (no `=` closing an open
    `<<expr=` in it, or an expression the safe calculator refuses)."""
    if not generated:
        return None
    text = text_of(tokenizer, generated)
    newest = (piece_texts(tokenizer) or {}).get(generated[-1])
    if newest is not None and text.endswith(newest):  # the row's text is its tokens' texts joined
        before = text[:len(text) - len(newest)]
    else:
        before = decode(tokenizer, generated[:-1], skip_special_tokens=True)
    if not text.startswith(before):  # a multi-token character: no '=' was just written
        return None
    for cut in range(len(text), len(before), -1):  # the newest token's '='s, last first
        if text[cut - 1] != "=":
            continue
        expr = pending_expression(text[:cut])
        if expr is None:
            continue
        try:
            result = calculate(expr)
        except CalculatorError:
            return None  # the model keeps writing; a wrong result is then simply a wrong sample
        return Forcing(expr, result, encode_after(tokenizer, before, text[len(before):cut] + result + ">>"))
    return None


def encode_after(tokenizer: PreTrainedTokenizerBase, before: str, continuation: str) -> list[int]:
    """Ids that write `continuation` after the text `before`: the tail of the tokenizer's encoding of
    `before + continuation` when that encoding has a token boundary where `before` ends, else
    `continuation` encoded on its own. Only `before`'s end is encoded where the tokenizer allows it
    (`row_cut`): the ids are the same, and encoding the whole row was most of a forcing's cost. Where a
    piece starts at `before`'s end (`=24>>` after `48/2`), the tail is the continuation's own encoding."""
    cut = row_cut(tokenizer, before, continuation)
    full = encode_remembered(tokenizer, before[cut:] + continuation)
    if cut == len(before):
        return full
    for start, tail in _tails(tokenizer, full):
        if tail == continuation:
            return full[start:]
        if len(tail) > len(continuation):
            break
    return encode_remembered(tokenizer, continuation)


def _tails(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> Iterator[tuple[int, str]]:
    """(start, the text of ids[start:]) for start from the last id down: joined from the tokens' own texts
    where `piece_texts` lists them all, else decoded."""
    texts = piece_texts(tokenizer)
    if texts is not None and all(i in texts for i in ids):
        tail = ""
        for start in range(len(ids) - 1, -1, -1):
            tail = texts[ids[start]] + tail
            yield start, tail
    else:
        for start in range(len(ids) - 1, -1, -1):
            yield start, decode(tokenizer, ids[start:])
