"""`encode` and `decode` for the decode loop: straight to a fast tokenizer's Rust backend where that gives what
the transformers call gives; and where a row's text can be worked on in part.

The calculator encodes and decodes a row's text inside the decode loop, and the engine decodes rows to find
where they end. For short texts the Python wrapper's per-call work (argument handling, converting every id
with `to_py_obj`, settings) costs more than the Rust call itself, so these call the backend directly unless the
tokenizer holds a setting only the wrapper applies; then they call the wrapper. Inside the loop every call runs
with cold caches, so the calculator also makes fewer and smaller ones where the tokenizer's kind allows it:
`space_cut` (encode only the row's end) and `piece_texts` (join token texts instead of decoding).
"""

from __future__ import annotations

import functools
import json
import weakref
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


@per_tokenizer
def visible_token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """`tokenizer.decode([id], skip_special_tokens=True)` of every id: `token_texts` but '' for the tokens a
    decoded row leaves out. Only added and special tokens can be left out, so only they are decoded again."""
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

def _space_led(pre_tokenizer: dict) -> tuple[bool, bool]:
    """(whether the pre-tokenizer only splits pieces and maps their characters, whether it splits before every
    space that follows a non-space character)."""
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":  # splitting an already split text further never joins pieces
        parts = [_space_led(p) for p in pre_tokenizer["pretokenizers"]]
        return all(only for only, _ in parts), any(splits for _, splits in parts)
    if kind == "ByteLevel":  # its regex is GPT-2's; a prefix space is added only to pieces without one
        return True, bool(pre_tokenizer.get("use_regex", True))
    if kind == "Digits":  # digits from the rest, or each digit on its own
        return True, False
    if kind == "Split":
        known = (pre_tokenizer.get("behavior") == "Isolated" and not pre_tokenizer.get("invert")
                 and pre_tokenizer.get("pattern", {}).get("Regex") in _SPACE_LED_PATTERNS)
        return known, known
    return False, False


@per_tokenizer
def cuts_at_spaces(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's encoding of any text starts a new piece at every space that follows a printable
    non-space ASCII character, so that its ids after that space are the ids of the text from there on: true
    without a normalizer, with a pre-tokenizer built only of ByteLevel, Digits and Split by a known
    space-led pattern (`_SPACE_LED_PATTERNS`), at least one of which splits (ByteLevel with its regex, or the
    Split), and with no added token that holds whitespace or strips it. Other tokenizers (SentencePiece's
    normalizers, WordPiece's, unknown patterns, no splitting) get False."""
    backend = _backend(tokenizer)
    if backend is None or backend.normalizer is not None or backend.pre_tokenizer is None:
        return False
    if not all(_space_led(json.loads(backend.pre_tokenizer.__getstate__()))):
        return False
    return all(not any(c.isspace() for c in t.content) and not t.lstrip and not t.rstrip
               for t in backend.get_added_tokens_decoder().values())


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
