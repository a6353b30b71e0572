"""Verifier data: balanced right/wrong examples per question from sample records, in the paper's prompt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.core.errors import ConfigError, DataError
from trainers.core.metrics import auc
from trainers.data.verifier import verifier_examples, write_verifier_data
from trainers.engine.scoring import LABELS, score_candidates, verifier_prompt
from trainers.models.checkpoints import load_policy
from trainers.training.config import VerifierStageConfig
from trainers.training.ray_train import train_verifier


def _sample(qid: str, completion: str, correct: bool, index: int = 0) -> dict:
    return {"question_id": qid, "question": f"question {qid}?", "completion": completion, "correct": correct,
            "model_version": "run/sft-1", "sample_index": index, "prompt": "ignored", "answer": 1.0}


SAMPLES = [
    _sample("a", "right 1", True, 0), _sample("a", "wrong 1", False, 1), _sample("a", "right 2", True, 2),
    _sample("a", "right 1", True, 3),  # the same text again: one example at most
    _sample("a", "right 3", True, 4), _sample("a", "wrong 2", False, 5),
    _sample("b", "right", True), _sample("b", "right again", True),  # only right: nothing to contrast
    _sample("c", "wrong", False),
    _sample("d", "wrong", False), _sample("d", "right", True),
]


def test_each_question_gives_as_many_right_as_wrong_examples_in_the_papers_format() -> None:
    examples, stats = verifier_examples(SAMPLES)
    assert stats == {"questions": 4, "questions_used": 2, "skipped_only_correct": 1, "skipped_only_incorrect": 1,
                     "examples": 6}
    assert [(e["question_id"], e["completion"], e["sample_index"]) for e in examples] == [
        ("a", LABELS[0], 0), ("a", LABELS[1], 1), ("a", LABELS[0], 2), ("a", LABELS[1], 5),
        ("d", LABELS[0], 0), ("d", LABELS[1], 0)]
    first = examples[0]
    assert first["prompt"] == verifier_prompt("question a?", "right 1") and first["correct"] is True
    assert first["prompt"] + first["completion"] == ("Here is a math problem: question a?\nHere is a candidate "
                                                     "solution: right 1\nThe above candidate solution is correct")
    assert first["source"] == "run/sft-1"
    for qid in ("a", "d"):
        labels = [e["correct"] for e in examples if e["question_id"] == qid]
        assert labels.count(True) == labels.count(False)


def test_max_per_label_caps_each_question() -> None:
    examples, stats = verifier_examples(SAMPLES, max_per_label=1)
    assert [(e["question_id"], e["correct"]) for e in examples] == [("a", True), ("a", False), ("d", True),
                                                                    ("d", False)]
    with pytest.raises(ConfigError, match="max_per_label must be >= 1"):
        verifier_examples(SAMPLES, max_per_label=0)


@pytest.mark.parametrize(("sample", "message"), [
    ("text", "sample 0: expected a dict, got str"),
    ({"question_id": "a", "question": "q", "completion": "c"}, "sample 0: 'correct' must be bool, got missing"),
    ({**_sample("a", "c", True), "correct": 1}, "'correct' must be bool, got a int"),
])
def test_malformed_samples_are_one_line_data_errors(sample, message: str) -> None:
    with pytest.raises(DataError, match=message):
        verifier_examples([sample])


def test_one_question_with_two_texts_is_refused() -> None:
    with pytest.raises(DataError, match="sample 1: question 'a' has two different question texts"):
        verifier_examples([_sample("a", "x", True), {**_sample("a", "y", False), "question": "other"}])



@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.booleans()), min_size=2, max_size=30))
def test_auc_is_the_share_of_right_wrong_pairs_ordered_right(pairs) -> None:
    scores, labels = [s for s, _ in pairs], [y for _, y in pairs]
    right = [s for s, y in pairs if y]
    wrong = [s for s, y in pairs if not y]
    if not right or not wrong:
        with pytest.raises(ValueError, match="at least one positive and one negative"):
            auc(scores, labels)
        return
    ordered = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    assert auc(scores, labels) == pytest.approx(ordered / (len(right) * len(wrong)))

def _learnable_samples(questions: range, seed: int) -> list[dict]:
    """Sample records a verifier must be able to learn to judge: a right solution uses the operation the
    story asks for and ends in `#### N`; a wrong one uses the other operation, or stops before its answer."""
    rng = random.Random(seed)
    samples = []
    for q in questions:
        a, b, buys = rng.randint(20, 99), rng.randint(1, 19), q % 2 == 0
        question = f"Ava has {a} pens and {'buys' if buys else 'loses'} {b}. How many pens does she have now?"
        right_op, wrong_op = ("+", "-") if buys else ("-", "+")

        def rationale(op: str, final: bool, who: str = "She") -> str:
            value = a + b if op == "+" else a - b
            return f"{who} has {a} {op} {b} = <<{a}{op}{b}={value}>>{value} pens." + (f"\n#### {value}" if final else "")
        texts = [(rationale(right_op, True), True), (rationale(right_op, True, "Ava"), True),
                 (rationale(wrong_op, True), False), (rationale(right_op, False), False)]
        samples += [{**_sample(f"q{q}", text, correct, i), "question": question}
                    for i, (text, correct) in enumerate(texts)]
    return samples


@pytest.mark.ray
def test_trained_verifier_separates_right_from_wrong_on_held_out_questions(ray_cluster, base_checkpoint,
                                                                           tmp_path: Path) -> None:
    train_path = tmp_path / "train-samples.jsonl"
    train_path.write_text("".join(json.dumps(s) + "\n" for s in _learnable_samples(range(0, 160), seed=0)))
    stats = write_verifier_data([train_path], tmp_path / "verifier.jsonl")
    assert stats["questions_used"] == 160 and stats["examples"] == 640  # two right, two wrong per question

    result = train_verifier(VerifierStageConfig(
        model_path=str(base_checkpoint), data_path=stats["path"], output_dir=str(tmp_path / "verifier"),
        max_steps=80, save_steps=80, logging_steps=20, per_device_train_batch_size=16, learning_rate=2e-3,
        num_workers=1, run_name="test-verifier"))
    assert result.metrics["global_step"] == 80

    held_out = _learnable_samples(range(1000, 1040), seed=1)
    model, tokenizer = load_policy(result.checkpoint)
    scores = score_candidates(model, tokenizer, [s["question"] for s in held_out],
                              [s["completion"] for s in held_out])
    value = auc(scores, [s["correct"] for s in held_out])
    print(f"verifier AUC on {len(held_out)} held-out samples of 40 unseen questions: {value:.3f} "
          f"(losses {[round(h['loss'], 3) for h in result.metrics['log_history'] if 'loss' in h]})")
    assert value > 0.5
