"""`encode` and `decode` for the decode loop: straight to a fast tokenizer's Rust backend where that gives what
the transformers call gives.

The calculator encodes and decodes a row's text inside the decode loop, and the engine decodes rows to find
where they end. For short texts the Python wrapper's per-call work (argument handling, converting every id
with `to_py_obj`, settings) costs more than the Rust call itself, so these call the backend directly unless the
tokenizer holds a setting only the wrapper applies; then they call the wrapper.
"""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase


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
