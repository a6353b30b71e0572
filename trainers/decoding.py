"""Batched, calculator-aware decoding: one `model.generate` call for many rows with different settings.

Two `LogitsProcessor`s do the work inside Hugging Face's own generation loop (KV cache, EOS handling):
- `RowSamplingProcessor` draws each row's next token with that row's own temperature, top-p and seeded
  `torch.Generator`, then leaves only that token standing, so `generate(do_sample=False)` picks it. A row's
  sample therefore does not depend on which other rows share its batch (same seed -> same text).
- `CalculatorProcessor` watches for rows whose text ends in `<<expr=`, evaluates `expr` with the safe
  calculator and forces `result>>` into that row only, token by token, while the other rows decode freely.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          StoppingCriteria, StoppingCriteriaList)

from trainers.answers import final_answer_end
from trainers.calculator import CalculatorError, calculate, pending_expression


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to decode. temperature 0 means greedy."""

    prompt: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 300
    calculator: bool = True
    seed: int = 0


@dataclass
class Decoded:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"
    calculator_overrides: list[dict[str, str]] = field(default_factory=list)


class RowSamplingProcessor(LogitsProcessor):
    """Per-row greedy / temperature / top-p sampling with per-row generators and per-row length limits."""

    def __init__(self, requests: Sequence[DecodeRequest], prompt_width: int, eos_token_id: int) -> None:
        self.requests = requests
        self.prompt_width = prompt_width
        self.eos_token_id = eos_token_id
        self.generators = [torch.Generator().manual_seed(r.seed) for r in requests]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        chosen = scores.argmax(dim=-1)
        for row, req in enumerate(self.requests):
            if step >= req.max_new_tokens:
                chosen[row] = self.eos_token_id
            elif req.temperature > 0:
                logits = scores[row].float() / req.temperature
                probs = torch.softmax(logits, dim=-1)
                if req.top_p < 1.0:
                    sorted_probs, order = probs.sort(descending=True)
                    # keep the smallest prefix whose mass reaches top_p (always at least one token)
                    drop = sorted_probs.cumsum(0) - sorted_probs >= req.top_p
                    sorted_probs[drop] = 0.0
                    probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
                chosen[row] = torch.multinomial(probs, 1, generator=self.generators[row])[0]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out


class CalculatorProcessor(LogitsProcessor):
    """Forces the calculator's `result>>` into every row whose generated text ends in `<<expr=`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, requests: Sequence[DecodeRequest],
                 prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.enabled = [r.calculator for r in requests]
        self.prompt_width = prompt_width
        self.queues: list[deque[int]] = [deque() for _ in requests]
        self.overrides: list[list[dict[str, str]]] = [[] for _ in requests]
        self.eq_token_ids = equals_token_ids(tokenizer)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] <= self.prompt_width:
            return scores
        last = input_ids[:, -1]
        triggered = torch.isin(last, self.eq_token_ids).nonzero().flatten().tolist()
        for row in triggered:
            if self.enabled[row] and not self.queues[row]:
                self._maybe_start(row, input_ids[row, self.prompt_width:])
        for row, queue in enumerate(self.queues):
            if queue:
                token = queue.popleft()
                scores[row] = float("-inf")
                scores[row, token] = 0.0
        return scores

    def _maybe_start(self, row: int, generated: torch.LongTensor) -> None:
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        expr = pending_expression(text)
        if expr is None:
            return
        try:
            result = calculate(expr)
        except CalculatorError:
            return  # the model keeps writing; a wrong result is then simply a wrong sample
        self.queues[row].extend(self.tokenizer.encode(result + ">>", add_special_tokens=False))
        self.overrides[row].append({"expr": expr, "result": result})


class FinalAnswerStop(StoppingCriteria):
    """Ends a row once it has written a complete `#### N`: whatever a model writes after its answer is
    noise (often a made-up next question) that would cost time and pollute pseudo-labels."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, rows: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.hash_ids = token_ids_where(tokenizer, lambda t: "#" in t)
        self.space_ids = token_ids_where(tokenizer, lambda t: any(c.isspace() for c in t))
        self.seen_marker = torch.zeros(rows, dtype=torch.bool)
        self.done = torch.zeros(rows, dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if input_ids.shape[1] <= self.prompt_width:
            return self.done.clone()
        last = input_ids[:, -1]
        self.seen_marker |= torch.isin(last, self.hash_ids)
        check = self.seen_marker & ~self.done & torch.isin(last, self.space_ids)
        for row in check.nonzero().flatten().tolist():
            text = self.tokenizer.decode(input_ids[row, self.prompt_width:], skip_special_tokens=True)
            if final_answer_end(text) is not None:
                self.done[row] = True
        return self.done.clone()


_TOKEN_SETS: dict[tuple[int, str], torch.Tensor] = {}


def token_ids_where(tokenizer: PreTrainedTokenizerBase, predicate, key: str | None = None) -> torch.Tensor:
    """Ids of the tokens whose text satisfies `predicate` (cached per tokenizer and predicate)."""
    cache_key = (id(tokenizer), key or predicate.__code__.co_code.hex())
    if cache_key not in _TOKEN_SETS:
        ids = [i for i in tokenizer.get_vocab().values() if predicate(tokenizer.decode([i]))]
        _TOKEN_SETS[cache_key] = torch.tensor(sorted(ids), dtype=torch.long)
    return _TOKEN_SETS[cache_key]


def equals_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of every token whose text ends in '=': only after one of these can a row need the calculator."""
    return token_ids_where(tokenizer, lambda t: t.endswith("="), key="ends-with-equals")


@torch.inference_mode()
def decode_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 requests: Sequence[DecodeRequest]) -> list[Decoded]:
    """Decode all `requests` in one `generate` call (callers chunk to their batch size)."""
    if not requests:
        return []
    tokenizer.padding_side = "left"
    enc = tokenizer([r.prompt for r in requests], return_tensors="pt", padding=True, add_special_tokens=False)
    width = enc["input_ids"].shape[1]
    sampler = RowSamplingProcessor(requests, width, tokenizer.eos_token_id)
    calc = CalculatorProcessor(tokenizer, requests, width)
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max(r.max_new_tokens for r in requests),
        logits_processor=LogitsProcessorList([sampler, calc]),
        stopping_criteria=StoppingCriteriaList([FinalAnswerStop(tokenizer, width, len(requests))]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None,
    )
    results = []
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}  # pad follows a row stopped at its answer
    for row, req in enumerate(requests):
        ids = out[row, width:].tolist()
        end = next((i for i, t in enumerate(ids) if t in ends), None)
        stopped = end is not None or final_answer_end(tokenizer.decode(ids, skip_special_tokens=True)) is not None
        ids = ids[:end] if end is not None else ids
        results.append(Decoded(
            text=tokenizer.decode(ids, skip_special_tokens=True).strip(), num_tokens=len(ids),
            finish_reason="stop" if stopped else "length", calculator_overrides=calc.overrides[row]))
    return results


def decode_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[DecodeRequest],
               batch_size: int = 32) -> list[Decoded]:
    """Decode any number of rows in chunks of `batch_size`, grouping prompts of similar length."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    results: list[Decoded | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, decoded in zip(chunk, decode_batch(model, tokenizer, [requests[i] for i in chunk])):
            results[i] = decoded
    return results  # type: ignore[return-value]
