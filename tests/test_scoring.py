"""Verifier scoring: S = p(correct) / (p(correct) + p(incorrect)) over whole label sequences, batched."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.engine.scoring import LABELS, score_candidates, verifier_prompt
from trainers.models.checkpoints import load_policy

PROBLEMS = ["Ava has 3 pens and buys 4 more. How many pens does she have?", "What is 6 times 7?",
            "Tom had 10 apples and ate 2.", "x"]
SOLUTIONS = ["3 + 4 = <<3+4=7>>7\n#### 7", "6 * 7 = 42, so the answer is 41.\n#### 41",
             "He has 10 - 2 = <<10-2=8>>8 apples left, which is a longer solution than the others.\n#### 8", "1"]


@pytest.fixture(scope="module")
def policy(base_checkpoint):
    return load_policy(base_checkpoint)


def _full_sequence_logprob(model, tokenizer, prompt: str, label: str) -> float:
    """log p(label | prompt) from one unbatched forward pass, summed token by token."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    label_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([prompt_ids + label_ids])).logits[0].float(), dim=-1)
    return sum(float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(label_ids))


def test_scores_are_probabilities_from_whole_label_sequences(policy) -> None:
    model, tokenizer = policy
    lengths = [len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in LABELS]
    print(f"label tokens in the tiny vocabulary: {dict(zip(LABELS, lengths))}")
    scores = score_candidates(model, tokenizer, PROBLEMS, SOLUTIONS)
    assert len(scores) == len(PROBLEMS) and all(0.0 < s < 1.0 for s in scores)
    prompt = verifier_prompt(PROBLEMS[1], SOLUTIONS[1])
    right, wrong = (_full_sequence_logprob(model, tokenizer, prompt, label) for label in LABELS)
    assert scores[1] == pytest.approx(1 / (1 + math.exp(wrong - right)), abs=1e-5)


def test_a_candidate_scores_the_same_alone_and_in_any_batch(policy) -> None:
    model, tokenizer = policy
    alone = [score_candidates(model, tokenizer, [p], [s])[0] for p, s in zip(PROBLEMS, SOLUTIONS)]
    for batch_size in (1, 3, 16):
        assert score_candidates(model, tokenizer, PROBLEMS, SOLUTIONS, batch_size) == pytest.approx(alone, abs=1e-5)
    assert score_candidates(model, tokenizer, PROBLEMS[::-1], SOLUTIONS[::-1]) == pytest.approx(alone[::-1], abs=1e-5)


def test_prompt_is_the_papers_and_mismatched_inputs_are_refused(policy) -> None:
    assert verifier_prompt(" 1+1? ", "2\n") == ("Here is a math problem: 1+1?\nHere is a candidate solution: 2\n"
                                               "The above candidate solution is")
    model, tokenizer = policy
    assert score_candidates(model, tokenizer, [], []) == []
    with pytest.raises(ValueError, match="2 problems for 1 solutions"):
        score_candidates(model, tokenizer, ["a", "b"], ["c"])


def test_both_labels_of_every_candidate_come_from_one_forward_pass(policy) -> None:
    model, tokenizer = policy
    rows = []  # rows per forward call
    handle = model.register_forward_hook(lambda module, args, kwargs, output: rows.append(len(kwargs["input_ids"])),
                                         with_kwargs=True)
    try:
        scores = score_candidates(model, tokenizer, PROBLEMS, SOLUTIONS, batch_size=len(PROBLEMS))
    finally:
        handle.remove()
    assert rows == [len(PROBLEMS)] and len(scores) == len(PROBLEMS)  # one row per candidate, both labels in it
