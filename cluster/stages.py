"""The stages of self-training, each a small function from files in the run directory to files in it.

The coordinator strings them together; `stage()` makes each one run at most once per run directory.
Sampling and evaluation decode on the Serve `rollout` pool (swapped to the model being decoded); evaluation
is trainers/evaluation.py's `evaluate_problems`, the same as `dpost eval`'s. Training goes through Ray Train.
Nothing here keeps state between calls: everything is in the files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from cluster.config import RunConfig
from cluster.progress import Progress
from cluster.rundir import RunDir, read_jsonl, write_jsonl
from services.pools import decode_on_pool, swap
from trainers.core.dedup import dedup_clusters
from trainers.core.errors import ConfigError
from trainers.core.pairs import preference_pairs as build_pairs
from trainers.core.prompting import format_completion, format_prompt
from trainers.data.problems import load_problems, write_gsm8k_jsonl
from trainers.engine.decoding import Decoded, DecodeRequest
from trainers.engine.rows import DecodeParams, make_requests, to_records
from trainers.evaluation import DecodeFn, EvalConfig, evaluate_problems
from trainers.training.ray_train import StepProgress, train_dpo, train_sft, train_verifier

ProgressFn = Callable[[str, int, int], None]


def stage(run: RunDir, name: str, fn: Callable[[], dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """Run `fn` unless the manifest already marks `name` done with its outputs on disk."""
    if run.is_done(name):
        progress.finished(name, None, run.outputs(name))
        return run.outputs(name)
    progress.started(name)
    run.start(name)
    try:
        outputs = fn()
    except BaseException as exc:
        run.fail(name, f"{type(exc).__name__}: {exc}")
        raise
    run.finish(name, outputs)
    progress.finished(name, run.manifest["stages"][name]["seconds"], outputs)
    return outputs


def model_version(run_name: str, version: str) -> str:
    """The label replicas report: the run and the stage's version, e.g. `demo:sft-1`."""
    return f"{run_name}:{version}"


# ------------------------------------------------------------------------------------------------ data, base

def prepare_data(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """Synthetic splits, or the user's files copied in as GSM8K jsonl (so later stages read one format).
    Unlabeled rows may come without an answer (`unanswered_count`): the loop labels them by vote."""
    out: dict[str, Any] = {}
    if config.data.synthetic is not None:
        from trainers.data.synthetic import build_synthetic_task

        paths = build_synthetic_task(config.synthetic_config(), run.data / "task")
        out = {f"{split}_path": str(path) for split, path in paths.items()}
    else:
        for split in ("labeled", "unlabeled", "dev", "test"):
            problems = load_problems(getattr(config.data, split), unanswered=split == "unlabeled").problems
            out[f"{split}_path"] = str(write_gsm8k_jsonl(problems, run.data / "task" / f"{split}.jsonl"))
    for split in ("labeled", "unlabeled", "dev", "test"):
        out[f"{split}_count"] = len(load_problems(out[f"{split}_path"], unanswered=split == "unlabeled"))
    out["unanswered_count"] = sum(p.answer is None for p in load_problems(out["unlabeled_path"], unanswered=True))
    return out


def build_base(config: RunConfig, run: RunDir, data: dict[str, Any]) -> dict[str, Any]:
    """f0: a from-scratch preset (tokenizer trained on the task's text) or the user's model as is."""
    if config.model.path:
        return {"checkpoint": config.model.path, "source": "path"}
    from trainers.models.scratch import build_tiny_model

    texts = [f"{p.question}\n{p.rationale}" for p in load_problems(data["labeled_path"]).problems]
    texts += [p.question for p in load_problems(data["unlabeled_path"], unanswered=True).problems]
    path = build_tiny_model(run.checkpoint("base"), config.model.preset or "tiny", texts, seed=config.model.seed)
    return {"checkpoint": str(path), "source": f"preset:{config.model.preset}"}


def select_questions(config: RunConfig, run: RunDir, data: dict[str, Any], iteration: int) -> dict[str, Any]:
    """U_t: the iteration's slice of the unlabeled questions (cycling through the file), answered or not."""
    problems = load_problems(data["unlabeled_path"], unanswered=True).problems
    size = config.data.unlabeled_per_iteration or len(problems)
    start = ((iteration - 1) * size) % len(problems)
    picked = (problems + problems)[start:start + min(size, len(problems))]
    path = write_gsm8k_jsonl(picked, run.data / f"it{iteration}-questions.jsonl")
    return {"path": str(path), "count": len(picked)}


# ------------------------------------------------------------------------------------------------ sampling

def sample_rationales(config: RunConfig, run: RunDir, version: str, checkpoint: str, questions_path: str,
                      n: int, out_name: str, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Sample n rationales per question at the configured temperature from `checkpoint` on the rollout pool,
    label each against the gold answer (a vote label for a synthesized or unanswered question), and write the
    records with provenance, a question's own `provenance` included."""
    s = config.sampling
    params = DecodeParams(n=n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                          calculator=s.calculator, seed=config.seed + stable_seed(out_name))
    problems = load_problems(questions_path).problems
    rows = make_requests(problems, params)
    started = time.time()
    decoded, versions = rollout_decoder(config, version, checkpoint, out_name, len(rows), progress)(rows)
    records = to_records(problems, params, decoded, model_version(config.name, version))
    origins = question_provenance(questions_path)
    for record, served_by in zip(records, versions):
        record["served_by"] = served_by
        if record["question_id"] in origins:
            record["provenance"] = origins[record["question_id"]]
    path = write_jsonl(run.data / f"{out_name}.jsonl", records)
    correct = sum(r["correct"] for r in records)
    solved = len({r["question_id"] for r in records if r["correct"]})
    return {"path": str(path), "samples": len(records), "correct": correct, "questions": len(problems),
            "questions_solved": solved, "seconds": round(time.time() - started, 2),
            "tokens": sum(r["num_tokens"] for r in records)}


def question_provenance(questions_path: str) -> dict[str, dict[str, Any]]:
    """question id -> `provenance` of the questions file's rows that carry one (synthesized or vote-labelled
    questions, cluster/synthesis_stages.py); every record derived from such a question copies it."""
    return {row["id"]: row["provenance"] for row in read_jsonl(Path(questions_path)) if "provenance" in row}


def rollout_decoder(config: RunConfig, version: str, checkpoint: str, name: str, total_rows: int,
                     progress: ProgressFn | None) -> DecodeFn:
    """Swap the rollout pool to (version, checkpoint); return a decode_fn that sends its rows to the pool
    (all chunks in flight at once) and reports the rows done to `progress` under `name`."""
    swap("rollout", model_version(config.name, version), checkpoint)
    done = [0]

    def on_chunk(index: int, decoded: list[Decoded], served_by: str) -> None:
        done[0] += len(decoded)
        if progress:
            progress(name, done[0], total_rows)

    def decode(rows: list[DecodeRequest]) -> tuple[list[Decoded], list[str]]:
        return decode_on_pool(rows, pool="rollout", chunk_rows=config.sampling.chunk_rows, on_chunk=on_chunk)

    return decode


def stable_seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode()) % 100_000


def dpo_step_effect(config: RunConfig, run: RunDir, f: dict[str, Any], fd: dict[str, Any], data: dict[str, Any],
                    iteration: int, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The paper's Fig. 6: k rationales per dev question (T as in sampling) from the SFT model before the DPO
    step (`f`) and the DPO model after it (`fd`); the aggregate step scores pass@1, pass@k and the distinct
    correct rationales each would yield from these files."""
    k, limit = config.evaluation.dpo_effect_samples, config.data.dev_limit
    dev = load_problems(data["dev_path"]).problems
    questions = write_gsm8k_jsonl(dev[:limit] if limit else dev, run.data / "dev-sampling-questions.jsonl")
    out: dict[str, Any] = {"k": k}
    for model, version in (("sft", f), ("dpo", fd)):
        samples = sample_rationales(config, run, version["version"], version["checkpoint"], str(questions), k,
                                    f"it{iteration}-dev-samples-{model}", progress)
        out[f"{model}_path"], out[f"{model}_correct"] = samples["path"], samples["correct"]
    return out


# ------------------------------------------------------------------------------------- pairs, pseudo-labels

def preference_pairs(config: RunConfig, run: RunDir, samples_path: str, out_name: str) -> dict[str, Any]:
    """DPO data: correct samples are chosen, incorrect ones rejected (completion format applied)."""
    samples = read_jsonl(Path(samples_path))
    pairs, stats = build_pairs(samples, max_pairs_per_question=config.sampling.max_pairs_per_question)
    origins = {s["question_id"]: s["provenance"] for s in samples if "provenance" in s}
    for p in pairs:
        p["chosen"], p["rejected"] = format_completion(p["chosen"]), format_completion(p["rejected"])
        if p["question_id"] in origins:
            p["provenance"] = origins[p["question_id"]]
    path = write_jsonl(run.data / f"{out_name}.jsonl", pairs)
    return {"path": str(path), **stats}


def pseudo_labels(config: RunConfig, run: RunDir, samples_paths: list[str], out_name: str,
                  method: str | None = None) -> dict[str, Any]:
    """S: correct samples, near-duplicates (per question) dropped; each kept record names its cluster."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for path in samples_paths:
        for r in read_jsonl(Path(path)):
            if r["correct"]:
                by_question.setdefault(r["question_id"], []).append(r)
    kept, dropped = [], 0
    method = method or config.sampling.dedup
    for qid, records in by_question.items():
        clusters = dedup_clusters([r["completion"] for r in records], method=method,
                                  threshold=config.sampling.dedup_threshold)
        for i, (record, cluster) in enumerate(zip(records, clusters)):
            if cluster == i:
                kept.append({**record, "dedup_cluster": f"{qid}#{i}",
                             "merged": sum(1 for c in clusters if c == i) - 1})
            else:
                dropped += 1
    path = write_jsonl(run.data / f"{out_name}.jsonl", kept)
    return {"path": str(path), "pseudo_labels": len(kept), "duplicates_dropped": dropped,
            "questions": len(by_question)}


def sft_dataset(run: RunDir, labeled_path: str, pseudo_paths: list[str], out_name: str) -> dict[str, Any]:
    """L + S as prompt/completion records: labeled rationales plus every pseudo-label so far."""
    rows = [{"prompt": format_prompt(p.question), "completion": format_completion(p.rationale or ""),
             "source": "labeled", "question_id": p.id} for p in load_problems(labeled_path).problems]
    for path in pseudo_paths:
        rows += [{"prompt": r["prompt"], "completion": format_completion(r["completion"]),
                  "source": r["model_version"], "question_id": r["question_id"],
                  **({"provenance": r["provenance"]} if "provenance" in r else {})} for r in read_jsonl(Path(path))]
    path = write_jsonl(run.data / f"{out_name}.jsonl", rows)
    return {"path": str(path), "examples": len(rows)}


# ------------------------------------------------------------------------------------------------ training

def train(config: RunConfig, run: RunDir, kind: str, version: str, model_path: str, data_path: str,
          progress: StepProgress | None = None, **overrides: Any) -> dict[str, Any]:
    """Train `version` under Ray Train from `model_path` on `data_path` with the config's `kind` stage
    settings (sft, dpo, or verifier: `verifier.training`; `overrides` replace some of them, e.g. the
    synthesizer's `max_steps`)."""
    stage_config = config.stage_config(kind, model_path=model_path, data_path=data_path,
                                       output_dir=str(run.checkpoint(version)),
                                       run_name=f"{config.name}-{version}", **overrides)
    if not stage_config.storage_path:
        stage_config.storage_path = str(run.root / "ray_train")
    fit = {"sft": train_sft, "dpo": train_dpo, "verifier": train_verifier}[kind]
    result = fit(stage_config, progress)  # type: ignore[operator]
    m = result.metrics
    summary = {"global_step": m["global_step"], "first_loss": m["first_loss"], "final_loss": m["final_loss"],
               "resumed_from_step": m["resumed_from_step"], "rank0_node_id": m.get("node_id")}
    if kind == "dpo":
        logs = [h for h in m["log_history"] if "rewards/margins" in h]
        if logs:
            summary.update(first_margin=logs[0]["rewards/margins"], final_margin=logs[-1]["rewards/margins"],
                           final_reward_accuracy=logs[-1]["rewards/accuracies"])
    run.add_version(version, result.checkpoint, {"kind": kind, **summary})
    return {"checkpoint": str(result.checkpoint), **summary}


# ------------------------------------------------------------------------------------- evaluate, promote

def evaluate_version(config: RunConfig, run: RunDir, version: str, checkpoint: str, data: dict[str, Any],
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """Greedy accuracy (strict `#### N`, with the calculator) on dev, and on test for the report (with
    `evaluation.calculator_ablation`, on test without the calculator too); each evaluation's per-question items
    (`correct` per question, what experiments bootstrap over) go to `eval-<version>-<split>.jsonl`."""
    out: dict[str, Any] = {}
    evaluations = [("dev", config.sampling.calculator)]
    if config.evaluation.evaluate_test:
        evaluations.append(("test", config.sampling.calculator))
        if config.evaluation.calculator_ablation and config.sampling.calculator:
            evaluations.append(("test", False))
    for split, calculator in evaluations:
        problems = load_problems(data[f"{split}_path"]).problems
        limit = getattr(config.data, f"{split}_limit")
        problems = problems[:limit] if limit else problems
        key = split if calculator == config.sampling.calculator else f"{split}_no_calculator"  # test_no_calculator
        name = f"eval-{version}-{key.replace('_', '-')}"
        # one decode_fn call for the whole split: the pool spreads its chunks over every replica
        eval_config = EvalConfig(max_new_tokens=config.evaluation.max_new_tokens, calculator=calculator,
                                 batch_size=max(1, len(problems)), model=checkpoint)
        decode = rollout_decoder(config, version, checkpoint, name, len(problems), progress)
        items, metrics = evaluate_problems(problems, decode, eval_config, model_version(config.name, version))
        out[f"{key}_accuracy"] = metrics["greedy_strict"]
        out[f"{key}_path"] = str(write_jsonl(run.data / f"{name}.jsonl", items))
    run.record_scores(version, checkpoint, {k: v for k, v in out.items() if k.endswith("accuracy")})
    return out


def promote(config: RunConfig, run: RunDir, version: str, checkpoint: str, dev_accuracy: float,
            metric: str = "dev_accuracy") -> dict[str, Any]:
    """The gate: `version` goes live on the solver only if its dev accuracy >= the live model's + margin.
    The live model is whatever the solver serves now, so after a rollback the gate compares against the
    rolled-back version; if that version was never evaluated (nothing to compare), `version` goes live.
    `metric` names the recorded score compared instead (gate rerank: `dev_rerank_accuracy`); where either
    model has none, greedy dev accuracy decides. The decision names the metric that decided."""
    margin = config.evaluation.promotion_margin
    with run.live_change():  # a rollback cannot land between reading the live model and replacing it
        live, versions = run.live(), run.versions()
        mine, theirs = versions.get(version, {}), versions.get(live, {}) if live else {}
        if mine.get(metric) is None or (live and theirs.get(metric) is None):
            metric = "dev_accuracy"
        value = dev_accuracy if metric == "dev_accuracy" else mine[metric]
        promoted = theirs.get(metric) is None or value >= theirs[metric] + margin
        if promoted:
            swap("solver", model_version(config.name, version), checkpoint)
        decision = {"version": version, "metric": metric, "dev_accuracy": dev_accuracy, "live": live,
                    "live_dev_accuracy": theirs.get("dev_accuracy"), "margin": margin, "promoted": promoted,
                    "at": time.time()}
        if metric != "dev_accuracy":
            decision.update({metric: value, f"live_{metric}": theirs.get(metric)})
        run.record_promotion(decision, live=version if promoted else None)
    return {"promoted": promoted, "live": version if promoted else live, "decision": json.dumps(decision)}


def rollback(run: RunDir, version: str) -> str:
    """Put an earlier `version` of the run back on the live solver and record it as the live model, so
    later promotions are gated against it. Returns the label the solver now serves."""
    with run.live_change():
        versions = run.versions()
        if version not in versions:
            raise ConfigError(f"unknown version {version!r}; this run has {sorted(versions)}")
        label = model_version(run.name, version)
        swap("solver", label, versions[version]["path"])
        run.record_promotion({"version": version, "promoted": True, "rollback": True, "live": run.live(),
                              "at": time.time()}, live=version)
    return label
