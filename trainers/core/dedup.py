"""Dedup of sampled rationales before they join the SFT set: word-set Jaccard (the paper) or equation lists (RFT)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from trainers.core.calculator import annotations
from trainers.core.errors import ConfigError

__all__ = ["DEDUP_METHODS", "dedup", "dedup_clusters", "equations", "jaccard", "near_duplicates_of", "register_dedup",
           "tokens"]

# A method maps (texts, threshold) to, for each text, the index of the kept text it was merged into.
DedupMethod = Callable[[Sequence[str], float], list[int]]
DEDUP_METHODS: dict[str, DedupMethod] = {}

# Numbers keep their decimal point and lose thousands separators, so `1,000` and `1000` are one token.
_TOKEN = re.compile(r"[0-9]+(?:[.,][0-9]+)*|[^\W\d_]+")
_SPACE = re.compile(r"\s+")


def tokens(text: str) -> frozenset[str]:
    """The lowercased words and numbers of text, punctuation ignored."""
    return frozenset(t.replace(",", "") for t in _TOKEN.findall(text.lower()))


def _jaccard_sets(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0  # two texts with no words are the same text as far as dedup can tell
    return len(a & b) / len(a | b)


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the token sets of a and b (1.0 for two texts without tokens)."""
    return _jaccard_sets(tokens(a), tokens(b))


def near_duplicates_of(texts: Sequence[str], references: Sequence[str], threshold: float) -> list[bool]:
    """For each text, whether some reference has Jaccard similarity >= threshold to it. Each text is
    tokenized once, and a reference is compared only when its size allows it: |A & B| / |A | B| >= t needs
    t * |A| <= |B| <= |A| / t (a filter against a whole labeled set stays fast)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"jaccard dedup threshold must be in [0, 1], got {threshold}")
    by_size: dict[int, list[frozenset[str]]] = {}
    for reference in references:
        ref = tokens(reference)
        by_size.setdefault(len(ref), []).append(ref)
    flags = []
    for text in texts:
        s = tokens(text)
        low, high = threshold * len(s), len(s) / threshold if threshold else float("inf")
        flags.append(any(_jaccard_sets(s, ref) >= threshold
                         for size, refs in by_size.items() if low <= size <= high for ref in refs))
    return flags


def equations(text: str) -> tuple[str, ...]:
    """The calculator equations of text in order, as `lhs=rhs` without whitespace: RFT's reasoning path."""
    return tuple(_SPACE.sub("", f"{lhs}={rhs}") for lhs, rhs in annotations(text))


def register_dedup(name: str) -> Callable[[DedupMethod], DedupMethod]:
    """Decorator adding a dedup method under name."""

    def add(method: DedupMethod) -> DedupMethod:
        if name in DEDUP_METHODS:
            raise ValueError(f"dedup method {name!r} is already registered")
        DEDUP_METHODS[name] = method
        return method

    return add


@register_dedup("jaccard")
def _by_jaccard(texts: Sequence[str], threshold: float) -> list[int]:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"jaccard dedup threshold must be in [0, 1], got {threshold}")
    sets = [tokens(t) for t in texts]
    kept: list[int] = []
    clusters: list[int] = []
    for i, s in enumerate(sets):
        # Merge into the most similar kept text (earliest on ties), which is the best provenance.
        best, best_sim = i, -1.0
        for k in kept:
            sim = _jaccard_sets(s, sets[k])
            if sim >= threshold and sim > best_sim:
                best, best_sim = k, sim
        if best == i:
            kept.append(i)
        clusters.append(best)
    return clusters


@register_dedup("equations")
def _by_equations(texts: Sequence[str], threshold: float) -> list[int]:
    # threshold is unused: two paths are the same or not. Texts with no equations all share the empty path.
    first: dict[tuple[str, ...], int] = {}
    return [first.setdefault(equations(t), i) for i, t in enumerate(texts)]


def dedup_clusters(texts: Sequence[str], method: str = "jaccard", threshold: float = 0.7) -> list[int]:
    """For each text, the index of the kept text it was merged into (its own index when kept)."""
    try:
        run = DEDUP_METHODS[method]
    except KeyError:
        raise ConfigError(
            f"unknown dedup method {method!r}; known: {', '.join(sorted(DEDUP_METHODS))}"
        ) from None
    return run(texts, threshold)


def dedup(texts: Sequence[str], method: str = "jaccard", threshold: float = 0.7) -> list[int]:
    """Indices of the texts kept, in order; the first of near-duplicates wins."""
    return [i for i, c in enumerate(dedup_clusters(texts, method, threshold)) if c == i]
