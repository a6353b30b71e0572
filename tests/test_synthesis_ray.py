"""A synthesizer trained by the real SFT path (Ray Train, TRL) writes problems with the project's decoder,
calculator on, the filters count what it wrote, and what they keep is labelled by vote. The tiny model is not
expected to write good problems: the test proves the pieces fit, the format is learnt, and the counts add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.data.problems import Problem, load_problems
from trainers.engine.rows import DecodeParams
from trainers.evaluation import local_decoder
from trainers.synthesis.config import SynthesisConfig
from trainers.synthesis.labels import synthesized_rows
from trainers.synthesis.pipeline import vote_on, write_problems
from trainers.synthesis.prompts import generation_prompts, load_seed_texts, parse_generated

pytestmark = pytest.mark.ray

SEEDS = Path(__file__).parent / "fixtures" / "synthesis_seeds.txt"


def test_synthesizer_trained_on_ray_writes_problems_whose_filter_and_vote_counts_are_consistent(
        trained_synthesizer, synthetic_dir):
    labeled = load_problems(synthetic_dir / "labeled.jsonl").problems
    seeds = load_seed_texts([SEEDS])
    config = SynthesisConfig(problems_per_iteration=16, max_new_tokens=160)
    losses = [h["loss"] for h in trained_synthesizer.metrics["log_history"] if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses

    synthesizer, written = local_decoder(trained_synthesizer.checkpoint), []

    def decode(rows):  # the project's in-process decoder; the texts are kept to check the parse count
        decoded = synthesizer(rows)
        written.extend(d.text for d in decoded)
        return decoded

    held_out = [p.question for split in ("dev", "test") for p in load_problems(synthetic_dir / f"{split}.jsonl")]
    kept, report = write_problems(labeled, seeds, held_out, config, "synth-1", decode, seed=0)
    counts = list(report.as_dict().values())
    assert counts[0] == len(written) == config.problems_per_iteration
    assert all(a >= b for a, b in zip(counts, counts[1:])), report.summary()
    # 120 steps teach the warm-up model the taught shape (question, `Solution:`, `#### N`) for some prompts at least
    assert 1 <= report.parseable == sum(parse_generated(t) is not None for t in written), written
    assert len(kept) == report.decontamination
    prompts = generation_prompts(labeled, seeds, config.problems_per_iteration, config.seed_chars, seed=0)
    for problem in kept:
        prompt = prompts[int(problem.id.rsplit("-", 1)[1])]
        assert (problem.seed_id, problem.level, problem.topic) == (prompt.seed_id, prompt.level, prompt.topic)
        assert problem.synthesizer_version == "synth-1" and problem.question not in held_out

    # the vote path end to end (the synthesizer stands in for the policy: its answers are not the point)
    params = DecodeParams(n=3, temperature=0.7, max_new_tokens=64, seed=1)
    labels = vote_on([Problem(k.id, k.question, k.answer) for k in kept], synthesizer, params, threshold=0.6,
                     gold={k.id: k.answer for k in kept})
    assert [v.question_id for v in labels] == [k.id for k in kept]
    assert all(v.samples == 3 and v.vote_share == v.votes / 3 and v.kept == (v.votes >= 2) for v in labels)
    rows = synthesized_rows(kept, labels)
    assert len(rows) == sum(v.kept for v in labels)
    assert all(set(r["provenance"]) >= {"synthesizer_version", "seed_id", "vote_share"} for r in rows)
