"""Verifier scoring (Liu et al. 2023): how likely a causal LM finds a candidate solution correct.

Each candidate becomes `Here is a math problem: {problem}\\nHere is a candidate solution: {solution}\\nThe above
candidate solution is`, followed by either label, ` correct` or ` incorrect`. A label is scored by its whole
sequence's log-probability (in a small vocabulary it is several tokens), and

    S = p(correct) / (p(correct) + p(incorrect)) = sigmoid(log p(correct) - log p(incorrect)).

One forward pass per candidate scores both labels: its row is `prompt + correct + incorrect`, with position ids
that restart the second label where the first began and an attention mask that hides the first label from the
second, so each label sees exactly the prompt and itself, as if scored alone. Rows go in right-padded batches
sorted by length (so rows batched together pad little); padding sits after every real token and attends only to
itself, so a row scores the same in any batch.
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
    keep = limit - max(len(label) for label in labels)
    logprobs = _label_logprobs(model, tokenizer, [prompt[-keep:] for prompt in prompts], labels,
                               max(1, int(batch_size)))
    right, wrong = torch.tensor(logprobs).T
    return torch.sigmoid(right - wrong).tolist()


def _label_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]],
                    labels: Sequence[list[int]], batch_size: int) -> list[list[float]]:
    """log p(label | prompt) of every label, for each prompt: the sum over the label's tokens, all labels of
    one prompt in one row."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    suffix = sum(len(label) for label in labels)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    result: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = [prompts[i] for i in order[start:start + batch_size]]
        width = max(len(p) for p in batch) + suffix
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)  # padding sees itself only
        for b, prompt in enumerate(batch):
            n = len(prompt)
            ids[b, :n] = torch.tensor(prompt)
            positions[b, :n] = torch.arange(n)
            allowed[b, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
            at = n
            for label in labels:  # each label after the prompt, blind to the labels before it
                k = len(label)
                ids[b, at:at + k] = torch.tensor(label)
                positions[b, at:at + k] = torch.arange(n, n + k)
                allowed[b, at:at + k, :n] = True
                allowed[b, at:at + k, at:at + k] = torch.ones(k, k, dtype=torch.bool).tril()
                at += k
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits, dim=-1)
        for b, prompt in enumerate(batch):
            n, at, scores = len(prompt), len(prompt), []
            for label in labels:
                # a label's first token is predicted at the prompt's last position, the rest inside the label
                predictors = torch.tensor([n - 1] + list(range(at, at + len(label) - 1)), device=logp.device)
                scores.append(float(logp[b, predictors, torch.tensor(label, device=logp.device)].sum()))
                at += len(label)
            result[order[start + b]] = scores
    return result
