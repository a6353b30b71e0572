"""A synthesizer trained by the real SFT path (Ray Train, TRL) writes problems with the project's decoder,
calculator on, and the filters count what it wrote. The tiny model is not expected to write good problems:
the test proves the pieces fit, the format is learnt, and the counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.data.problems import load_problems
from trainers.engine.decoding import decode_all
from trainers.models.checkpoints import load_policy
from trainers.synthesis.config import SynthesisConfig
from trainers.synthesis.filters import filter_generated
from trainers.synthesis.prompts import (generation_prompts, generation_requests, load_seed_texts, parse_generated,
                                        training_examples)
from trainers.training.config import SFTStageConfig
from trainers.training.ray_train import train_sft

pytestmark = pytest.mark.ray

SEEDS = Path(__file__).parent / "fixtures" / "synthesis_seeds.txt"


def test_synthesizer_trained_on_ray_writes_problems_and_every_filter_count_is_consistent(
        ray_cluster, base_checkpoint, synthetic_dir, tmp_path):
    labeled = load_problems(synthetic_dir / "labeled.jsonl").problems
    seeds = load_seed_texts([SEEDS])
    config = SynthesisConfig(problems_per_iteration=16, max_new_tokens=160)
    examples = training_examples(labeled, seeds, config.seed_chars)
    data = tmp_path / "synthesizer.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = train_sft(SFTStageConfig(
        model_path=str(base_checkpoint), data_path=str(data), output_dir=str(tmp_path / "synth-1"), max_steps=300,
        logging_steps=50, save_steps=100, per_device_train_batch_size=8, learning_rate=3e-3, num_workers=1,
        run_name="test-synthesizer"))
    losses = [h["loss"] for h in result.metrics["log_history"] if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses

    model, tokenizer = load_policy(result.checkpoint)
    prompts = generation_prompts(labeled, seeds, config.problems_per_iteration, config.seed_chars, seed=0)
    decoded = decode_all(model, tokenizer, generation_requests(prompts, config, seed=0))
    texts = [d.text for d in decoded]
    held_out = [p.question for split in ("dev", "test") for p in load_problems(synthetic_dir / f"{split}.jsonl")]
    kept, report = filter_generated(prompts, texts, [p.question for p in labeled], held_out, config, "synth-1")

    counts = list(report.as_dict().values())
    assert counts[0] == len(texts) == config.problems_per_iteration
    assert all(a >= b for a, b in zip(counts, counts[1:])), report
    # 300 steps teach the tiny model the taught shape (question, `Solution:`, `#### N`) for most prompts
    assert 1 <= report.parseable == sum(parse_generated(t) is not None for t in texts), texts
    assert len(kept) == report.decontamination
    by_id = {f"synth-1-{i:05d}": p for i, p in enumerate(prompts)}
    for problem in kept:
        prompt = by_id[problem.id]
        assert (problem.seed_id, problem.level, problem.topic) == (prompt.seed_id, prompt.level, prompt.topic)
        assert problem.synthesizer_version == "synth-1" and problem.question not in held_out
