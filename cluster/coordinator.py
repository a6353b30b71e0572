"""The coordinator: DPO-augmented self-training (Wang et al. 2024, Algorithm 2) as a resumable Ray actor.

    f0 = base model;  f = SFT(f0, L)                                   # warm-up
    for t in 1..T:
        U_t = U_t + vote(f, filter(synthesize(g, seeds)))              # JiuZhang3.0, with `synthesis.enabled`
        D  = pairs(sample(f, U_t, n=5, T=0.7))                         # correct = chosen, wrong = rejected
        fd = DPO(f, D, beta=0.1, reference=f)                          # DPO step   (mode `st`: fd = f)
        S  = dedup(correct(sample(fd, U_t, n=K, T=0.7)), jaccard>=0.7)
        L  = L + S
        f  = SFT(f0, L)                                                # SFT step: from the BASE model
        V  = Evaluator(f, samples); multitask: f = SFT(V, L)           # `verifier.enabled` (Liu et al. 2023)
        evaluate(f) on dev; promote f to the live solver if it is at least as good as the live model

Mode `st` skips the DPO step; mode `rft` runs one round of rejection-sampling fine-tuning instead of the loop;
`iterations: 0` stops after the warm-up (the SFT baseline). The synthesizer g is trained once per run; a U_t
row without an answer is labelled by f's vote too (cluster/synthesis_stages.py).

Every line is a stage (cluster/stages.py) whose outputs are files in the run directory; a stage already
done is skipped, so a restarted coordinator resumes at the first unfinished one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from cluster import stages, synthesis_stages, verifier_stages
from cluster.config import RunConfig, parse_config
from cluster.progress import Progress
from cluster.report import write_report
from cluster.rundir import RunDir
from cluster.stages import stage
from services.pools import ensure_pools


def self_training(config: RunConfig, run: RunDir, progress: Progress) -> dict[str, Any]:
    data = stage(run, "data", lambda: stages.prepare_data(config, run), progress)
    base = stage(run, "base", lambda: stages.build_base(config, run, data), progress)
    f0, labeled = base["checkpoint"], data["labeled_path"]
    pseudo: list[str] = []  # L = labeled + every S so far

    f = warm_up = sft_step(config, run, f0, labeled, pseudo, "sft-0", progress, reuse=config.model.warmup)
    if config.iterations == 0:  # the SFT baseline: the warm-up model is the result
        return finish(config, run, progress)
    if config.mode == "rft":
        return rejection_sampling_fine_tuning(config, run, f0, labeled, warm_up, data, progress)

    for t in range(1, config.iterations + 1):
        questions = stage(run, f"it{t}-questions", lambda: stages.select_questions(config, run, data, t), progress)
        questions = synthesis_stages.grow_questions(config, run, data, f0, f, questions, t, progress)
        if config.mode == "dpo-st":
            samples = stage(run, f"it{t}-dpo-samples", lambda: stages.sample_rationales(
                config, run, f["version"], f["checkpoint"], questions["path"], config.sampling.dpo_samples,
                f"it{t}-dpo-samples", progress.update), progress)
            pairs = stage(run, f"it{t}-pairs", lambda: stages.preference_pairs(
                config, run, samples["path"], f"it{t}-pairs"), progress)
            if pairs["pairs"]:
                fd = {"version": f"dpo-{t}", **stage(run, f"dpo-{t}", lambda: stages.train(
                    config, run, "dpo", f"dpo-{t}", f["checkpoint"], pairs["path"],
                    progress.for_workers(f"dpo-{t}")), progress)}
                if config.evaluation.dpo_effect_samples:  # Fig. 6: sampling on dev before vs after the DPO step
                    stage(run, f"it{t}-dpo-effect", lambda: stages.dpo_step_effect(
                        config, run, f, fd, data, t, progress.update), progress)
            else:  # no question had both a right and a wrong sample: nothing to prefer
                progress.log(f"[dpo-{t}] skipped: no preference pairs; sampling from {f['version']} instead")
                fd = f
        else:
            fd = f
        samples = stage(run, f"it{t}-sft-samples", lambda: stages.sample_rationales(
            config, run, fd["version"], fd["checkpoint"], questions["path"], config.sampling.sft_samples,
            f"it{t}-sft-samples", progress.update), progress)
        labels = stage(run, f"it{t}-pseudo-labels", lambda: stages.pseudo_labels(
            config, run, [samples["path"]], f"it{t}-pseudo-labels"), progress)
        pseudo.append(labels["path"])
        f = sft_step(config, run, f0, labeled, pseudo, f"sft-{t}", progress)

    return finish(config, run, progress)


def sft_step(config: RunConfig, run: RunDir, f0: str, labeled: str, pseudo: list[str], version: str,
             progress: Progress, reuse: str | None = None) -> dict[str, Any]:
    """SFT from the base model on L + S, then evaluate on dev and pass the promotion gate. With `reuse` (an
    existing SFT checkpoint folder) the version records that folder instead of training. With `verifier`,
    the evaluator task follows (Liu et al. 2023; multi-task fine-tuning first trains `version-gen`)."""
    first = verifier_stages.first_version(config, version)
    if reuse:
        model = stage(run, first, lambda: reuse_checkpoint(run, first, reuse), progress)
    else:
        dataset = stage(run, f"{version}-data", lambda: stages.sft_dataset(run, labeled, list(pseudo),
                                                                            f"{version}-train"), progress)
        model = stage(run, first, lambda: stages.train(config, run, "sft", first, f0, dataset["path"],
                                                             progress.for_workers(first)), progress)
    if config.verifier.enabled:
        model = verifier_stages.verifier_step(config, run, f0, labeled, pseudo, version, model, progress)
    scores = stage(run, f"eval-{version}", lambda: stages.evaluate_version(
        config, run, version, model["checkpoint"], run.outputs("data"), progress.update), progress)
    if config.evaluation.gate == "rerank":  # re-ranked dev accuracy, with this step's verifier
        verifier_stages.promote_reranked(config, run, version, model, scores, progress)
    else:
        stage(run, f"promote-{version}", lambda: stages.promote(
            config, run, version, model["checkpoint"], scores["dev_accuracy"]), progress)
    return {"version": version, **model}


def reuse_checkpoint(run: RunDir, version: str, checkpoint: str) -> dict[str, Any]:
    """Record an existing checkpoint folder as `version` (config `model.warmup`), without training."""
    run.add_version(version, Path(checkpoint), {"kind": "sft", "reused": True})
    return {"checkpoint": checkpoint, "reused": True}


def rejection_sampling_fine_tuning(config: RunConfig, run: RunDir, f0: str, labeled: str,
                                   warm_up: dict[str, Any], data: dict[str, Any], progress: Progress
                                   ) -> dict[str, Any]:
    """RFT (Yuan et al. 2023): one round; correct samples pooled from several models, deduplicated by their
    equation lists, and SFT from the base model on labeled + pooled."""
    questions = stage(run, "it1-questions", lambda: stages.select_questions(config, run, data, 1), progress)
    questions = synthesis_stages.grow_questions(config, run, data, f0, warm_up, questions, 1, progress)
    models = [(warm_up["version"], warm_up["checkpoint"])]
    models += [(f"rft-model-{i}", path) for i, path in enumerate(config.rft.checkpoints, start=1)]
    sample_paths = []
    for version, checkpoint in models:
        samples = stage(run, f"rft-samples-{version}", lambda: stages.sample_rationales(
            config, run, version, checkpoint, questions["path"], config.sampling.sft_samples,
            f"rft-samples-{version}", progress.update), progress)
        sample_paths.append(samples["path"])
    labels = stage(run, "rft-pseudo-labels", lambda: stages.pseudo_labels(
        config, run, sample_paths, "rft-pseudo-labels", method=config.rft.dedup), progress)
    sft_step(config, run, f0, labeled, [labels["path"]], "sft-1", progress)
    return finish(config, run, progress)


def synthesis_only(config: RunConfig, run: RunDir, progress: Progress) -> dict[str, Any]:
    """`dpost synthesize`: the warm-up and iteration 1's synthesis stages, nothing after them; `dpost run` of
    the same config and run directory resumes from there."""
    data = stage(run, "data", lambda: stages.prepare_data(config, run), progress)
    base = stage(run, "base", lambda: stages.build_base(config, run, data), progress)
    f = sft_step(config, run, base["checkpoint"], data["labeled_path"], [], "sft-0", progress,
                 reuse=config.model.warmup)
    questions = stage(run, "it1-questions", lambda: stages.select_questions(config, run, data, 1), progress)
    return synthesis_stages.grow_questions(config, run, data, base["checkpoint"], f, questions, 1, progress)


def finish(config: RunConfig, run: RunDir, progress: Progress) -> dict[str, Any]:
    report = write_report(run)
    run.update(status="done", finished=time.time(), report=str(report))
    progress.log(f"[done] live solver model: {run.live()}; report: {report}")
    return {"run_dir": str(run.root), "live": {"solver": run.live()}, "report": str(report)}


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3, max_concurrency=4)
class Coordinator:
    """Runs `self_training` for one run directory, and is the only writer of its manifest while it lives
    (cluster/rundir.py). Restarted by Ray if it dies; `run` is retried and resumes from the manifest. Extra
    concurrency lets the driver poll `status` and an operator `rollback` while `run` works."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = parse_config(config)
        self.run_dir = RunDir(self.config.run_dir)
        now = time.time()  # a restarted coordinator keeps the run's start and records when it came back
        manifest = self.run_dir.manifest
        self.run_dir.update(name=self.config.name, config=self.config.to_dict(), status="running",
                            started=manifest.get("started", now),
                            coordinator_starts=manifest.get("coordinator_starts", []) + [now])
        self.progress = Progress()

    def run(self) -> dict[str, Any]:
        ensure_pools(self.config.serving, live=self._live(), run_dir=str(self.run_dir.root))
        return self_training(self.config, self.run_dir, self.progress)

    def synthesize(self) -> dict[str, Any]:
        """Only the synthesis stages (`synthesis_only`); the manifest's status becomes `synthesized`."""
        ensure_pools(self.config.serving, live=self._live(), run_dir=str(self.run_dir.root))
        outputs = synthesis_only(self.config, self.run_dir, self.progress)
        self.run_dir.update(status="synthesized")
        return outputs

    def _live(self) -> tuple[str, str] | None:
        version = self.run_dir.live()
        if not version:
            return None
        return stages.model_version(self.config.name, version), self.run_dir.versions()[version]["path"]

    def rollback(self, version: str) -> str:
        """Put `version` back on the live solver (`dpost rollback` while this run's coordinator lives);
        the run's later promotions are gated against it. Returns the label the solver serves."""
        return stages.rollback(self.run_dir, version)

    def run_root(self) -> str:
        """The run directory this coordinator writes (a coordinator is found by the run's name alone)."""
        return str(self.run_dir.root.resolve())

    def status(self) -> dict[str, Any]:
        """A copy of the manifest (taken under its lock): safe to keep while `run` goes on."""
        return {"manifest": self.run_dir.manifest}

    def console(self, since: int, seen_id: str | None) -> dict[str, Any]:
        """What the driver's console shows: new lines and the running stage's bar (`Progress.snapshot`)."""
        return self.progress.snapshot(since, seen_id)

    def report_training(self, stage: str, step: int, total: int, info: dict[str, Any]) -> None:
        """A Ray Train worker's step count for the running stage's bar (`Progress.for_workers`)."""
        self.progress.update_from_worker(stage, step, total, info)
