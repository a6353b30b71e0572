"""Verifier scoring (Liu et al. 2023): how likely a causal LM finds a candidate solution correct.

Each candidate becomes `Here is a math problem: {problem}\\nHere is a candidate solution: {solution}\\nThe above
candidate solution is`, followed by either label, ` correct` or ` incorrect`. A label is scored by its whole
sequence's log-probability (in a small vocabulary it is several tokens), and

    S = p(correct) / (p(correct) + p(incorrect)) = sigmoid(log p(correct) - log p(incorrect)).

One forward pass per candidate per label, in right-padded batches sorted by length (so rows batched together
pad little); padding sits after every real token, so causal attention never sees it and a row scores the same
in any batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LABELS", "VERIFIER_TEMPLATE", "score_candidates", "verifier_prompt"]

VERIFIER_TEMPLATE = ("Here is a math problem: {problem}\nHere is a candidate solution: {solution}\n"
                     "The above candidate solution is")
LABELS = (" correct", " incorrect")  # (right, wrong): what the verifier is trained to write next


def verifier_prompt(problem: str, solution: str) -> str:
    return VERIFIER_TEMPLATE.format(problem=problem.strip(), solution=solution.strip())


@torch.inference_mode()
def score_candidates(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[str],
                     solutions: Sequence[str], batch_size: int = 16) -> list[float]:
    """S for each (problem, solution) pair, in order. A prompt longer than the model's context keeps its end
    (the solution's final answer and the question to be answered) and loses its start."""
    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems for {len(solutions)} solutions")
    if not problems:
        return []
    prompts = tokenizer([verifier_prompt(p, s) for p, s in zip(problems, solutions)],
                        add_special_tokens=False)["input_ids"]
    labels = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in LABELS]
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 10**9
    rows = [(prompt[-(limit - len(label)):], label) for prompt in prompts for label in labels]
    logprobs = _label_logprobs(model, tokenizer, rows, max(1, int(batch_size)))
    right, wrong = torch.tensor(logprobs[0::2]), torch.tensor(logprobs[1::2])
    return torch.sigmoid(right - wrong).tolist()


def _label_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    rows: Sequence[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """log p(label | prompt) for each (prompt ids, label ids) row: the sum over the label's tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    result = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start:start + batch_size]]
        width = max(len(p) + len(l) for p, l in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (prompt, label) in enumerate(batch):
            ids[b, :len(prompt) + len(label)] = torch.tensor(prompt + label)
            mask[b, :len(prompt) + len(label)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits, dim=-1)
        for b, (prompt, label) in enumerate(batch):
            # the token at position t is predicted by the logits at t - 1
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(label) - 1, device=logp.device)
            targets = torch.tensor(label, device=logp.device)
            result[order[start + b]] = float(logp[b, positions, targets].sum())
    return result
