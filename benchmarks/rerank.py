"""Solution-cluster re-ranking with a verifier trained on the generator's own samples (Liu et al. 2023), on the
embedded synthetic task, per seed, with 95% bootstrap intervals over seeds and questions.

    python benchmarks/rerank.py --seeds 0 --phases train-samples sample     # no Ray
    flock /tmp/dpost-ray.lock python benchmarks/rerank.py --seeds 0 --phases verifier   # Ray Train
    python benchmarks/rerank.py --seeds 0 --phases score                    # no Ray
    python benchmarks/rerank.py --phases aggregate                          # the table and rerank.json

Per seed k, in `--work`/seed<k>/ (default runs/rerank-bench), each phase resumable (an interrupted decode or
scoring pass goes on from its last saved chunk):
  task           configs/demo.yaml's synthetic task with seed k, built as the experiment matrix's sft cell builds
                 it (checked against the generator's own run when there is one).
  generator      seed k's warm-up SFT model: `--generator`, else the sft-0 checkpoint of
                 `--experiment`/sft-seed<k> (`dpost experiment configs/matrix/demo.yaml`), else the warm-up is
                 trained here with the run's own stages (data, base, sft-0; Ray Train, so under the lock).
  train-samples  `--train-samples` rationales per question at T on the first `--train-questions` unlabeled
                 (training) questions, labelled by final-answer match: `evaluate_files` with no greedy pass.
  verifier       balanced evaluator examples (`trainers.data.verifier`) from all but the last
                 `--heldout-questions` of them; `train_verifier` under Ray Train (ZeRO-2) from the generator.
  sample         greedy + `--n` samples per test question with the calculator: `evaluate_files`.
  score          the verifier's AUC on every sample of the held-out training questions; every test sample
                 scored by the verifier and each question re-ranked (`rerank_correct`): what `dpost eval
                 --rerank` does after decoding, split off so decoding need not wait for the verifier.
  multitask-train, multitask-eval   (only when asked for) multi-task sequential fine-tuning against its
                 control through the loop's `verifier.mode` (one `dpost run` per arm, not under the lock: see
                 `multitask_train_phase`), then greedy + n samples of each arm's policy on the test questions.
`aggregate` reads every seed whose score phase is done and writes the JSON (`--out`) with `seeds` (the seeds
aggregated), `test_questions`, `n`, `results` ({strategy, mean, ci_low, ci_high} in percent; `pass@1` is the
greedy answer, every other strategy reads the flexible answers of the n samples), paired differences to maj,
and per seed the verifier's AUC, the eval path's own metrics and the seconds of every phase.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import setup_env  # noqa: E402

setup_env()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import yaml  # noqa: E402

from benchmarks.common import REPO, free_port, machine_info, print_table, write_json  # noqa: E402
from cluster.aggregate import interval  # noqa: E402
from cluster.config import RunConfig, load_config, parse_config, read_yaml_file  # noqa: E402
from trainers.core.answers import answer_checker  # noqa: E402
from trainers.core.files import atomic_write_text  # noqa: E402
from trainers.core.metrics import auc  # noqa: E402
from trainers.core.rerank import rerank_correct  # noqa: E402
from trainers.data.problems import load_problems, write_gsm8k_jsonl  # noqa: E402
from trainers.data.synthetic import build_synthetic_task  # noqa: E402
from trainers.data.verifier import write_verifier_data  # noqa: E402
from trainers.evaluation import EvalConfig, evaluate_files, local_decoder, local_scorer  # noqa: E402

PHASES = ("train-samples", "verifier", "sample", "score", "multitask-train", "multitask-eval", "aggregate")
STRATEGIES = ("pass@1", "maj", "rr_topk", "weighted", "weighted_topk", "pass@n")
BOOTSTRAP_SAMPLES = 2000


# ---------------------------------------------------------------------------------------------- per seed

class Seed:
    """One seed's folder, its task, its generator and `state.json` (each phase's outputs and seconds)."""

    def __init__(self, args: argparse.Namespace, seed: int, generator: str | None) -> None:
        self.args, self.seed = args, seed
        self.root = Path(args.work).resolve() / f"seed{seed}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "state.json"
        self.changed: set[str] = set()
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text()) if self.state_path.exists()
                                      else {"seed": seed, "phases": {}})
        self.config = run_config(args.config, seed, self.root)
        self.task = self._task()
        self.generator = self.state.get("generator") or generator or self._generator_from_experiment()

    def reload(self) -> "Seed":
        """The state as on disk now (another process may have finished a phase)."""
        self.state = json.loads(self.state_path.read_text())
        return self

    def save(self, phase: str | None = None) -> None:
        """Write the state, merged into what is on disk: phases of one seed may run in two processes at once
        (sampling the test questions while the verifier waits for the lock)."""
        if phase:
            self.changed.add(phase)
        disk = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"phases": {}}
        disk["phases"].update({p: self.state["phases"][p] for p in self.changed})
        disk.update({key: value for key, value in self.state.items() if key != "phases"})
        self.state = disk
        atomic_write_text(self.state_path, json.dumps(disk, indent=1, default=str))

    def done(self, phase: str) -> dict[str, Any] | None:
        return self.state["phases"].get(phase)

    def require(self, phase: str) -> dict[str, Any]:
        """The outputs of an earlier phase this one needs; a one-line exit when it has not run."""
        if not (done := self.done(phase)):
            raise SystemExit(f"seed {self.seed}: run --phases {phase} first")
        return done

    def finish(self, phase: str, outputs: dict[str, Any], seconds: float) -> dict[str, Any]:
        self.state["phases"][phase] = {**outputs, "seconds": round(seconds, 1)}
        self.save(phase)
        return self.state["phases"][phase]

    def _task(self) -> dict[str, Path]:
        folder = self.root / "task"
        if not (folder / "test.jsonl").exists():
            build_synthetic_task(self.config.synthetic_config(), folder)
        return {split: folder / f"{split}.jsonl" for split in ("labeled", "unlabeled", "test")}

    def _generator_from_experiment(self) -> str | None:
        manifest = Path(self.args.experiment) / f"sft-seed{self.seed}" / "manifest.json"
        if not manifest.exists():
            return None
        version = json.loads(manifest.read_text()).get("versions", {}).get("sft-0")
        return version["path"] if version else None

    def check_generator(self) -> str:
        """The generator's folder, trained here when none is given or found; its run's task must be ours."""
        if not self.generator:
            self.generator = train_warmup(self)
        path = Path(self.generator)
        if not (path / "config.json").exists():
            raise SystemExit(f"seed {self.seed}: generator {path} is not a checkpoint folder")
        theirs = path.parents[1] / "data" / "task"  # <run>/checkpoints/sft-0 -> <run>/data/task
        for split, ours in self.task.items():
            if (theirs / ours.name).exists() and _digest(theirs / ours.name) != _digest(ours):
                raise SystemExit(f"seed {self.seed}: {theirs / ours.name} differs from the task built here "
                                 f"({ours}); the generator was trained on another task")
        if self.state.get("generator") != str(path):
            self.state["generator"] = str(path)
            self.save()
        return str(path)


def run_config(path: str, seed: int, root: Path) -> RunConfig:
    """The demo's run config for `seed`, as the experiment matrix's sft cell makes it (seed, model seed)."""
    raw_model = {"preset": "small", "seed": seed}
    return load_config(path, overrides={"name": f"rerank-warmup-seed{seed}", "seed": seed, "model": raw_model,
                                        "storage": {"root": str(root)}})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_warmup(seed: Seed) -> str:
    """The warm-up sft-0 trained with the run's own stages (data, base, SFT on L), in seed's folder."""
    from cluster.rundir import RunDir
    from cluster.stages import build_base, prepare_data, sft_dataset, train

    print(f"[rerank] seed {seed.seed}: no generator given or found; training the warm-up", flush=True)
    started = time.perf_counter()
    run = RunDir(seed.config.run_dir)
    data = prepare_data(seed.config, run)
    base = build_base(seed.config, run, data)
    dataset = sft_dataset(run, data["labeled_path"], [], "sft-0-train")
    with local_ray():
        model = train(seed.config, run, "sft", "sft-0", base["checkpoint"], dataset["path"])
    seed.finish("warmup", {"checkpoint": model["checkpoint"], "final_loss": model["final_loss"]},
                time.perf_counter() - started)
    return model["checkpoint"]


class local_ray:
    """A private Ray cluster for Ray Train phases (never someone else's running one)."""

    def __enter__(self) -> None:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()


# ---------------------------------------------------------------------------------------------- phases

def train_samples_phase(seed: Seed) -> dict[str, Any]:
    """The generator's samples on the training questions, as sample-record jsonl files (train / held out)."""
    args = seed.args
    if done := seed.done("train-samples"):
        return done
    started = time.perf_counter()
    generator = seed.check_generator()
    config = EvalConfig(data=[str(seed.task["unlabeled"])], greedy=False, n=args.train_samples,
                        ks=[args.train_samples], temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, calculator=True, seed=1000 + seed.seed,
                        batch_size=args.chunk_items, limit=args.train_questions, model=generator)
    out = seed.root / "train-samples"
    [result] = evaluate_files(config, local_decoder(generator, args.decode_batch), out, f"seed{seed.seed}:sft-0",
                              progress=args.progress)
    if not result["complete"]:
        raise SystemExit("training-question sampling did not finish")
    items = json.loads((out / "eval.json").read_text())["runs"][result["name"]]["items"]
    held_out = {it["question_id"] for it in items[len(items) - args.heldout_questions:]}
    paths = {"train": seed.root / "train-samples.jsonl", "held_out": seed.root / "heldout-samples.jsonl"}
    lines: dict[str, list[str]] = {"train": [], "held_out": []}
    for it in items:
        part = "held_out" if it["question_id"] in held_out else "train"
        lines[part] += [json.dumps({"question_id": it["question_id"], "question": it["question"], **s}) + "\n"
                        for s in it["samples"]]
    for part, path in paths.items():
        path.write_text("".join(lines[part]))
    samples = [s for it in items for s in it["samples"]]
    return seed.finish("train-samples", {
        "questions": len(items), "held_out_questions": len(held_out), "samples": len(samples),
        "correct": sum(s["correct"] for s in samples), "train_path": str(paths["train"]),
        "held_out_path": str(paths["held_out"]), "decode_seconds": result["throughput"]["decode_seconds"]},
        time.perf_counter() - started)


def verifier_phase(seed: Seed) -> dict[str, Any]:
    """Balanced evaluator examples and the verifier trained on them: under Ray Train (`train_verifier`, ZeRO-2)
    or, with `--verifier-trainer in-process`, the same TRL trainer in this process without Ray or DeepSpeed
    (`build_trainer(ray_train=False)`, as the training benchmark's baseline runs it) for a machine too loaded
    to start Ray."""
    from trainers.training.config import VerifierStageConfig
    from trainers.training.ray_train import train_verifier

    args = seed.args
    if done := seed.done("verifier"):
        return done
    samples = train_samples_phase(seed)
    started = time.perf_counter()
    data = write_verifier_data([samples["train_path"]], seed.root / "verifier-data.jsonl",
                               max_per_label=args.verifier_max_per_label)
    in_process = args.verifier_trainer == "in-process"
    config = VerifierStageConfig(
        model_path=seed.check_generator(), data_path=data["path"], output_dir=str(seed.root / "verifier"),
        run_name=f"rerank-verifier-seed{seed.seed}", num_workers=args.verifier_workers,
        zero_stage=0 if in_process else 2, max_steps=args.verifier_steps, learning_rate=args.verifier_lr,
        per_device_train_batch_size=args.verifier_batch // args.verifier_workers,
        save_steps=args.verifier_steps, logging_steps=max(1, args.verifier_steps // 6), seed=seed.seed)
    if in_process:
        checkpoint, history = train_in_process(config)
    else:
        with local_ray():
            result = train_verifier(config)
        checkpoint, history = result.checkpoint, result.metrics["log_history"]
    losses = [round(h["loss"], 4) for h in history if "loss" in h]
    return seed.finish("verifier", {
        "checkpoint": str(checkpoint), "trainer": args.verifier_trainer, "data": data,
        "steps": config.max_steps, "workers": 1 if in_process else args.verifier_workers,
        "global_batch": args.verifier_batch, "learning_rate": args.verifier_lr, "losses": losses},
        time.perf_counter() - started)


def train_in_process(config: Any) -> tuple[Path, list[dict[str, Any]]]:
    """The verifier stage's TRL trainer in this process (one thread, no Ray, no DeepSpeed); its final model
    saved at `config.output_dir`. Returns the folder and the trainer's log history."""
    import shutil

    import torch

    from trainers.training.ray_train import build_trainer

    torch.set_num_threads(1)
    trainer = build_trainer("verifier", config.checked(), ray_train=False)
    trainer.train()
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(out)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    return out, trainer.state.log_history


def heldout_auc(seed: Seed) -> None:
    """The verifier's AUC on every sample of the held-out training questions (in the score phase: no Ray)."""
    verifier, samples = seed.done("verifier"), seed.done("train-samples")
    if "heldout_auc" in verifier:
        return
    started = time.perf_counter()
    value, count = sample_auc(local_scorer(verifier["checkpoint"], seed.args.score_batch), samples["held_out_path"])
    print(f"[rerank] seed {seed.seed}: verifier AUC {value:.3f} on {count} samples of "
          f"{samples['held_out_questions']} held-out training questions", flush=True)
    verifier.update(heldout_auc=round(value, 4), heldout_samples=count,
                    auc_seconds=round(time.perf_counter() - started, 1))
    seed.save("verifier")


def sample_auc(score_fn: Callable[[list[str], list[str]], list[float]], path: str) -> tuple[float, int]:
    """AUC of the verifier's scores against each sample's `correct` label (the label it was trained on)."""
    samples = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    scores = score_fn([s["question"] for s in samples], [s["completion"] for s in samples])
    return auc(scores, [bool(s["correct"]) for s in samples]), len(samples)


def test_eval(seed: Seed, checkpoint: str, name: str, n: int, questions: int) -> dict[str, Any]:
    """Greedy + n samples per test question with the calculator through evaluate_files (pass@1, maj@n,
    pass@n), in `<seed>/eval-<name>/eval.json`, resuming what an interrupted run left."""
    args = seed.args
    config = EvalConfig(data=[str(seed.task["test"])], greedy=True, n=n, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, calculator=True, seed=seed.seed,
                        batch_size=args.chunk_items, limit=questions, model=checkpoint)
    [result] = evaluate_files(config, local_decoder(checkpoint, args.decode_batch), seed.root / f"eval-{name}",
                              f"seed{seed.seed}:{name}", progress=args.progress)
    if not result["complete"]:
        raise SystemExit(f"seed {seed.seed}: the {name} eval is incomplete")
    return {"eval_json": result["eval_json"], "metrics": result["metrics"],
            "decode_seconds": result["throughput"]["decode_seconds"]}


def sample_phase(seed: Seed) -> dict[str, Any]:
    """The generator's greedy answer and n samples per test question (no verifier needed yet)."""
    if done := seed.done("sample"):
        return done
    started = time.perf_counter()
    outputs = test_eval(seed, seed.check_generator(), "generator", seed.args.n, seed.args.test_questions)
    return seed.finish("sample", outputs, time.perf_counter() - started)


def score_phase(seed: Seed) -> dict[str, Any]:
    """Every test sample scored by the verifier and each question's samples re-ranked, with the functions
    `dpost eval --rerank` uses after decoding (`local_scorer`, `trainers.core.rerank.rerank_correct`, the
    data's answer checker); `<seed>/scores.json` is saved after every chunk and a re-run resumes it. It may
    start while the sample phase still runs: it scores the questions sampled so far and waits for more."""
    args = seed.args
    if done := seed.done("score"):
        return done
    verifier = seed.require("verifier")
    heldout_auc(seed)
    started = time.perf_counter()
    eval_json = seed.root / "eval-generator" / "eval.json"
    path = seed.root / "scores.json"
    score = local_scorer(verifier["checkpoint"], args.score_batch)
    while True:
        sampled = seed.reload().done("sample")  # read before the items: complete if it says so
        [run] = json.loads(eval_json.read_text())["runs"].values()
        n = run["config"]["n"]
        top_k = EvalConfig(n=n, verifier=verifier["checkpoint"], rerank_top_k=args.top_k).top_k
        checker = answer_checker(run["data"]["answer_format"])
        doc = (json.loads(path.read_text()) if path.exists()
               else {"verifier": verifier["checkpoint"], "top_k": top_k, "score_seconds": 0.0, "items": {}})
        if (doc["verifier"], doc["top_k"]) != (verifier["checkpoint"], top_k):
            raise SystemExit(f"{path} was made with another verifier or top-K; delete it to start over")
        todo = [it for it in run["items"] if it["question_id"] not in doc["items"]]
        for begin in range(0, len(todo), args.chunk_items):
            chunk = todo[begin:begin + args.chunk_items]
            timer = time.perf_counter()
            scores = score([it["question"] for it in chunk for _ in it["samples"]],
                           [s["completion"] for it in chunk for s in it["samples"]])
            doc["score_seconds"] = round(doc["score_seconds"] + time.perf_counter() - timer, 1)
            for i, it in enumerate(chunk):
                mine = scores[i * n:(i + 1) * n]
                correct = rerank_correct(it["sampled_answers"], mine, it["gold"], top_k, checker)
                if correct["maj"] != it["majority_correct"]:  # the same clustering and vote as the eval's
                    raise RuntimeError(f"question {it['question_id']}: maj differs from the eval's majority")
                doc["items"][it["question_id"]] = {"verifier_scores": [round(x, 6) for x in mine],
                                                   "reranked_correct": correct}
            atomic_write_text(path, json.dumps(doc))
            print(f"[rerank] seed {seed.seed}: scored {len(doc['items'])} questions "
                  f"({len(run['items'])} sampled so far)", flush=True)
        if sampled:
            break
        time.sleep(60)
    return seed.finish("score", {"scores_json": str(path), "top_k": top_k, "score_seconds": doc["score_seconds"]},
                       time.perf_counter() - started)


def multitask_train_phase(seed: Seed) -> dict[str, Any]:
    """Multi-task sequential fine-tuning (Liu et al. 2023) and its control through the loop's own option: one
    `dpost run --exit-when-done` per arm from the seed's warm-up (`model.warmup`, so sft-0-gen is the warm-up),
    iterations 0, `verifier` as configs/verifier.yaml sets it with mode multitask or control. multitask:
    warm-up -> evaluator task on its own samples of labeled questions -> generation SFT (training.sft) again;
    control: the evaluator's steps spent on generation SFT instead. The arm's policy is the run's sft-0.
    Each run starts its own Ray cluster and Serve (a free port) and takes as long as a demo run: run this
    phase as experiments are run, not under the lock; an interrupted run resumes from its finished stages."""
    if done := seed.done("multitask-train"):
        return done
    started = time.perf_counter()
    trained = seed.state.setdefault("multitask_arms", {})
    for arm in ("multitask", "control"):
        if arm in trained:
            continue
        config_path = write_arm_config(seed, arm)
        arm_started = time.perf_counter()
        log = seed.root / f"loop-{arm}.log"
        with log.open("w") as out:
            code = subprocess.call([str(Path(sys.executable).with_name("dpost")), "run", str(config_path),
                                    "--exit-when-done"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        if code:
            raise SystemExit(f"seed {seed.seed}: the {arm} run failed (exit {code}); see {log}")
        run = load_config(config_path).run_dir
        versions = json.loads((run / "manifest.json").read_text())["versions"]
        trained[arm] = {"run_dir": str(run), "checkpoint": versions["sft-0"]["path"],
                        "versions": {name: {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
                                     for name, record in versions.items()},
                        "seconds": round(time.perf_counter() - arm_started, 1)}
        seed.save()
    return seed.finish("multitask-train", {"arms": trained}, time.perf_counter() - started)


def write_arm_config(seed: Seed, arm: str) -> Path:
    """The arm's run config: the demo's task files and warm-up, no self-training iterations, the verifier
    recipe of configs/verifier.yaml in mode `arm`; checked by the run config's own parser."""
    generator = Path(seed.check_generator())
    raw = read_yaml_file(seed.args.config)
    recipe = read_yaml_file(REPO / "configs" / "verifier.yaml")
    raw.update(name=f"rerank-{arm}-seed{seed.seed}", seed=seed.seed, mode="st", iterations=0,
               # <run>/checkpoints/sft-0 was trained from <run>/checkpoints/base
               model={"path": str(generator.parent / "base"), "warmup": str(generator)},
               verifier={**recipe["verifier"], "enabled": True, "mode": arm},
               storage={"root": str(seed.root / "loop")})
    data = {k: v for k, v in raw["data"].items() if k != "synthetic"}
    raw["data"] = {**data, **{split: str(seed.root / "task" / f"{split}.jsonl")
                              for split in ("labeled", "unlabeled", "dev", "test")}}
    raw["serving"] = {**raw.get("serving", {}), "port": free_port()}
    parse_config(raw, where=f"{arm} arm")
    path = seed.root / f"loop-{arm}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def multitask_eval_phase(seed: Seed) -> dict[str, Any]:
    """Greedy + n samples per test question for each arm: pass@1 and maj@n through evaluate_files."""
    args = seed.args
    if done := seed.done("multitask-eval"):
        return done
    arms = seed.require("multitask-train")["arms"]
    started = time.perf_counter()
    evals = {arm: test_eval(seed, trained["checkpoint"], arm, args.mt_n or args.n,
                            args.mt_test_questions or args.test_questions) for arm, trained in arms.items()}
    return seed.finish("multitask-eval", {"arms": evals}, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- aggregate

def per_question(items: list[dict[str, Any]], reranked: dict[str, Any] | None = None) -> dict[str, list[float]]:
    """Each strategy's 0/1 correctness per test question, from the eval path's items and (for rr_topk,
    weighted, weighted_topk) the score phase's `reranked` items, plus two references: greedy with strict
    `#### N` extraction and the mean correctness of the n samples (unbiased pass@1)."""
    def flexible(it: dict[str, Any]) -> list[bool]:
        return [bool(s["correct_flexible"]) for s in it["samples"]]

    vectors = {
        "pass@1": [float(it["correct_flexible"]) for it in items],
        "maj": [float(it["majority_correct"]) for it in items],
        "pass@n": [float(any(flexible(it))) for it in items],
        "greedy_strict": [float(it["correct"]) for it in items],
        "pass@1_sampled": [sum(flexible(it)) / len(it["samples"]) for it in items],
    }
    if reranked is not None:
        vectors.update({s: [float(reranked[it["question_id"]]["reranked_correct"][s]) for it in items]
                        for s in ("rr_topk", "weighted", "weighted_topk")})
    return vectors


def check_against_eval(vectors: dict[str, list[float]], metrics: dict[str, Any], n: int) -> None:
    """The vectors must reproduce the eval path's own metrics: this reads what it reported, not a variant."""
    pairs = {"pass@1": "greedy_flexible", "greedy_strict": "greedy_strict", "maj": f"maj@{n}",
             "pass@n": f"pass@{n}", "pass@1_sampled": "pass@1"}
    for ours, theirs in pairs.items():
        mean = sum(vectors[ours]) / len(vectors[ours])
        if abs(mean - metrics[theirs]) > 1e-9:
            raise RuntimeError(f"{ours} {mean} differs from the eval path's {theirs} {metrics[theirs]}")


def _train_samples_n(seed: Seed) -> int:
    [run] = json.loads((seed.root / "train-samples" / "eval.json").read_text())["runs"].values()
    return run["config"]["n"]


def aggregate(args: argparse.Namespace, seeds: list[Seed]) -> dict[str, Any]:
    """The table and the JSON over the seeds whose score phase is done; with `--partial`, over every seed with
    scored questions, each cut to the first m test questions all of them have scored (said in the JSON)."""
    finished = [s for s in seeds if s.done("score") or (args.partial and (s.root / "scores.json").exists())]
    if not finished:
        raise SystemExit("no seed has finished its score phase yet")
    runs, scored = {}, {}
    for s in finished:
        [runs[s.seed]] = json.loads((s.root / "eval-generator" / "eval.json").read_text())["runs"].values()
        scored[s.seed] = json.loads((s.root / "scores.json").read_text())
    complete = all(s.done("score") for s in finished)
    common = min(sum(it["question_id"] in scored[k]["items"] for it in run["items"]) for k, run in runs.items())
    vectors, per_seed, settings = {}, {}, set()
    for s in finished:
        run, scores = runs[s.seed], scored[s.seed]
        items = run["items"][:common]  # scoring follows the test file's order: the first m are the scored ones
        config = run["config"]
        settings.add((config["n"], scores["top_k"], len(items), config["temperature"],
                      config["max_new_tokens"], config["calculator"]))
        vectors[s.seed] = per_question(items, scores["items"])
        if complete:
            check_against_eval(vectors[s.seed], run["metrics"], config["n"])
        test_auc = auc([x for it in items for x in scores["items"][it["question_id"]]["verifier_scores"]],
                       [bool(r["correct"]) for it in items for r in it["samples"]])
        per_seed[str(s.seed)] = {
            "generator": s.state["generator"], "train_samples": {**s.done("train-samples"),
                                                                 "samples_per_question": _train_samples_n(s)},
            "verifier": s.done("verifier"), "test_auc": round(test_auc, 4),
            "eval_metrics": run["metrics"] if complete else None,
            "sample": s.done("sample") and {k: v for k, v in s.done("sample").items() if k != "metrics"},
            "score": s.done("score"), "questions_sampled": len(run["items"]),
            "questions_scored": len(scores["items"]), "score_seconds": scores["score_seconds"],
            "warmup": s.done("warmup")}
    if len(settings) != 1:
        raise SystemExit(f"the finished seeds were evaluated with different settings: {sorted(settings)}")
    [(n, top_k, questions, temperature, max_new_tokens, calculator)] = settings
    ordered = [s.seed for s in finished]

    def ci(name: str, values: dict[int, list[float]]) -> dict[str, Any]:
        return {"strategy": name, **interval([values[k] for k in ordered], BOOTSTRAP_SAMPLES, f"rerank:{name}")}

    by_strategy = {name: {k: vectors[k][name] for k in ordered} for name in vectors[ordered[0]]}
    paired = []
    for name in ("rr_topk", "weighted", "weighted_topk"):
        # per question, strategy correct minus maj correct: the questions both get right or wrong cancel
        diffs = {k: [a - b for a, b in zip(by_strategy[name][k], by_strategy["maj"][k])] for k in ordered}
        paired.append(ci(f"{name} - maj", diffs))
    doc = {
        "benchmark": "rerank", "config": args.config,
        "complete": complete, "seeds": ordered, "seeds_requested": args.seeds, "test_questions": questions,
        "test_questions_requested": args.test_questions, "n": n, "top_k": top_k,
        "temperature": temperature, "max_new_tokens": max_new_tokens, "calculator": calculator,
        "units": "percent of test questions; 95% percentile bootstrap over seeds and questions "
                 f"({BOOTSTRAP_SAMPLES} replicates, cluster.aggregate.interval)",
        "definitions": {
            "pass@1": "greedy answer (flexible extraction: `#### N`, else the last number)",
            "maj": f"majority vote over the {n} sampled answers", "rr_topk":
            f"answer of the best-scored sample within the {top_k} largest answer clusters",
            "weighted": "answer cluster with the largest summed verifier score",
            "weighted_topk": f"the same within the {top_k} largest clusters",
            "pass@n": f"any of the {n} samples correct", "greedy_strict": "greedy, `#### N` only",
            "pass@1_sampled": "mean correctness of the samples"},
        "results": [ci(name, by_strategy[name]) for name in STRATEGIES],
        "references": [ci(name, by_strategy[name]) for name in ("greedy_strict", "pass@1_sampled")],
        "paired_to_maj": paired,
        "verifier": {
            "how": "trained from the seed's generator under Ray Train (train_verifier, ZeRO-2) on balanced "
                   "right/wrong examples (trainers/data/verifier.py) of the generator's own samples of unlabeled "
                   "(training) questions, labelled by strict final-answer match; AUC over every sample of the "
                   "held-out training questions and of the test questions (settings per seed in per_seed)",
            "heldout_auc": {str(s.seed): s.done("verifier")["heldout_auc"] for s in finished},
            "test_auc": {key: record["test_auc"] for key, record in per_seed.items()}},
        "per_seed": per_seed, "machine": machine_info(),
    }
    doc.update(multitask_summary(finished))
    print_table(f"Re-ranking, {len(ordered)} seed(s) x {questions} test questions, N={n}, top-K={top_k}",
                ("strategy", "accuracy %", "95% interval"),
                [(r["strategy"], f"{r['mean']:.1f}", f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
                 for r in doc["results"] + doc["references"] + paired])
    write_json(Path(args.out), doc)
    return doc


def multitask_summary(seeds: list[Seed]) -> dict[str, Any]:
    """`multitask` and `control` ({mean, ci_low, ci_high} of greedy pass@1, with maj@n beside it) and their
    paired difference, over the seeds whose multi-task evals are complete."""
    done = [s for s in seeds if s.done("multitask-eval")]
    if not done:
        return {"multitask": None, "control": None, "multitask_note": "not measured"}
    vectors, settings = {}, set()
    for s in done:
        for arm, record in s.done("multitask-eval")["arms"].items():
            [run] = json.loads(Path(record["eval_json"]).read_text())["runs"].values()
            vectors[(s.seed, arm)] = per_question(run["items"])
            settings.add((len(run["items"]), run["config"]["n"]))
    if len(settings) != 1:
        raise SystemExit(f"the multi-task arms were evaluated on different settings: {sorted(settings)}")
    [(questions, n)] = settings
    keys = [s.seed for s in done]

    def ci(arm: str, metric: str) -> dict[str, Any]:
        return interval([vectors[(k, arm)][metric] for k in keys], BOOTSTRAP_SAMPLES, f"rerank:{arm}:{metric}")

    def diff(metric: str) -> dict[str, Any]:
        per_seed = [[a - b for a, b in zip(vectors[(k, "multitask")][metric], vectors[(k, "control")][metric])]
                    for k in keys]
        return interval(per_seed, BOOTSTRAP_SAMPLES, f"rerank:multitask-control:{metric}")

    arms = {s.seed: s.done("multitask-train")["arms"] for s in done}
    summary: dict[str, Any] = {arm: {"metric": "pass@1 (greedy)", **ci(arm, "pass@1"), "maj": ci(arm, "maj")}
                               for arm in ("multitask", "control")}
    summary["multitask_minus_control"] = {"pass@1": diff("pass@1"), "maj": diff("maj")}
    summary["multitask_setup"] = {
        "how": "the loop's verifier option (configs/verifier.yaml's recipe, iterations 0, from the seed's "
               "warm-up): multitask = warm-up -> evaluator task on the policy -> generation SFT again; control = "
               "the evaluator's steps spent on generation SFT; each arm's sft-0 evaluated greedy + n samples",
        "seeds": keys, "test_questions": questions, "n": n, "arms": {str(k): v for k, v in arms.items()}}
    print_table(f"Multi-task sequential fine-tuning vs control, {len(keys)} seed(s) x {questions} test questions "
                f"(greedy pass@1 and maj@{n}, %)",
                ("arm", "pass@1", "95% interval", "maj", "95% interval"),
                [(arm, summary[arm]["mean"], f"[{summary[arm]['ci_low']}, {summary[arm]['ci_high']}]",
                  summary[arm]["maj"]["mean"], f"[{summary[arm]['maj']['ci_low']}, {summary[arm]['maj']['ci_high']}]")
                 for arm in ("multitask", "control")])
    return summary


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phases", nargs="+", choices=PHASES,
                        default=["train-samples", "verifier", "sample", "score", "aggregate"],
                        help="phases to run for every seed (verifier and an untrained generator start Ray: run "
                             "those under flock /tmp/dpost-ray.lock)")
    parser.add_argument("--generator", nargs="+", default=[], metavar="PATH",
                        help="each seed's warm-up checkpoint, in --seeds order (default: from --experiment)")
    parser.add_argument("--experiment", default=str(REPO / "runs" / "demo-seeds"),
                        help="the demo matrix's folder, read only: sft-seed<k>/manifest.json names the warm-up")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="the task and training run")
    parser.add_argument("--work", default=str(REPO / "runs" / "rerank-bench"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rerank.json"))
    parser.add_argument("--test-questions", type=int, default=1000)
    parser.add_argument("--n", type=int, default=16, help="samples per test question")
    parser.add_argument("--top-k", type=int, default=None, help="K of rr_topk / weighted_topk (default min(8, n/2))")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=200, help="the demo's sampling budget")
    parser.add_argument("--train-questions", type=int, default=500, help="unlabeled questions sampled for "
                                                                          "the verifier (the last held out)")
    parser.add_argument("--heldout-questions", type=int, default=100)
    parser.add_argument("--train-samples", type=int, default=8, help="samples per training question")
    parser.add_argument("--verifier-steps", type=int, default=80)
    parser.add_argument("--verifier-lr", type=float, default=1e-3)
    parser.add_argument("--verifier-workers", type=int, default=1,
                        help="Ray Train workers; on a busy 2-core machine a second worker adds start-up, not speed")
    parser.add_argument("--verifier-batch", type=int, default=32, help="global batch of the verifier task")
    parser.add_argument("--verifier-trainer", choices=("ray", "in-process"), default="ray",
                        help="train the verifier under Ray Train (default) or in this process without Ray")
    parser.add_argument("--verifier-max-per-label", type=int, default=None,
                        help="most right (and wrong) examples per question (default: all unique ones)")
    parser.add_argument("--mt-n", type=int, default=0, help="samples per test question for the multi-task "
                                                             "arms' maj (default: --n)")
    parser.add_argument("--mt-test-questions", type=int, default=0,
                        help="test questions for the multi-task arms (default: --test-questions)")
    parser.add_argument("--chunk-items", type=int, default=25, help="questions per saved chunk of eval.json")
    parser.add_argument("--decode-batch", type=int, default=64, help="rows decoded together")
    parser.add_argument("--score-batch", type=int, default=64, help="candidates scored together")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--partial", action="store_true",
                        help="aggregate: also seeds still being sampled or scored, on the questions all have scored")
    args = parser.parse_args(argv)
    if args.generator and len(args.generator) != len(args.seeds):
        parser.error(f"--generator needs one path per seed ({len(args.seeds)}), got {len(args.generator)}")
    if args.verifier_batch % args.verifier_workers:
        parser.error("--verifier-batch must be a multiple of --verifier-workers")
    if not 0 < args.heldout_questions < args.train_questions:
        parser.error("--heldout-questions must be in 1..--train-questions - 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    generators = args.generator or [None] * len(args.seeds)
    seeds = [Seed(args, seed, generator) for seed, generator in zip(args.seeds, generators)]
    phases = {"train-samples": train_samples_phase, "verifier": verifier_phase, "sample": sample_phase,
              "score": score_phase,
              "multitask-train": multitask_train_phase, "multitask-eval": multitask_eval_phase}
    for name in (p for p in PHASES if p in args.phases and p != "aggregate"):
        for seed in seeds:
            print(f"[rerank] seed {seed.seed}: {name}", flush=True)
            outputs = phases[name](seed)
            print(f"[rerank] seed {seed.seed}: {name} done in {outputs['seconds']} s", flush=True)
    if "aggregate" in args.phases:
        aggregate(args, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
