"""The verifier in the loop (Liu et al. 2023): after an SFT step, train the evaluator on the run's own samples of
that model's training questions, and with `verifier.mode` multitask fine-tune the policy on generation again.

    sft_step(t) with `verifier.enabled`  (config `verifier`, cluster/config.py):
      separate:   sft-t = SFT(f0, L + S);  sft-t-verifier = Evaluator(sft-t | f0 | verifier.model, E)
      multitask:  sft-t-gen = SFT(f0, L + S);  sft-t-verifier = Evaluator(sft-t-gen, E);
                  sft-t = SFT(sft-t-verifier, L + S)                        # the policy evaluated and promoted
      control:    sft-t-gen = SFT(f0, L + S);  sft-t-control = SFT(sft-t-gen, L + S) with the evaluator's
                  TRL fields (same steps);  sft-t = SFT(sft-t-control, L + S)
    E = balanced right/wrong examples (trainers/data/verifier.py) from iteration t's sample files (the DPO and
    SFT samples, or RFT's); sft-0 has none, so `verifier.warmup_questions` labeled questions are sampled from
    it. A share of E's questions (`verifier.holdout`) is kept out to measure the verifier's AUC.
    gate rerank (`evaluation.gate`): sample `rerank_n` per dev question from sft-t, score them with
    sft-t-verifier, re-rank (trainers/evaluation.py) and compare `rerank_strategy`'s dev accuracy with the live
    model's.

The training jobs of each mode are `training_plan`'s, a function of the config alone, which `verifier_step`
follows. Each step is a stage (`cluster.stages.stage`) whose outputs are files in the run directory; training
goes through `cluster.stages.train`, the gate through `cluster.stages.promote`. Scoring runs as one
Ray task shaped like a training worker, which loads the verifier once and scores every pair in batches.
A verifier that cannot be trained (no question with both a right and a wrong sample, a start folder that is
not a causal LM) is skipped with the reason logged and kept in the stage's outputs; the run goes on (multitask:
sft-t is then sft-t-gen, recorded again; gate rerank: that step's decision falls back to greedy accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import stages
from cluster.config import RunConfig
from cluster.progress import Progress
from cluster.rundir import RunDir, read_jsonl, write_jsonl
from cluster.stages import ProgressFn, model_version, stage
from trainers.core.errors import CheckpointError
from trainers.core.metrics import auc
from trainers.data.problems import load_problems, write_gsm8k_jsonl
from trainers.data.verifier import verifier_examples
from trainers.evaluation import EvalConfig, ScoreFn, evaluate_problems
from trainers.models.checkpoints import validate_causal_lm
from trainers.training.ray_train import StepProgress


@dataclass(frozen=True)
class TrainingStep:
    """One training job of an SFT step: the model `version` it makes, the stage settings it trains with
    (`kind` sft: `training.sft`; verifier: `verifier.training`), the model it starts from (a version of this
    step, `base` for f0, or `verifier.model`'s folder) and its data (`generation`: L + S; `evaluator`: E)."""

    version: str
    kind: str
    start: str
    data: str


def training_plan(config: RunConfig, version: str) -> list[TrainingStep]:
    """SFT step `version`'s training jobs in order (the table in the module docstring): the first is the
    coordinator's SFT from f0, `verifier_step` runs the rest; the model named `version` is the one evaluated."""
    v = config.verifier
    generation = TrainingStep(version, "sft", "base", "generation")
    if not v.enabled:
        return [generation]
    if v.mode == "separate":
        start = v.model or {"sft": version, "base": "base"}[v.init]
        return [generation, TrainingStep(f"{version}-verifier", "verifier", start, "evaluator")]
    first = TrainingStep(f"{version}-gen", "sft", "base", "generation")
    extra = (TrainingStep(f"{version}-verifier", "verifier", first.version, "evaluator") if v.mode == "multitask"
             else TrainingStep(f"{version}-control", "verifier", first.version, "generation"))
    return [first, extra, TrainingStep(version, "sft", extra.version, "generation")]


def first_version(config: RunConfig, version: str) -> str:
    """The name SFT step `version` trains first: `version` itself, or `version-gen` when multi-task fine-tuning
    (or its control) trains on from it and the last model is `version`."""
    return training_plan(config, version)[0].version


def verifier_step(config: RunConfig, run: RunDir, f0: str, labeled: str, pseudo: list[str], version: str,
                  model: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The training jobs of `training_plan` after SFT step `version`'s first model `model`; returns the model
    `version` names: the one evaluated and gated."""
    plan = training_plan(config, version)
    first = plan[0].version
    trained = {"base": {"checkpoint": f0}, first: model}
    for step in plan[1:]:
        start = trained[step.start]["checkpoint"] if step.start in trained else step.start  # verifier.model
        if step.data == "evaluator":
            samples = _training_samples(config, run, labeled, version, first, model, progress)
            data = stage(run, f"{version}-verifier-data", lambda: verifier_data(
                config, run, samples, f"{version}-verifier"), progress)
            out = stage(run, step.version, lambda: train_evaluator(
                config, run, step, start, data, progress.for_workers(step.version)), progress)
            if "skipped" in out:
                progress.log(f"[{step.version}] skipped: {out['skipped']}")
                if step is not plan[-1]:  # nothing was learnt between the two generation steps: sft-t is sft-t-gen
                    return stage(run, version, lambda: same_model(run, version, first, model["checkpoint"]),
                                 progress)
        else:
            dataset = stage(run, f"{version}-data", lambda: stages.sft_dataset(  # L + S, as the coordinator's
                run, labeled, list(pseudo), f"{version}-train"), progress)
            out = stage(run, step.version, lambda: train_generation(
                config, run, step, start, dataset["path"], progress.for_workers(step.version)), progress)
        trained[step.version] = out
    return trained[version]


def same_model(run: RunDir, version: str, first: str, checkpoint: str) -> dict[str, Any]:
    """Record `first`'s checkpoint as `version` too (multitask whose evaluator step was skipped)."""
    run.add_version(version, Path(checkpoint), {"kind": "sft", "same_as": first})
    return {"checkpoint": checkpoint, "same_as": first}


# ------------------------------------------------------------------------------------------------ data

def _training_samples(config: RunConfig, run: RunDir, labeled: str, version: str, first: str,
                      model: dict[str, Any], progress: Progress) -> list[str]:
    """Sample files on `version`'s training questions: its iteration's DPO and SFT samples (or RFT's); for
    the warm-up, `verifier.warmup_questions` labeled questions sampled from its first model."""
    iteration = int(version.rsplit("-", 1)[1])
    wanted = {f"it{iteration}-dpo-samples", f"it{iteration}-sft-samples"}
    manifest = run.manifest["stages"]
    paths = [entry["outputs"]["path"] for name, entry in manifest.items() if entry.get("status") == "done"
             and (name in wanted or (iteration == 1 and config.mode == "rft" and name.startswith("rft-samples-")))]
    if paths:
        return paths
    sampled = stage(run, f"{version}-verifier-samples", lambda: sample_labeled(
        config, run, labeled, first, model["checkpoint"], f"{version}-verifier-samples", progress.update), progress)
    return [sampled["path"]]


def sample_labeled(config: RunConfig, run: RunDir, labeled: str, version: str, checkpoint: str, out_name: str,
                   progress: ProgressFn | None = None) -> dict[str, Any]:
    """`verifier.warmup_samples` samples on each of the first `verifier.warmup_questions` labeled questions."""
    v = config.verifier
    questions = write_gsm8k_jsonl(load_problems(labeled).problems[:v.warmup_questions],
                                  run.data / f"{out_name}-questions.jsonl")
    return stages.sample_rationales(config, run, version, checkpoint, str(questions), v.warmup_samples, out_name,
                                    progress)


def verifier_data(config: RunConfig, run: RunDir, samples_paths: list[str], out_name: str) -> dict[str, Any]:
    """Balanced verifier examples from the samples (`out_name`.jsonl) and the held-out questions' samples
    (`out_name`-holdout.jsonl); `skipped` with the reason when no training question has both labels."""
    samples = [r for path in samples_paths for r in read_jsonl(Path(path))]
    held = held_out_questions(samples, config.verifier.holdout)
    examples, stats = verifier_examples([s for s in samples if s["question_id"] not in held],
                                        config.verifier.max_per_label)
    holdout = [s for s in samples if s["question_id"] in held]
    out: dict[str, Any] = {"samples": len(samples), **stats, "holdout_questions": len(held),
                           "holdout_samples": len(holdout)}
    if not examples:
        return {**out, "skipped": f"no question has both a correct and an incorrect sample "
                                  f"({stats['questions']} questions, {len(samples)} samples)"}
    out["path"] = str(write_jsonl(run.data / f"{out_name}.jsonl", examples))
    out["holdout_path"] = str(write_jsonl(run.data / f"{out_name}-holdout.jsonl", holdout))
    return out


def held_out_questions(samples: list[dict[str, Any]], share: float) -> set[str]:
    """The last `share` of the questions that have both a right and a wrong sample (at least one when two or
    more do and `share` > 0): kept out of training to measure the verifier on questions it has not seen."""
    labels: dict[str, set[bool]] = {}
    for s in samples:
        labels.setdefault(s["question_id"], set()).add(bool(s["correct"]))
    usable = [qid for qid, seen in labels.items() if len(seen) == 2]
    count = max(1, int(len(usable) * share)) if share > 0 and len(usable) >= 2 else 0
    return set(usable[len(usable) - count:])


# ------------------------------------------------------------------------------------------------ training

def train_evaluator(config: RunConfig, run: RunDir, step: TrainingStep, start: str, data: dict[str, Any],
                    progress: StepProgress | None = None) -> dict[str, Any]:
    """The evaluator task from `start` on the examples `data` holds, then its AUC on the held-out samples;
    `skipped` with the reason when there are no examples or `start` is not a causal LM."""
    if "skipped" in data:
        return {"skipped": data["skipped"]}
    try:
        validate_causal_lm(start)
    except CheckpointError as exc:
        return {"skipped": f"cannot start the verifier from {start}: {exc}"}
    out = stages.train(config, run, step.kind, step.version, start, data["path"], progress)
    out.update(holdout_auc(config, out["checkpoint"], data["holdout_path"]), examples=data["examples"])
    return _recorded(run, step, data["path"], "verifier", out)


def train_generation(config: RunConfig, run: RunDir, step: TrainingStep, start: str, data_path: str,
                     progress: StepProgress | None = None) -> dict[str, Any]:
    """Generation SFT from `start` on L + S with `step.kind`'s settings: `training.sft`, or the evaluator's
    `verifier.training` (the control's extra steps, so they are as many as the evaluator's)."""
    out = stages.train(config, run, step.kind, step.version, start, data_path, progress)
    out["fields"] = "verifier.training" if step.kind == "verifier" else "training.sft"
    return _recorded(run, step, data_path, "sft", out)


def _recorded(run: RunDir, step: TrainingStep, data_path: str, kind: str, out: dict[str, Any]) -> dict[str, Any]:
    """`out` with where the step started and what it read, recorded as the version's entry under `kind`."""
    out = {**out, "from": step.start, "data_path": data_path}
    run.add_version(step.version, Path(out["checkpoint"]),
                    {"kind": kind, **{k: v for k, v in out.items() if k != "checkpoint"}})
    return out


# ------------------------------------------------------------------------------------------------ scoring

def remote_scorer(config: RunConfig, checkpoint: str, batch_size: int = 16) -> ScoreFn:
    """A score_fn that scores in one Ray task per call, with one training worker's resources (a GPU with
    `training.use_gpu`): the task loads the verifier, scores every pair and exits."""
    import ray

    placement = config.training
    resources = dict(placement.resources_per_worker or ({"CPU": 1, "GPU": 1} if placement.use_gpu else {"CPU": 1}))
    task = ray.remote(_score).options(num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                                      resources=resources)

    def score(questions: list[str], completions: list[str]) -> list[float]:
        return ray.get(task.remote(checkpoint, questions, completions, batch_size))

    return score


def _score(checkpoint: str, questions: list[str], completions: list[str], batch_size: int) -> list[float]:
    from trainers.evaluation import local_scorer

    return local_scorer(checkpoint, batch_size)(questions, completions)


def holdout_auc(config: RunConfig, checkpoint: str, holdout_path: str) -> dict[str, Any]:
    """The verifier's AUC on the held-out questions' samples (None when they do not hold both labels)."""
    samples = read_jsonl(Path(holdout_path))
    labels = [bool(s["correct"]) for s in samples]
    if len(set(labels)) < 2:
        return {"holdout_auc": None}
    scores = remote_scorer(config, checkpoint)([s["question"] for s in samples], [s["completion"] for s in samples])
    return {"holdout_auc": auc(scores, labels), "holdout_scored": len(samples)}


# ------------------------------------------------------------------------------------------ the rerank gate

def promote_reranked(config: RunConfig, run: RunDir, version: str, model: dict[str, Any],
                     scores: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """`evaluation.gate: rerank`: re-ranked dev accuracy with `version`'s verifier, then the gate on it
    (greedy dev accuracy decides where either model has none: its verifier stage was skipped)."""
    verifier = run.outputs(f"{version}-verifier").get("checkpoint") if run.is_done(f"{version}-verifier") else None
    if verifier:
        stage(run, f"eval-{version}-rerank", lambda: evaluate_reranked(
            config, run, version, model["checkpoint"], verifier, run.outputs("data"), progress.update), progress)
    return stage(run, f"promote-{version}", lambda: stages.promote(
        config, run, version, model["checkpoint"], scores["dev_accuracy"], metric="dev_rerank_accuracy"), progress)


def evaluate_reranked(config: RunConfig, run: RunDir, version: str, checkpoint: str, verifier: str,
                      data: dict[str, Any], progress: ProgressFn | None = None) -> dict[str, Any]:
    """`rerank_n` samples per dev question from `checkpoint`, scored by `verifier` and re-ranked through the
    one evaluation path; the items go to `eval-<version>-dev-rerank.jsonl`."""
    ev = config.evaluation
    problems = load_problems(data["dev_path"]).problems
    problems = problems[:config.data.dev_limit] if config.data.dev_limit else problems
    name = f"eval-{version}-dev-rerank"
    eval_config = EvalConfig(greedy=False, n=ev.rerank_n, temperature=config.sampling.temperature,
                             max_new_tokens=ev.max_new_tokens, calculator=config.sampling.calculator,
                             seed=config.seed, batch_size=max(1, len(problems)), model=checkpoint,
                             verifier=verifier, rerank_top_k=ev.rerank_top_k)
    decode = stages.rollout_decoder(config, version, checkpoint, name, len(problems) * ev.rerank_n, progress)
    items, metrics = evaluate_problems(problems, decode, eval_config, model_version(config.name, version),
                                       score_fn=remote_scorer(config, verifier))
    scored = [(score, bool(sample["correct"])) for item in items
              for score, sample in zip(item["verifier_scores"], item["samples"])]
    labels = {label for _, label in scored}
    n = ev.rerank_n
    out = {"dev_rerank_accuracy": metrics[f"{ev.rerank_strategy}@{n}"], "dev_maj_accuracy": metrics[f"maj@{n}"],
           "dev_pass_at_n": metrics[f"pass@{n}"], "dev_verifier_auc": auc(*zip(*scored)) if len(labels) == 2 else None}
    run.record_scores(version, checkpoint, out)  # type: ignore[arg-type]
    return {**out, "strategy": ev.rerank_strategy, "n": n, "top_k": metrics["rerank_top_k"],
            "verifier": verifier, "path": str(write_jsonl(run.data / f"{name}.jsonl", items))}
