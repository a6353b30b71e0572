"""JiuZhang3.0 synthesis in the loop (trainers/synthesis/): the stages that grow U_t with synthesized problems
and label every question without a trusted answer by the current policy's vote.

    synthesizer       SFT (Ray Train) from `synthesis.synthesizer_path` or f0 on `prompt -> problem + solution`,
                      built from L and the seed texts. Once per run: what it learns from does not change
                      between iterations; each iteration samples it with its own seed. With `synthesis.train`
                      false, `synthesizer_path` is recorded as the synthesizer as is (`reused`), untrained.
    it<t>-synthesized it writes `problems_per_iteration` problems on the rollout pool (calculator on); the
                      filters keep some, each stage's count in the outputs (`filters`, `summary`)
    it<t>-votes       the current policy f samples k answers for each kept problem and each unanswered U_t row;
                      a majority with share >= `vote_threshold` becomes its answer. U_t's answered rows, the
                      labelled ones and the labelled synthesized ones are written as the iteration's questions,
                      those with a vote label carrying their `provenance`.

A gold answer (the synthesizer's own `#### N`) only grades the labels (`label_accuracy`), never decides one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from cluster import stages
from cluster.config import RunConfig
from cluster.progress import Progress
from cluster.rundir import RunDir, read_jsonl, write_jsonl
from cluster.stages import ProgressFn, model_version, rollout_decoder, stage
from trainers.core.answers import format_answer
from trainers.core.errors import DataError
from trainers.data.problems import Problem, load_problems
from trainers.engine.decoding import DecodeRequest
from trainers.engine.rows import DecodeParams
from trainers.synthesis.filters import Synthesized
from trainers.synthesis.labels import VoteLabel, label_accuracy, synthesized_rows
from trainers.synthesis.pipeline import vote_on, write_problems
from trainers.synthesis.prompts import load_seed_texts, training_examples

SYNTHESIZER = "synthesizer"


def grow_questions(config: RunConfig, run: RunDir, data: dict[str, Any], f0: str, policy: dict[str, Any],
                   questions: dict[str, Any], t: int, progress: Progress) -> dict[str, Any]:
    """U_t plus the iteration's synthesized problems, every question lacking an answer labelled by `policy`'s
    vote; `questions` itself when synthesis is off and every unlabeled row has its answer."""
    if not config.synthesis.enabled and not data.get("unanswered_count"):
        return questions
    written = None
    if config.synthesis.enabled:
        synthesizer = stage(run, SYNTHESIZER, lambda: train_synthesizer(config, run, data, f0, progress), progress)
        written = stage(run, f"it{t}-synthesized", lambda: synthesize_problems(
            config, run, data, synthesizer["checkpoint"], f"it{t}-synthesized", config.seed + t, progress.update),
            progress)
        if not written["kept"]:  # an empty stage, not a failed run: the counts say which filter emptied it
            progress.log(f"[it{t}-synthesized] nothing kept: {written['summary']}")
    return stage(run, f"it{t}-votes", lambda: vote_labels(
        config, run, policy, questions["path"], written["path"] if written else None, f"it{t}-votes",
        progress.update), progress)


def train_synthesizer(config: RunConfig, run: RunDir, data: dict[str, Any], f0: str, progress: Progress
                      ) -> dict[str, Any]:
    """The synthesizer: `synthesis.train_steps` SFT steps on the labeled problems paired with seed excerpts,
    or, with `synthesis.train` false, the folder `synthesis.synthesizer_path` recorded as it is."""
    s = config.synthesis
    if not s.train and s.synthesizer_path:
        run.add_version(SYNTHESIZER, Path(s.synthesizer_path), {"kind": "sft", "reused": True})
        return {"checkpoint": s.synthesizer_path, "reused": True}
    seeds = load_seed_texts(s.seed_texts)
    examples = training_examples(load_problems(data["labeled_path"]).problems, seeds, s.seed_chars, config.seed)
    if not examples:
        raise DataError("synthesis: no labeled problem has a rationale for the synthesizer to learn from")
    path = write_jsonl(run.data / "synthesizer-train.jsonl", examples)
    start = s.synthesizer_path or f0
    rate = {"learning_rate": s.learning_rate} if s.learning_rate else {}
    trained = stages.train(config, run, "sft", SYNTHESIZER, start, str(path), progress.for_workers(SYNTHESIZER),
                           max_steps=s.train_steps, logging_steps=max(1, s.train_steps // 5), **rate)
    return {**trained, "examples": len(examples), "seed_texts": len(seeds), "trained_from": start}


def synthesize_problems(config: RunConfig, run: RunDir, data: dict[str, Any], checkpoint: str, out_name: str,
                        seed: int, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The synthesizer writes problems on the rollout pool; the filters' counts, every written text
    (`written_path`) and the kept problems with their provenance (`path`)."""
    s = config.synthesis
    held_out = [p.question for split in ("dev", "test") for p in load_problems(data[f"{split}_path"])]
    decode = rollout_decoder(config, SYNTHESIZER, checkpoint, out_name, s.problems_per_iteration, progress)
    written: list[dict[str, Any]] = []

    def keep_texts(rows: list[DecodeRequest]) -> Any:
        decoded, served_by = decode(rows)
        written.extend({"prompt": r.prompt, "text": d.text} for r, d in zip(rows, decoded))
        return decoded, served_by

    version = model_version(config.name, SYNTHESIZER)
    kept, report = write_problems(load_problems(data["labeled_path"]).problems, load_seed_texts(s.seed_texts),
                                  held_out, s, version, keep_texts, seed)
    return {"path": str(write_jsonl(run.data / f"{out_name}.jsonl", [asdict(k) for k in kept])),
            "written_path": str(write_jsonl(run.data / f"{out_name}-written.jsonl", written)),
            "kept": len(kept), "filters": report.as_dict(), "summary": report.summary(),
            "synthesizer_version": version}


def vote_labels(config: RunConfig, run: RunDir, policy: dict[str, Any], questions_path: str,
                synthesized_path: str | None, out_name: str, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Label U_t's unanswered rows and the synthesized problems by `policy`'s vote (k =
    `synthesis.samples_per_question`, at the sampling temperature); write every vote (`votes_path`) and the
    iteration's questions (`path`): the answered rows as they were, then what the vote labelled."""
    s, sampling = config.synthesis, config.sampling
    pool = load_problems(questions_path, unanswered=True).problems
    unanswered = [p for p in pool if p.answer is None]
    synthesized = [Synthesized(**row) for row in read_jsonl(Path(synthesized_path))] if synthesized_path else []
    voted = unanswered + [Problem(k.id, k.question, None) for k in synthesized]
    labels: list[VoteLabel] = []
    if voted:
        params = DecodeParams(n=s.samples_per_question, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_new_tokens=sampling.max_new_tokens, calculator=sampling.calculator,
                              seed=config.seed + stages.stable_seed(out_name))
        decode = rollout_decoder(config, policy["version"], policy["checkpoint"], out_name,
                                 len(voted) * params.n, progress)
        labels = vote_on(voted, decode, params, s.vote_threshold, gold={k.id: k.answer for k in synthesized})
    labelled_by = model_version(config.name, policy["version"])
    by_id = {v.question_id: v for v in labels}
    rows = [{"id": p.id, "question": p.question, "answer": p.rationale or f"#### {format_answer(p.answer)}"}
            for p in pool if p.answer is not None]
    rows += [{"id": p.id, "question": p.question, "answer": f"#### {format_answer(by_id[p.id].label)}",
              "provenance": {"source": "unanswered", "labelled_by": labelled_by, **_vote(by_id[p.id])}}
             for p in unanswered if by_id[p.id].kept]
    for row in synthesized_rows(synthesized, labels):
        row["provenance"].update(source="synthesized", labelled_by=labelled_by)
        rows.append(row)
    sources = {p.id: "unanswered" for p in unanswered} | {k.id: "synthesized" for k in synthesized}
    votes_path = write_jsonl(run.data / f"{out_name}.jsonl",
                             [{**asdict(v), "source": sources[v.question_id]} for v in labels])
    graded = [v for v in labels if v.kept and v.correct is not None]
    return {"path": str(write_jsonl(run.data / f"{out_name}-questions.jsonl", rows)),
            "votes_path": str(votes_path), "count": len(rows), "answered": len(pool) - len(unanswered),
            "unanswered": len(unanswered), "unanswered_labelled": sum(by_id[p.id].kept for p in unanswered),
            "synthesized": len(synthesized), "synthesized_labelled": sum(by_id[k.id].kept for k in synthesized),
            "vote_threshold": s.vote_threshold, "samples_per_question": s.samples_per_question,
            "label_accuracy": sum(v.correct for v in graded) / len(graded) if graded else None,
            "label_accuracy_by_vote_share": label_accuracy(labels)}


def _vote(label: VoteLabel) -> dict[str, Any]:
    return {"vote_share": label.vote_share, "votes": label.votes, "samples": label.samples}
