"""`encode` and `decode` for the decode loop: straight to a fast tokenizer's Rust backend where that gives what
the transformers call gives; and where a row's text can be worked on in part.

The calculator encodes and decodes a row's text inside the decode loop, and the engine decodes rows to find
where they end. For short texts the Python wrapper's per-call work (argument handling, converting every id
with `to_py_obj`, settings) costs more than the Rust call itself, so these call the backend directly unless the
tokenizer holds a setting only the wrapper applies; then they call the wrapper. Inside the loop every call runs
with cold caches, so the calculator also makes fewer and smaller ones where the tokenizer's kind allows it:
`row_cut` (encode only the row's end) and `piece_texts` (join token texts instead of decoding).
"""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from transformers import PreTrainedTokenizerBase

from trainers.models.scratch import LLAMA3_PATTERN


T = TypeVar("T")

# Keyed by the tokenizer object itself, held weakly: an entry lives exactly as long as its tokenizer (a hot
# swap's old model takes its entries with it), and a new tokenizer never finds another one's.
_PER_TOKENIZER: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[str, Any]] = weakref.WeakKeyDictionary()


def per_tokenizer(compute: Callable[[PreTrainedTokenizerBase], T]) -> Callable[[PreTrainedTokenizerBase], T]:
    """`compute(tokenizer)`, computed once per tokenizer object (what the decode loop reads about a vocabulary)."""
    key = f"{compute.__module__}.{compute.__qualname__}"

    @functools.wraps(compute)
    def cached(tokenizer: PreTrainedTokenizerBase) -> T:
        entries = _PER_TOKENIZER.setdefault(tokenizer, {})
        if key not in entries:
            entries[key] = compute(tokenizer)
        return entries[key]

    return cached


def _backend(tokenizer: PreTrainedTokenizerBase):
    return getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """`tokenizer.encode(text, add_special_tokens=False)`; the backend directly unless it holds truncation,
    padding or special-token settings a wrapper call would have reset."""
    backend = _backend(tokenizer)
    if (backend is not None and backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))):
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


# The most texts `encode_remembered` keeps per tokenizer before it starts again.
MAX_REMEMBERED = 65536


@per_tokenizer
def _remembered(tokenizer: PreTrainedTokenizerBase) -> dict[str, tuple[int, ...]]:
    return {}


def encode_remembered(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """`encode`, remembered per tokenizer (`forget_encodings` forgets): what the calculator encodes repeats
    (the samples of a question write the same annotations, and many questions the same `=24>>`), and inside
    the decode loop each encode runs on cold caches."""
    memo = _remembered(tokenizer)
    ids = memo.get(text)
    if ids is None:
        if len(memo) >= MAX_REMEMBERED:
            memo.clear()
        ids = memo[text] = tuple(encode(tokenizer, text))
    return list(ids)


def forget_encodings(tokenizer: PreTrainedTokenizerBase) -> None:
    _remembered(tokenizer).clear()


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """`tokenizer.decode(ids, skip_special_tokens=...)`; the backend directly unless the tokenizer cleans up
    tokenization spaces, which only the wrapper does."""
    backend = _backend(tokenizer)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@per_tokenizer
def token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """`tokenizer.decode([id])` of every id in the vocabulary, added tokens included: the one pass over the
    vocabulary that every per-token table of the decode loop is read from (a 150k vocabulary takes seconds)."""
    return {i: tokenizer.decode([i]) for i in tokenizer.get_vocab().values()}


def visible_token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """`tokenizer.decode([id], skip_special_tokens=True)` of every id: `token_texts` but '' for the tokens a
    decoded row leaves out. Only added and special tokens can be left out, so only they are decoded again.
    Not kept: the tables read from it are."""
    texts = dict(token_texts(tokenizer))
    for i in set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids):
        if i in texts:
            texts[i] = tokenizer.decode([i], skip_special_tokens=True)
    return texts


@per_tokenizer
def piece_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str] | None:
    """Each token's own text, for tokenizers whose `decode` is the UTF-8 of their tokens' bytes one after
    another (a byte-level decoder, no clean-up): the text of ids that are all keys here is their texts joined,
    no decode call needed. Only tokens that are whole characters are keys (a token holding part of a character
    decodes to U+FFFD alone), added tokens never. None for other tokenizers."""
    from tokenizers import decoders

    backend = _backend(tokenizer)
    if (backend is None or not isinstance(backend.decoder, decoders.ByteLevel)
            or getattr(tokenizer, "clean_up_tokenization_spaces", True)):
        return None
    added = set(backend.get_added_tokens_decoder())
    # without a clean-up the wrapper's decode is the backend's
    return {i: t for i, t in token_texts(tokenizer).items() if i not in added and "\ufffd" not in t}


def text_of(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """`decode(tokenizer, ids, skip_special_tokens=True)`: the tokens' texts joined where `piece_texts` lists
    them all (no special tokens among them then), which costs a fraction of a decode call."""
    texts = piece_texts(tokenizer)
    if texts is not None:
        try:
            return "".join([texts[i] for i in ids])
        except KeyError:
            pass
    return decode(tokenizer, ids, skip_special_tokens=True)


# A Split pre-tokenizer with one of these patterns never puts a non-space character and the space after it in
# one piece: each alternative takes a space only as its first character, or takes nothing but whitespace.
# GPT-2's pattern (ByteLevel's own regex) has the same property. Qwen2's (in the tokenizer.json of Qwen2, 2.5
# and 3) is Llama-3's with single digits.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
_SPACE_LED_PATTERNS = frozenset({LLAMA3_PATTERN, QWEN2_PATTERN})

@dataclass(frozen=True)
class _Cuts:
    """What a pre-tokenizer guarantees about where pieces start."""

    only_splits: bool  # it only splits pieces and maps their characters (never joins, never reorders)
    at_spaces: bool  # a piece starts at every space that follows a non-space character
    at_equals: bool  # a piece starts at every '=' that follows an ASCII digit
    # it may put a space in front of a piece that has none (ByteLevel's add_prefix_space): no harm to a cut at
    # a space, but a piece cut at an '=' would get one that the whole text's does not
    prepends: bool = False


def _cuts(pre_tokenizer: dict) -> _Cuts:
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":  # splitting an already split text further never joins pieces
        parts = [_cuts(p) for p in pre_tokenizer["pretokenizers"]]
        return _Cuts(all(p.only_splits for p in parts), any(p.at_spaces for p in parts),
                     any(p.at_equals for p in parts), any(p.prepends for p in parts))
    if kind == "ByteLevel":  # its regex is GPT-2's: digit runs and punctuation runs are pieces of their own
        regex = bool(pre_tokenizer.get("use_regex", True))
        return _Cuts(True, regex, regex, bool(pre_tokenizer.get("add_prefix_space", False)))
    if kind == "Digits":  # digits from the rest, or each digit on its own
        return _Cuts(True, False, True)
    if kind == "Split":  # the known patterns: digits alone, punctuation runs never take a digit
        known = (pre_tokenizer.get("behavior") == "Isolated" and not pre_tokenizer.get("invert")
                 and pre_tokenizer.get("pattern", {}).get("Regex") in _SPACE_LED_PATTERNS)
        return _Cuts(known, known, known)
    return _Cuts(False, False, False)


def _plain_cuts(tokenizer: PreTrainedTokenizerBase) -> _Cuts | None:
    """The pre-tokenizer's cuts for a fast tokenizer without a normalizer (which could move characters across
    them); None for any other."""
    backend = _backend(tokenizer)
    if backend is None or backend.normalizer is not None or backend.pre_tokenizer is None:
        return None
    cuts = _cuts(json.loads(backend.pre_tokenizer.__getstate__()))
    return cuts if cuts.only_splits else None


@per_tokenizer
def cuts_at_spaces(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's encoding of any text starts a new piece at every space that follows a printable
    non-space ASCII character, so that its ids after that space are the ids of the text from there on: true
    without a normalizer, with a pre-tokenizer built only of ByteLevel, Digits and Split by a known
    space-led pattern (`_SPACE_LED_PATTERNS`), at least one of which splits (ByteLevel with its regex, or the
    Split), and with no added token that holds whitespace or strips it. Other tokenizers (SentencePiece's
    normalizers, WordPiece's, unknown patterns, no splitting) get False."""
    cuts = _plain_cuts(tokenizer)
    if cuts is None or not cuts.at_spaces:
        return False
    return all(not any(c.isspace() for c in t.content) and not t.lstrip and not t.rstrip
               for t in _backend(tokenizer).get_added_tokens_decoder().values())


@per_tokenizer
def cuts_at_equals(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's encoding of any text starts a new piece at every '=' that follows an ASCII digit
    (`48/2` + `=24>>`), so that its ids from that '=' on are the ids of the text from there: the same known
    pre-tokenizers as `cuts_at_spaces` (Digits also splits there), none that puts a space in front of a piece,
    and no added token holding '=' (one could span the cut)."""
    cuts = _plain_cuts(tokenizer)
    if cuts is None or not cuts.at_equals or cuts.prepends:
        return False
    return all("=" not in t.content for t in _backend(tokenizer).get_added_tokens_decoder().values())


def row_cut(tokenizer: PreTrainedTokenizerBase, text: str, more: str) -> int:
    """A position p in `text` whose ids of `text[p:] + more` are the tail of the ids of `text + more`: the end
    of `text` where `more` starts with an '=' after a digit (`cuts_at_equals`), else `space_cut`. Encoding from
    there costs a few characters instead of the whole text."""
    if more[:1] == "=" and "0" <= text[-1:] <= "9" and cuts_at_equals(tokenizer):
        return len(text)
    return space_cut(tokenizer, text)


def space_cut(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The last position p in `text` whose ids of `text[p:] + more` are the tail of the ids of `text + more`
    for any `more` (a space after a printable non-space character, where `cuts_at_spaces`); 0 where there is
    none. Encoding from there costs a few characters instead of the whole text."""
    if not cuts_at_spaces(tokenizer):
        return 0
    p = text.rfind(" ")
    while p > 0:
        if "!" <= text[p - 1] <= "~":
            return p
        p = text.rfind(" ", 0, p)
    return 0
