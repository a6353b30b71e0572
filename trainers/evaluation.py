"""Evaluate a model on math word problems: greedy pass@1 (strict and flexible), pass@k and maj@k, with or
without the calculator, and with a verifier: solution-cluster re-ranking of the sampled answers
(`trainers.core.rerank`: rr_topk, weighted, weighted_topk).

`evaluate_problems` is the one evaluation path: the coordinator's eval stage, `dpost eval` and the benchmarks
all call it. It decodes through a `decode_fn(rows) -> list[Decoded]`, so the same code runs in-process
(`local_decoder`) or on the Serve `rollout` pool (`services.pools.decode_on_pool`, which also returns each
row's model version), and checks every answer with the data's `trainers.core.answers` checker (`#### N` or
`\\boxed{}`). With `config.verifier`, a `score_fn(questions, completions) -> scores` (`local_scorer`: the
verifier in this process) scores every sampled solution, and each item's samples are clustered and chosen from
by every re-ranking strategy.

`evaluate_files` (and `evaluate_file`) add benchmark files and a resumable output for `dpost eval`: per-item
records land in `<out_dir>/eval.json`, rewritten atomically after every chunk, so an interrupted run leaves a
valid partial file and a re-run with the same settings resumes where it stopped.

    eval.json = {"format": "dpost-eval/1", "runs": {name: run}}
    run       = {"name", "config", "data", "complete", "metrics", "throughput", "model_versions", "items": [item]}
    item      = {"question_id", "question", "gold",
                 greedy:  "prediction" (flexible), "prediction_strict", "correct" (strict), "correct_flexible",
                          "completion", "num_tokens", "finish_reason", "calculator_overrides", "model_version",
                 sampled: "sampled_answers", "majority", "votes", "majority_correct", "samples": [record],
                 re-ranked (with a verifier): "verifier_scores" (one per sample, in order), "reranked" and
                          "reranked_correct" ({strategy: the chosen answer / whether it is the gold one})}

The stored answers, scores and gold answer are enough to re-aggregate an item with `trainers.core.rerank`
(`rerank_correct(item["sampled_answers"], item["verifier_scores"], item["gold"], k, checker)`).

A run is one (data file, calculator on/off) pair, named after the file (`svamp`, `gsm8k/test`), plus
" (no calculator)". Unless the caller chooses, the calculator follows the data (`ProblemSet.calculator`: on for
GSM8K-style data, off for MATH).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from tqdm.auto import tqdm

from trainers.core.answers import AnswerChecker, answer_checker, format_answer
from trainers.core.errors import ConfigError
from trainers.core.files import atomic_write_text
from trainers.core.metrics import accuracy, pass_at_k
from trainers.core.rerank import STRATEGIES, Cluster, choose, cluster_answers
from trainers.data.problems import Problem, ProblemSet, load_problems
from trainers.engine.decoding import MAX_NEW_TOKENS, Decoded, DecodeRequest, decode_all
from trainers.engine.rows import DecodeParams, make_requests, to_records
from trainers.engine.scoring import score_candidates
from trainers.models.checkpoints import load_policy

__all__ = ["DecodeFn", "EvalConfig", "PlannedRun", "ScoreFn", "evaluate_file", "evaluate_files",
           "evaluate_problems", "format_rerank", "format_skipped", "format_throughput", "load_results",
           "local_decoder", "local_scorer", "markdown_report", "markdown_table", "plan_runs", "score_greedy",
           "score_reranked", "score_sampled", "terminal_table"]

EVAL_FILE = "eval.json"
FILE_FORMAT = "dpost-eval/1"

# In-process decoding returns the rows; the Serve pool also returns the model version of every row.
DecodeFn = Callable[[list[DecodeRequest]], Union[list[Decoded], tuple[list[Decoded], list[str]]]]
# score_fn(questions, completions): the verifier's S = p(correct) / (p(correct) + p(incorrect)) for each pair.
ScoreFn = Callable[[list[str], list[str]], list[float]]
# The paper's RR.Top-8 (N=64); a smaller N gets min(8, N // 2), so the top-K always leaves clusters out
# whenever the N answers can form more than K of them.
RERANK_TOP_K = 8


@dataclass
class EvalConfig:
    """What to evaluate and how. Every field except `data`, `batch_size` and `model`'s spelling decides the
    results, so a resumed run must match the stored one on all of them.

    Attributes:
        data: benchmark files (any format `trainers.data.problems.load_problems` reads).
        fmt: their format, `auto` to guess from the extension and content.
        greedy: decode one greedy (T=0) answer per item and report pass@1 with strict and flexible extraction.
        n: sampled answers per item for pass@k and maj@k; 0 samples nothing.
        ks: the k values to report for pass@k and maj@k, each in 1..n; None means [1, n].
        temperature: sampling temperature for the n samples (the paper's 0.7).
        max_new_tokens: the most tokens a greedy or sampled answer may have (the paper's 300).
        calculator: let the calculator write the results of `<<expr=` annotations; None follows the data
            (`ProblemSet.calculator`: on where its rationales carry annotations or it has none, off for MATH).
        seed: base seed; each sampled row's seed comes from (seed, question id, sample index), so a sample is
            the same whatever batch or chunk it lands in, and a resumed run draws the same samples.
        batch_size: items decoded per chunk; the progress bar and eval.json advance once per chunk.
        limit: evaluate only the first `limit` items of each file.
        model: what is evaluated (a checkpoint path, `live:rollout`); a run resumes only on the same model.
        verifier: the verifier that scores every sampled solution for re-ranking (its checkpoint path); None
            re-ranks nothing. Needs n >= 2, and a `score_fn` where the evaluation runs.
        rerank_top_k: K of the rr_topk and weighted_topk strategies, in 1..n; None means min(8, n // 2).
    """

    data: list[str] = field(default_factory=list)
    fmt: str = "auto"
    greedy: bool = True
    n: int = 0
    ks: list[int] | None = None
    temperature: float = 0.7
    max_new_tokens: int = MAX_NEW_TOKENS
    calculator: bool | None = None
    seed: int = 0
    batch_size: int = 32
    limit: int | None = None
    model: str = ""
    verifier: str | None = None
    rerank_top_k: int | None = None

    def __post_init__(self) -> None:
        self.data = [str(p) for p in self.data]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        for name in ("n", "max_new_tokens", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.n < 0:
            raise ConfigError(f"n must be 0 or more, got {self.n}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ConfigError(f"limit must be a positive integer, got {self.limit!r}")
        if not self.greedy and self.n == 0:
            raise ConfigError("nothing to evaluate: greedy decoding is off and n is 0")
        if self.ks is not None:
            if self.n == 0:
                raise ConfigError("k values need sampled answers: set n > 0")
            bad = [k for k in self.ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n]
            if bad or not self.ks:
                raise ConfigError(f"every k must be between 1 and n={self.n}, got {self.ks}")
        if self.n > 0 and not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 10):
            raise ConfigError(f"temperature must be in (0, 10] for sampling, got {self.temperature!r}")
        if self.calculator is not None and not isinstance(self.calculator, bool):
            raise ConfigError(f"calculator must be true, false or unset, got {self.calculator!r}")
        if self.verifier is not None and self.n < 2:
            raise ConfigError(f"re-ranking with a verifier needs n >= 2 sampled answers per item, got n={self.n}")
        if self.rerank_top_k is not None:
            if self.verifier is None:
                raise ConfigError("rerank_top_k needs a verifier to re-rank with")
            k = self.rerank_top_k
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n:
                raise ConfigError(f"rerank_top_k must be between 1 and n={self.n}, got {k!r}")

    @property
    def k_values(self) -> list[int]:
        """The k values reported, sorted; empty when nothing is sampled."""
        if self.n == 0:
            return []
        return sorted(set(self.ks if self.ks is not None else [1, self.n]))

    @property
    def top_k(self) -> int:
        """K of the top-K re-ranking strategies: `rerank_top_k`, else min(8, n // 2) (at least 1)."""
        return self.rerank_top_k if self.rerank_top_k is not None else max(1, min(RERANK_TOP_K, self.n // 2))


@dataclass
class PlannedRun:
    """One (file, calculator) run before it starts: its problems and how many items eval.json already holds."""

    name: str
    path: Path
    problems: ProblemSet
    config: EvalConfig
    done: int


# ---------------------------------------------------------------------------------------------- metrics


def score_greedy(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Greedy pass@1 with strict (`#### N`) and flexible (else the last number) extraction.

    Each record needs `correct` (strict) and `correct_flexible`, as `to_records` and eval.json items have.
    """
    return {
        "items": len(records),
        "greedy_strict": accuracy([bool(r["correct"]) for r in records]),
        "greedy_flexible": accuracy([bool(r["correct_flexible"]) for r in records]),
    }


def score_sampled(records_by_question: Mapping[str, Sequence[Mapping[str, Any]]], ks: Sequence[int],
                  checker: AnswerChecker | None = None) -> dict[str, Any]:
    """Unbiased pass@k (flexible, and strict as `pass@k_strict`) averaged over questions, and maj@k: the
    majority vote over each question's first k flexible answers (ties go to the answer seen first; missing
    answers do not vote) compared with its gold answer, both through `checker` (default gsm8k).

    Each record needs `answer` (flexible), `correct`, `correct_flexible` and `gold`, in sample order.
    """
    checker = checker or answer_checker()
    groups = [list(g) for g in records_by_question.values()]
    scores: dict[str, Any] = {"questions": len(groups)}
    for k in ks:
        scores[f"pass@{k}"] = _mean([pass_at_k(len(g), sum(bool(r["correct_flexible"]) for r in g), k)
                                     for g in groups])
        majorities = [choose(cluster_answers([r["answer"] for r in g[:k]], checker), "maj") for g in groups]
        verdicts = checker.equivalent_many([(c.answer if c else None, g[0]["gold"])
                                            for c, g in zip(majorities, groups)])
        scores[f"maj@{k}"] = _mean([float(v) for v in verdicts])
        scores[f"pass@{k}_strict"] = _mean([pass_at_k(len(g), sum(bool(r["correct"]) for r in g), k)
                                            for g in groups])
    return scores


def score_reranked(items: Sequence[Mapping[str, Any]], n: int, top_k: int) -> dict[str, Any]:
    """Re-ranked accuracy at n samples, `{strategy}@{n}` for rr_topk, weighted and weighted_topk (maj@n is
    `score_sampled`'s), from each item's `reranked_correct`; `rerank_top_k` is the K they used."""
    scores: dict[str, Any] = {f"{s}@{n}": _mean([float(it["reranked_correct"][s]) for it in items])
                              for s in STRATEGIES if s != "maj"}
    return {**scores, "rerank_top_k": top_k}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _metrics(items: Sequence[Mapping[str, Any]], config: EvalConfig, checker: AnswerChecker) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if config.greedy:
        metrics.update(score_greedy(items))
    if config.n:
        metrics.update(score_sampled({it["question_id"]: it["samples"] for it in items}, config.k_values,
                                     checker))
    if config.verifier:
        metrics.update(score_reranked(items, config.n, config.top_k))
    return metrics


# ---------------------------------------------------------------------------------------------- running

# on_chunk(items, decode_seconds, generated_tokens): one finished chunk of evaluate_problems
ChunkFn = Callable[[list[dict[str, Any]], float, int], None]


def evaluate_problems(problems: Sequence[Problem], decode_fn: DecodeFn, config: EvalConfig, model_version: str,
                      on_chunk: ChunkFn | None = None, score_fn: ScoreFn | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The evaluation: decode every problem through `decode_fn` (greedy and/or `config.n` samples, as `config`
    says), `config.batch_size` problems per call, check each answer against its gold one with the problems'
    answer checker, score the samples with `score_fn` and re-rank them when `config.verifier` is set, and
    return the items (one per problem, in order; see the module docstring) and their metrics (`score_greedy`,
    `score_sampled`, `score_reranked`). `on_chunk` sees each chunk's items, decode seconds and generated
    tokens as soon as the chunk is done. `config.calculator` None follows the problems (`ProblemSet.calculator`)."""
    if config.verifier and score_fn is None:
        raise ConfigError(f"re-ranking with verifier {config.verifier!r} needs a score_fn")
    problem_set = ProblemSet(list(problems))
    config = _for_data(config, config.calculator, problem_set)
    checker = answer_checker(problem_set.answer_format)
    items: list[dict[str, Any]] = []
    for start in range(0, len(problems), config.batch_size):
        chunk_items, seconds, tokens = _evaluate_chunk(problems[start:start + config.batch_size], decode_fn,
                                                       config, model_version, checker, score_fn)
        items.extend(chunk_items)
        if on_chunk:
            on_chunk(chunk_items, seconds, tokens)
    return items, _metrics(items, config, checker)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def local_decoder(checkpoint: str | Path, batch_size: int = 64) -> DecodeFn:
    """A decode_fn that runs `checkpoint` in this process (on the GPU when there is one)."""
    model, tokenizer = load_policy(checkpoint, device=_device())

    def decode(rows: list[DecodeRequest]) -> list[Decoded]:
        return decode_all(model, tokenizer, rows, batch_size=batch_size)

    return decode


def local_scorer(checkpoint: str | Path, batch_size: int = 16) -> ScoreFn:
    """A score_fn that runs the verifier `checkpoint` in this process (loaded once, on the GPU when there is
    one). CheckpointError when the folder is not a causal LM checkpoint."""
    model, tokenizer = load_policy(checkpoint, device=_device())

    def score(questions: list[str], completions: list[str]) -> list[float]:
        return score_candidates(model, tokenizer, questions, completions, batch_size=batch_size)

    return score


def evaluate_files(config: EvalConfig, decode_fn: DecodeFn, out_dir: str | Path, model_version: str,
                   calculators: Sequence[bool | None] | None = None, progress: bool = True,
                   score_fn: ScoreFn | None = None) -> list[dict[str, Any]]:
    """Evaluate every file in `config.data`, once per calculator setting (`[True, False]` is the calculator
    ablation; None means `[config.calculator]`, and a None setting follows each file's data). Writes eval.json
    and eval.md into out_dir; returns one result per run (see `evaluate_file`). Every file is read and every
    resume checked before decoding. `score_fn` scores the samples for re-ranking (`config.verifier`)."""
    out_dir = Path(out_dir)
    plans = plan_runs(config, out_dir, calculators)
    results = [_run(plan, decode_fn, out_dir, model_version, progress, score_fn) for plan in plans]
    atomic_write_text(out_dir / "eval.md", markdown_report(load_results(out_dir)))
    return results


def evaluate_file(path: str | Path, decode_fn: DecodeFn, config: EvalConfig, out_dir: str | Path,
                  model_version: str, progress: bool = True, name: str | None = None,
                  score_fn: ScoreFn | None = None) -> dict[str, Any]:
    """Evaluate one file with `config.calculator` (None: the data's); records go to the run `name` in
    `<out_dir>/eval.json`
        (default: the file's stem, or `parent/stem` for a split name such as `gsm8k/test`). Returns the run's
    result: name, data (path, loaded, evaluated, skipped and why), config, metrics, throughput, resumed
    (items found done), model_versions and the eval.json path.

    Raises DataError for an unreadable file and ConfigError when eval.json holds this run with other settings.
    """
    path, out_dir = Path(path), Path(out_dir)
    problems = load_problems(path, config.fmt)
    config = _for_data(config, config.calculator, problems)
    name = name or _run_name(_labels([path])[0], config.calculator)
    done = _check_resumable(_read_doc(out_dir), name, _run_config(config, problems))
    return _run(PlannedRun(name, path, problems, config, done), decode_fn, out_dir, model_version, progress,
                score_fn)


def plan_runs(config: EvalConfig, out_dir: str | Path, calculators: Sequence[bool | None] | None = None
              ) -> list[PlannedRun]:
    """Read every data file and check each run against eval.json, without decoding anything: a bad file or
    a resume with other settings fails here, before a model is loaded. Raises DataError / ConfigError."""
    if not config.data:
        raise ConfigError("no data files to evaluate")
    calculators = [config.calculator] if calculators is None else list(dict.fromkeys(calculators))
    if not calculators:
        raise ConfigError("calculators must hold True, False or both")
    paths = [Path(p) for p in config.data]
    labels = _labels(paths)
    doc = _read_doc(Path(out_dir))
    plans = []
    for path, label in zip(paths, labels):
        problems = load_problems(path, config.fmt)
        for calculator in calculators:
            run_config = _for_data(config, calculator, problems)
            name = _run_name(label, run_config.calculator)
            done = _check_resumable(doc, name, _run_config(run_config, problems))
            plans.append(PlannedRun(name, path, problems, run_config, done))
    return plans


def _for_data(config: EvalConfig, calculator: bool | None, problems: ProblemSet) -> EvalConfig:
    """`config` with `calculator`, or where that is None, the calculator `problems` call for."""
    return replace(config, calculator=problems.calculator if calculator is None else bool(calculator))


def _run(plan: PlannedRun, decode_fn: DecodeFn, out_dir: Path, model_version: str, progress: bool,
         score_fn: ScoreFn | None) -> dict[str, Any]:
    """One run of `evaluate_files`: evaluate the items eval.json does not hold yet, saving it after each chunk."""
    config = plan.config
    checker = answer_checker(plan.problems.answer_format)
    problems = _limited(plan.problems, config)
    run_config = _run_config(config, plan.problems)
    doc = _read_doc(out_dir)
    run = doc["runs"].get(plan.name)
    if run is None or _check_resumable(doc, plan.name, run_config) == 0:
        run = _new_run(plan, run_config)
    done_ids = {item["question_id"] for item in run["items"]}
    todo = [p for p in problems if p.id not in done_ids]
    resumed = len(problems) - len(todo)
    timing = run["timing"]

    def save() -> None:
        run["complete"] = len(run["items"]) == len(problems)
        _summarize(run, config, checker)
        doc["runs"][plan.name] = run
        atomic_write_text(out_dir / EVAL_FILE, json.dumps(doc, indent=1, ensure_ascii=False))

    with tqdm(total=len(problems), initial=resumed, desc=plan.name, unit="item", disable=not progress,
              dynamic_ncols=True) as bar:
        def on_chunk(items: list[dict[str, Any]], seconds: float, tokens: int) -> None:
            run["items"].extend(items)
            timing["decode_seconds"] += seconds
            timing["generated_tokens"] += tokens
            timing["decoded_items"] += len(items)
            save()
            bar.update(len(items))
            if config.greedy:
                bar.set_postfix(acc=f"{run['metrics']['greedy_flexible']:.1%}", refresh=False)

        evaluate_problems(todo, decode_fn, config, model_version, on_chunk=on_chunk, score_fn=score_fn)
    if not todo:  # nothing left to decode (a finished run asked again): still record the final state
        save()
    return {**_result(run), "resumed": resumed, "eval_json": str(out_dir / EVAL_FILE)}


def _evaluate_chunk(chunk: Sequence[Problem], decode_fn: DecodeFn, config: EvalConfig, model_version: str,
                    checker: AnswerChecker, score_fn: ScoreFn | None) -> tuple[list[dict[str, Any]], float, int]:
    """Decode one chunk's greedy and sampled rows in a single decode_fn call (and score the samples in one
    score_fn call when re-ranking); return its items, the decode seconds and the generated tokens."""
    greedy = DecodeParams(n=1, temperature=0.0, max_new_tokens=config.max_new_tokens,
                            calculator=config.calculator, seed=config.seed)
    sampled = DecodeParams(n=config.n, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                             calculator=config.calculator, seed=config.seed)
    rows = (make_requests(chunk, greedy) if config.greedy else []) + make_requests(chunk, sampled)
    started = time.perf_counter()
    output = decode_fn(rows)
    seconds = time.perf_counter() - started
    decoded, versions = output if isinstance(output, tuple) else (output, [model_version] * len(output))
    if len(decoded) != len(rows) or len(versions) != len(rows):
        raise RuntimeError(f"decode_fn returned {len(decoded)} rows for {len(rows)} requests")

    split = len(chunk) if config.greedy else 0
    greedy_records = (_with_versions(to_records(chunk, greedy, decoded[:split], model_version), versions[:split])
                      if config.greedy else [])
    sample_records = _with_versions(to_records(chunk, sampled, decoded[split:], model_version), versions[split:])
    scores = (score_fn([r["question"] for r in sample_records], [r["completion"] for r in sample_records])
              if config.verifier and score_fn else [])
    items = []
    for i, problem in enumerate(chunk):
        item: dict[str, Any] = {"question_id": problem.id, "question": problem.question, "gold": problem.answer}
        if config.greedy:
            r = greedy_records[i]
            item.update(prediction=r["answer"], prediction_strict=r["strict_answer"], correct=r["correct"],
                        correct_flexible=r["correct_flexible"], completion=r["completion"],
                        num_tokens=r["num_tokens"], finish_reason=r["finish_reason"],
                        calculator_overrides=r["calculator_overrides"], model_version=r["model_version"])
        if config.n:
            samples = sample_records[i * config.n:(i + 1) * config.n]
            answers = [s["answer"] for s in samples]
            clusters = cluster_answers(answers, checker)
            majority = choose(clusters, "maj")
            item.update(sampled_answers=answers, majority=majority.answer if majority else None,
                        votes=majority.votes if majority else 0,
                        majority_correct=checker.equivalent(majority.answer if majority else None, problem.answer),
                        samples=[{k: v for k, v in s.items() if k not in ("question_id", "question", "prompt")}
                                 for s in samples])
            if scores:
                item.update(_reranked(clusters, scores[i * config.n:(i + 1) * config.n], problem, config,
                                      checker))
        items.append(item)
    return items, seconds, sum(d.num_tokens for d in decoded)


def _reranked(clusters: Sequence[Cluster], scores: Sequence[float], problem: Problem, config: EvalConfig,
              checker: AnswerChecker) -> dict[str, Any]:
    """One item's verifier scores and, for each re-ranking strategy, the answer it chooses and whether that is
    the gold answer."""
    chosen = {s: choose(clusters, s, scores, config.top_k) for s in STRATEGIES if s != "maj"}
    answers = {s: c.answer if c else None for s, c in chosen.items()}
    verdicts = checker.equivalent_many([(answer, problem.answer) for answer in answers.values()])
    return {"verifier_scores": [float(s) for s in scores], "reranked": answers,
            "reranked_correct": dict(zip(answers, verdicts))}


def _with_versions(records: list[dict[str, Any]], versions: Sequence[str]) -> list[dict[str, Any]]:
    for record, version in zip(records, versions):
        record["model_version"] = version
    return records


# ---------------------------------------------------------------------------------------------- eval.json


def _run_config(config: EvalConfig, problems: ProblemSet) -> dict[str, Any]:
    """The settings that decide a run's results; a resume must match every one."""
    sampled = config.n > 0
    run_config = {
        "model": config.model, "problems_sha256": _problems_digest(_limited(problems, config)),
        "greedy": config.greedy, "n": config.n, "ks": config.k_values,
        "temperature": config.temperature if sampled else None, "seed": config.seed if sampled else None,
        "max_new_tokens": config.max_new_tokens, "calculator": config.calculator,
    }
    if config.verifier:  # only re-ranked runs carry these, so a run without a verifier keeps its stored config
        run_config.update(verifier=config.verifier, rerank_top_k=config.top_k)
    return run_config


def _problems_digest(problems: Sequence[Problem]) -> str:
    """Content hash of the evaluated items: the same file moved or re-exported still resumes; an edited one
    (or another file with the same name) does not."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.answer]).encode())
    return h.hexdigest()


def _limited(problems: ProblemSet, config: EvalConfig) -> list[Problem]:
    return problems.problems[:config.limit] if config.limit else problems.problems


def _new_run(plan: PlannedRun, run_config: dict[str, Any]) -> dict[str, Any]:
    problems = plan.problems
    return {
        "name": plan.name, "config": run_config,
        "data": {"path": str(plan.path), "format": plan.config.fmt, "answer_format": problems.answer_format,
                 "loaded": len(problems),
                 "evaluated": len(_limited(problems, plan.config)), "limit": plan.config.limit,
                 "skipped": problems.skipped, "skipped_reasons": problems.skipped_reasons},
        "complete": False, "metrics": {}, "throughput": {}, "model_versions": [],
        "timing": {"decode_seconds": 0.0, "generated_tokens": 0, "decoded_items": 0},
        "items": [],
    }


def _summarize(run: dict[str, Any], config: EvalConfig, checker: AnswerChecker) -> None:
    """Recompute metrics, throughput and versions from the run's items and timing (after every chunk)."""
    run["metrics"] = _metrics(run["items"], config, checker)
    timing = run["timing"]
    seconds = timing["decode_seconds"]
    run["throughput"] = {
        "items_per_s": timing["decoded_items"] / seconds if seconds else 0.0,
        "tokens_per_s": timing["generated_tokens"] / seconds if seconds else 0.0,
        "decode_seconds": seconds, "decoded_items": timing["decoded_items"],
        "generated_tokens": timing["generated_tokens"],
    }
    versions = {it["model_version"] for it in run["items"] if "model_version" in it}
    versions |= {s["model_version"] for it in run["items"] for s in it.get("samples", ())}
    run["model_versions"] = sorted(versions)


def _read_doc(out_dir: Path) -> dict[str, Any]:
    path = out_dir / EVAL_FILE
    if not path.exists():
        return {"format": FILE_FORMAT, "runs": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a readable dpost eval file ({e}); pick another --out") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT or not isinstance(doc.get("runs"), dict):
        raise ConfigError(f"{path} is not a dpost eval file ({FILE_FORMAT}); pick another --out")
    return doc


def _check_resumable(doc: dict[str, Any], name: str, run_config: dict[str, Any]) -> int:
    """How many items of run `name` eval.json already holds; ConfigError if it was made with other settings."""
    run = doc["runs"].get(name)
    if run is None:
        return 0
    stored = run.get("config", {})
    changed = [key for key in run_config if stored.get(key) != run_config[key]]
    if changed:
        what = ", ".join(f"{key} {stored.get(key)!r} -> {run_config[key]!r}" if key != "problems_sha256"
                         else "the data items differ" for key in changed)
        raise ConfigError(f"the eval output already holds run {name!r} made with other settings ({what}); "
                          "pick another --out to keep both, or delete it to start over")
    return len(run.get("items", []))


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The result of every run in `<out_dir>/eval.json` (no per-item records), in the order they were added."""
    return [_result(run) for run in _read_doc(Path(out_dir))["runs"].values()]


def _result(run: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in ("items", "timing")}


# A file named after its split says little on its own: `gsm8k/test` is a better label than `test`.
_SPLIT_NAMES = {"train", "test", "dev", "val", "valid", "validation", "eval", "ood", "labeled", "unlabeled"}


def _labels(paths: Sequence[Path]) -> list[str]:
    """A short unique label per data file: its stem, or parent/stem for a split name or a shared stem."""
    stems = [p.stem for p in paths]
    labels = [p.stem if stems.count(p.stem) == 1 and p.stem.lower() not in _SPLIT_NAMES
              else f"{p.parent.name}/{p.stem}" for p in paths]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(f"data file {label!r} is given twice")
    return labels


def _run_name(label: str, calculator: bool) -> str:
    return label if calculator else f"{label} (no calculator)"

# ---------------------------------------------------------------------------------------------- tables


def _columns(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, Callable[[Mapping[str, Any]], str]]]:
    """(header, cell) pairs: fixed columns, then the metric columns any result has, in a stable order."""
    def pct(key: str) -> Callable[[Mapping[str, Any]], str]:
        return lambda r: f"{100 * r['metrics'][key]:.1f}" if key in r["metrics"] else "-"

    def items(r: Mapping[str, Any]) -> str:
        done = r["metrics"].get("items", r["metrics"].get("questions", 0))
        total = r["data"]["evaluated"]
        return str(total) if done == total else f"{done}/{total}"

    columns: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("data", lambda r: r["name"].removesuffix(" (no calculator)")),
        ("calculator", lambda r: "on" if r["config"]["calculator"] else "off"),
        ("items", items),
        ("skipped", lambda r: str(r["data"]["skipped"])),
    ]
    keys = {key for r in results for key in r["metrics"]}
    if "greedy_strict" in keys:
        columns += [("greedy strict", pct("greedy_strict")), ("greedy flexible", pct("greedy_flexible"))]
    ks = sorted({int(key[5:]) for key in keys if key.startswith("pass@") and not key.endswith("_strict")})
    columns += [(f"pass@{k}", pct(f"pass@{k}")) for k in ks]
    columns += [(f"maj@{k}", pct(f"maj@{k}")) for k in ks]
    reranked = sorted({key for key in keys if key.split("@")[0] in STRATEGIES and not key.startswith("maj@")},
                      key=lambda key: (int(key.split("@")[1]), STRATEGIES.index(key.split("@")[0])))
    columns += [(key, pct(key)) for key in reranked]
    return columns


def markdown_table(results: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub Markdown table of the results (accuracies in percent), ready for a README."""
    columns = _columns(results)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join(":---" if i < 2 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in results]
    return "\n".join(lines) + "\n"


def terminal_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The same table as aligned plain text for a terminal."""
    columns = _columns(results)
    rows = [[h for h, _ in columns]] + [[cell(r) for _, cell in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_throughput(result: Mapping[str, Any]) -> str:
    """`gsm8k: 1319 items in 6.1 s decoding, 216.2 items/s, 1730 tokens/s (n=0, 300 max new tokens)`."""
    t, config = result["throughput"], result["config"]
    return (f"{result['name']}: {t['decoded_items']} items in {t['decode_seconds']:.1f} s decoding, "
            f"{t['items_per_s']:.1f} items/s, {t['tokens_per_s']:.0f} tokens/s "
            f"(greedy {'on' if config['greedy'] else 'off'}, n={config['n']}, "
            f"{config['max_new_tokens']} max new tokens)")


def format_skipped(result: Mapping[str, Any], show: int = 5) -> str | None:
    """One line per skipped item (the first `show`), or None when the loader skipped nothing."""
    data = result["data"]
    if not data["skipped"]:
        return None
    lines = [f"{result['name']}: {data['skipped']} item(s) skipped by the loader:"]
    lines += [f"  {reason}" for reason in data["skipped_reasons"][:show]]
    if data["skipped"] > show:
        lines.append(f"  ... and {data['skipped'] - show} more (see eval.json)")
    return "\n".join(lines)


def format_rerank(result: Mapping[str, Any]) -> str | None:
    """`gsm8k: re-ranked 16 samples per item with verifier PATH, top-K K=8`, or None without a verifier."""
    config = result["config"]
    if not config.get("verifier"):
        return None
    return (f"{result['name']}: re-ranked {config['n']} samples per item with verifier {config['verifier']}; "
            f"rr_topk and weighted_topk keep the {config['rerank_top_k']} largest answer clusters")


def markdown_report(results: Sequence[Mapping[str, Any]]) -> str:
    """eval.md: the table, the settings it was made with, and the items the loaders skipped."""
    models = sorted({v for r in results for v in r.get("model_versions", [])})
    settings = sorted({_settings(r["config"]) for r in results})
    lines = ["# Evaluation", "", f"Model: {', '.join(models) or '-'}. Settings: {'; '.join(settings)}.",
             "Accuracies in percent. Greedy strict reads only the `#### N` answer, flexible falls back to the last "
             "number; pass@k (unbiased) and maj@k use flexible extraction.", "",
             markdown_table(results).rstrip("\n")]
    reranked = [line for r in results if (line := format_rerank(r))]
    if reranked:
        lines += ["", "Re-ranking (Liu et al. 2023): rr_topk is the answer of the best-scored solution within the "
                  "top-K clusters, weighted the cluster with the largest summed verifier score, weighted_topk the "
                  "same within the top-K.", *[f"- {line}" for line in reranked]]
    if any(r["data"].get("answer_format") == "boxed" for r in results):
        lines += ["", "Boxed (MATH-format) data: strict reads the last `\\boxed{}`, answers compare by math-verify."]
    partial = [r["name"] for r in results if not r.get("complete")]
    if partial:
        lines += ["", f"Partial (interrupted) runs: {', '.join(partial)}."]
    skipped = [line for r in results if (line := format_skipped(r))]
    if skipped:
        lines += ["", "```", *skipped, "```"]
    return "\n".join(lines) + "\n"


def _settings(config: Mapping[str, Any]) -> str:
    text = f"max {config['max_new_tokens']} new tokens"
    if config["n"]:
        text += f", n={config['n']} samples at T={format_answer(config['temperature'])} (seed {config['seed']})"
    return text
