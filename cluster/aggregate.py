"""The experiment's aggregate step: accuracies with 95% intervals from per-question correctness, paired
differences between methods, `experiments.json`, `docs/experiments.md` and the figures.

Intervals are percentile bootstraps over seeds and questions: a replicate draws the seeds with replacement and,
for each drawn seed, its questions with replacement, and averages. A paired difference is bootstrapped the same
way over per-question differences (same seed, same questions), so the variation both methods share (which
questions are hard, which warm-up model a seed trained) cancels. With one seed it is a bootstrap over questions.

Per-question correctness is read from each run's `eval-<version>-test.jsonl` (`correct`: strict `#### N`).

The DPO step's effect on sampling (the paper's Fig. 6): the SFT model f before the DPO step and the DPO model fd
after it, each scored on its first k samples per question at the sampling temperature: pass@1, pass@k and the
distinct correct rationales (the pseudo-labels) each yields. With `evaluation.dpo_effect_samples: k` the run
samples dev for this, as the paper does. Without it the samples the loop draws anyway stand in: in iteration t, f
samples `dpo_samples` rationales per question of U_t (for pairs) and fd samples K (for pseudo-labels), k = the
smaller; that is in-sample for the DPO step, whose pairs came from f's samples of these questions.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cluster.experiment import Cell, ExperimentConfig
from cluster.rundir import read_jsonl, recorded_path
from trainers.core.dedup import dedup_clusters
from trainers.core.files import atomic_write_text
from trainers.core.metrics import pass_at_k

METHOD_NAMES = {"sft": "SFT", "st": "ST", "dpo-st": "DPO-ST", "rft": "RFT"}
# one colour per method in every figure; Fig. 7 draws its no-calculator line dashed in the same colour
METHOD_COLORS = {"sft": "C0", "st": "C1", "dpo-st": "C2", "rft": "C3"}


# ------------------------------------------------------------------------------------------------ statistics

def bootstrap_mean(per_seed: Sequence[Sequence[float]], samples: int = 2000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """(mean, low, high) in the values' units, x100: the mean over seeds of each seed's mean over questions, and
    its 95% percentile interval. Deterministic for a `seed`.

    Resampling n values with replacement only changes how often each distinct value is drawn, so a replicate
    of one seed is a multinomial draw over its distinct values (exact, and cheap for 0/1 and -1/0/1 vectors)."""
    arrays = [np.asarray(values, dtype=float) for values in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every seed needs at least one question")
    rng = np.random.default_rng(seed)
    n_seeds = len(arrays)
    # replicate_means[s][b, j]: seed s's question-resampled mean, for the j-th seed drawn in replicate b
    replicate_means = []
    for a in arrays:
        levels, counts = np.unique(a, return_counts=True)
        draws = rng.multinomial(a.size, counts / a.size, size=(samples, n_seeds))
        replicate_means.append(draws @ levels / a.size)
    drawn = rng.integers(n_seeds, size=(samples, n_seeds))
    stacked = np.stack(replicate_means)  # (seeds, samples, n_seeds)
    replicates = stacked[drawn, np.arange(samples)[:, None], np.arange(n_seeds)[None, :]].mean(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    mean = float(np.mean([a.mean() for a in arrays]))
    return 100 * mean, 100 * float(low), 100 * float(high)


def paired_differences(method: dict[str, bool], baseline: dict[str, bool]) -> list[float]:
    """Per question, method correct minus baseline correct (-1, 0, 1); both must cover the same questions."""
    if set(method) != set(baseline):
        raise ValueError(f"paired comparison on different questions ({len(method)} vs {len(baseline)})")
    return [float(method[q]) - float(baseline[q]) for q in sorted(baseline)]


def interval(per_seed: Sequence[Sequence[float]], samples: int, key: str) -> dict[str, float]:
    """bootstrap_mean as a record, its rng seeded by `key` so each number is reproducible on its own."""
    mean, low, high = bootstrap_mean(per_seed, samples, seed=zlib.crc32(key.encode()))
    return {"mean": round(mean, 2), "ci_low": round(low, 2), "ci_high": round(high, 2)}


# ------------------------------------------------------------------------------------------------ reading runs

def correctness(run_dir: Path, version: str, key: str = "test") -> dict[str, bool]:
    """question_id -> correct for one evaluation of `version` (`key`: test, dev or test_no_calculator)."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    path = recorded_path(run_dir, manifest, manifest["stages"][f"eval-{version}"]["outputs"][f"{key}_path"])
    return {r["question_id"]: bool(r["correct"]) for r in read_jsonl(path)}


def sampling_effect(run_dir: Path, iteration: int) -> dict[str, Any] | None:
    """f (before the DPO step) vs fd (after): per question pass@1 and pass@k over the first k samples of each,
    and the distinct correct rationales each yields (deduplicated as the run's pseudo-labels are). On dev when
    the run sampled it for this (`evaluation.dpo_effect_samples`, the paper's Fig. 6); otherwise on the
    iteration's own unlabeled questions, from the samples the loop draws anyway (in-sample for the DPO step).
    None when the iteration has no DPO step."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    stages, sampling = manifest["stages"], manifest["config"]["sampling"]
    on_dev = stages.get(f"it{iteration}-dpo-effect", {})
    if on_dev.get("status") == "done":
        paths = {model: on_dev["outputs"][f"{model}_path"] for model in ("sft", "dpo")}
    else:
        names = {"sft": f"it{iteration}-dpo-samples", "dpo": f"it{iteration}-sft-samples"}
        if any(stages.get(n, {}).get("status") != "done" for n in names.values()):
            return None
        paths = {model: stages[n]["outputs"]["path"] for model, n in names.items()}
    samples = {model: read_jsonl(recorded_path(run_dir, manifest, path)) for model, path in paths.items()}
    return {"on": "dev" if on_dev.get("status") == "done" else "in-sample",
            **effect_of_samples(samples, sampling["dedup"], sampling["dedup_threshold"])}


def effect_of_samples(samples: dict[str, list[dict[str, Any]]], dedup: str, threshold: float) -> dict[str, Any]:
    """Per model (sft, dpo) and question: pass@1 and pass@k over the first k samples (k: the fewest any model
    has), and the distinct correct rationales, deduplicated as pseudo-labels are. `samples`: model -> records
    with question_id, sample_index, correct and completion."""
    k = min(max(r["sample_index"] for r in records) + 1 for records in samples.values())
    effect: dict[str, Any] = {"k": k}
    for model, records in samples.items():
        by_question: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r["sample_index"] < k:
                by_question.setdefault(r["question_id"], []).append(r)
        correct = {q: sum(bool(r["correct"]) for r in rs) for q, rs in by_question.items()}
        labels = 0
        for rs in by_question.values():
            clusters = dedup_clusters([r["completion"] for r in rs if r["correct"]], method=dedup,
                                      threshold=threshold)
            labels += sum(1 for i, c in enumerate(clusters) if c == i)
        effect[model] = {"pass1": {q: pass_at_k(k, c, 1) for q, c in correct.items()},
                         "passk": {q: pass_at_k(k, c, k) for q, c in correct.items()}, "pseudo_labels": labels}
    return effect


def fig6_row(effects: list[dict[str, Any]], samples: int, key: str) -> dict[str, Any]:
    """One iteration of Fig. 6 over seeds (one `effect_of_samples` each): pass@1 and pass@k of the models
    before and after the DPO step with 95% intervals, their paired gain, and the mean distinct correct
    rationales each yields."""
    row: dict[str, Any] = {"k": effects[0]["k"], "questions": len(effects[0]["sft"]["pass1"])}
    for model in ("sft", "dpo"):
        row[model] = {"pseudo_labels": sum(e[model]["pseudo_labels"] for e in effects) / len(effects),
                      **{metric: interval([list(e[model][metric].values()) for e in effects], samples,
                                          f"{key}/{model}/{metric}") for metric in ("pass1", "passk")}}
    row["gain"] = {metric: interval([[e["dpo"][metric][q] - e["sft"][metric][q] for q in sorted(e["sft"][metric])]
                                     for e in effects], samples, f"{key}/gain/{metric}")
                   for metric in ("pass1", "passk")}
    return row


def run_gain(manifest: dict[str, Any], samples: int = 2000) -> dict[str, Any] | None:
    """One run's last SFT model vs its warm-up on the same test questions (None without both evaluations)."""
    stages = manifest["stages"]
    last = max((int(v[4:]) for v in manifest["versions"] if v.startswith("sft-") and v[4:].isdigit()), default=0)
    names = ("eval-sft-0", f"eval-sft-{last}")
    if last == 0 or any(stages.get(n, {}).get("status") != "done" or "test_path" not in stages[n].get("outputs", {})
                        for n in names):
        return None
    before, after = ({r["question_id"]: bool(r["correct"]) for r in read_jsonl(Path(stages[n]["outputs"]["test_path"]))}
                     for n in names)
    return {"version": f"sft-{last}", "questions": len(before),
            "before": interval([list(map(float, before.values()))], samples, "before"),
            "after": interval([list(map(float, after.values()))], samples, "after"),
            "gain": interval([paired_differences(after, before)], samples, "gain")}


def gain_lines(manifest: dict[str, Any]) -> list[str]:
    """The console's before/after table for a run with at least one iteration (empty otherwise)."""
    gain = run_gain(manifest)
    if gain is None:
        return []
    b, a, g = gain["before"], gain["after"], gain["gain"]
    verdict = "above 0" if g["ci_low"] > 0 else "below 0" if g["ci_high"] < 0 else "includes 0: not distinguishable"
    return [f"Test accuracy on {gain['questions']} questions (95% interval, bootstrap over questions):",
            f"  sft-0 (warm-up)   {_ci(b)}",
            f"  {gain['version']:<17} {_ci(a)}",
            f"  gain (paired)     {_signed(g)}   interval {verdict}"]


def _ci(r: dict[str, float]) -> str:
    return f"{r['mean']:5.1f}%  [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def _signed(r: dict[str, float]) -> str:
    return f"{r['mean']:+5.1f} pts [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


# ------------------------------------------------------------------------------------------------ the matrix

def aggregate(experiment: ExperimentConfig, cells: list[Cell]) -> dict[str, Any]:
    """The matrix's numbers from its finished cells (cluster/experiment.py): what `write_outputs` stores."""
    by_cell = {(c.method, c.seed): c.run_dir for c in cells}
    seeds, samples, T = experiment.seeds, experiment.bootstrap_samples, experiment.iterations
    sft = {s: correctness(by_cell[("sft", s)], "sft-0") for s in seeds}
    sft_nc = ({s: correctness(by_cell[("sft", s)], "sft-0", "test_no_calculator") for s in seeds}
              if experiment.calculator_ablation else {})

    def versions(method: str) -> list[int]:
        return list(range(T + 1)) if method == "sft" else [1] if method == "rft" else list(range(1, T + 1))

    def vectors(method: str, t: int, key: str = "test") -> dict[int, dict[str, bool]]:
        if method == "sft" or t == 0:
            return sft if key == "test" else sft_nc
        return {s: correctness(by_cell[(method, s)], f"sft-{t}", key) for s in seeds}

    results, paired, no_calculator = [], [], []
    for method in ["sft"] + experiment.methods_trained:
        for t in versions(method):
            current = vectors(method, t)
            model = "sft-0" if method == "sft" else f"{method}/{t}"  # the SFT line: one model, one interval
            results.append({"method": method, "iteration": t, **interval(
                [list(map(float, current[s].values())) for s in seeds], samples, model)})
            if experiment.calculator_ablation:
                no_calculator.append({"method": method, "iteration": t, **interval(
                    [list(map(float, vectors(method, t, "test_no_calculator")[s].values())) for s in seeds],
                    samples, f"{model}/no-calculator")})
            baselines = [] if method == "sft" else [b for b in ("sft", "st")
                                                    if b != method and (b == "sft" or b in experiment.methods)]
            for baseline in baselines:
                other = vectors(baseline, 0 if baseline == "sft" else min(t, T))
                paired.append({"method": method, "iteration": t, "baseline": baseline, **interval(
                    [paired_differences(current[s], other[s]) for s in seeds], samples,
                    f"{method}/{t}-{baseline}")})
    sampling_rows = []
    for t in range(1, T + 1) if "dpo-st" in experiment.methods else ():
        effects = [sampling_effect(by_cell[("dpo-st", s)], t) for s in seeds]
        if any(e is None for e in effects):
            continue
        sampling_rows.append({"iteration": t, "on": effects[0]["on"], **fig6_row(effects, samples, f"fig6/{t}")})
    return {"experiment": experiment.name, "seeds": list(seeds), "test_questions": len(sft[seeds[0]]),
            "dev_questions": experiment.dev_questions, "iterations": T, "bootstrap_samples": samples,
            "results": results, "paired": paired,
            "no_calculator": no_calculator, "dpo_step_sampling": sampling_rows, "wall_seconds": _wall_seconds(cells)}


def demo_summary(experiment: ExperimentConfig, cells: list[Cell]) -> dict[str, Any]:
    """The demo matrix (sft and one method, one iteration): mean sft-0 and sft-1 over seeds and the paired gain."""
    method = experiment.methods_trained[0]
    by_cell = {(c.method, c.seed): c for c in cells}
    seeds, samples = experiment.seeds, experiment.bootstrap_samples
    before = {s: correctness(by_cell[("sft", s)].run_dir, "sft-0") for s in seeds}
    after = {s: correctness(by_cell[(method, s)].run_dir, "sft-1") for s in seeds}
    b = interval([list(map(float, before[s].values())) for s in seeds], samples, "demo/sft-0")
    a = interval([list(map(float, after[s].values())) for s in seeds], samples, "demo/sft-1")
    g = interval([paired_differences(after[s], before[s]) for s in seeds], samples, "demo/gain")
    walls = [_wall_seconds([by_cell[("sft", s)], by_cell[(method, s)]]) for s in seeds]
    return {"seeds": list(seeds), "test_questions": len(before[seeds[0]]), "method": method,
            "sft0_mean": b["mean"], "sft1_mean": a["mean"], "gain_mean": g["mean"], "gain_ci_low": g["ci_low"],
            "gain_ci_high": g["ci_high"], "wall_seconds": round(sum(walls) / len(walls), 1)}


def run_wall_seconds(run_dir: Path) -> float:
    """A run's wall time while a coordinator ran it: from each (re)start of the coordinator to the last
    moment that start recorded (a stage starting or finishing, the run finishing), summed. A run stopped
    today and resumed tomorrow does not count the night, nor the part of a stage the stop cut short (the
    stage runs again and its record is replaced). 0 before the run starts."""
    m = json.loads((Path(run_dir) / "manifest.json").read_text())
    if "started" not in m:
        return 0.0
    starts = m.get("coordinator_starts") or [m["started"]]
    marks = [t for entry in m.get("stages", {}).values() for t in (entry.get("started"), entry.get("finished"))
             if t is not None] + ([m["finished"]] if "finished" in m else [])
    ends = starts[1:] + [float("inf")]
    return sum(max([t for t in marks if start <= t < end], default=start) - start
               for start, end in zip(starts, ends))


def _wall_seconds(cells: list[Cell]) -> float:
    """Total wall time of the cells' runs."""
    return round(sum(run_wall_seconds(c.run_dir) for c in cells), 1)


def write_outputs(experiment: ExperimentConfig, cells: list[Cell]) -> dict[str, Any]:
    """Merge this matrix's part into the results JSON (the demo matrix writes `demo`, the main one the rest),
    then render the Markdown report and figures from the whole file. Returns the file's content."""
    path = Path(experiment.results_json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if experiment.demo:
        doc["demo"] = demo_summary(experiment, cells)
    else:
        doc = {**aggregate(experiment, cells), **({"demo": doc["demo"]} if "demo" in doc else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    report = Path(experiment.report_md)
    report.parent.mkdir(parents=True, exist_ok=True)
    figures = _plot(doc, report) if "results" in doc else {}
    atomic_write_text(report, markdown(doc, {k: v.name for k, v in figures.items()}))
    return doc


# ------------------------------------------------------------------------------------------------ rendering

def _cell(r: dict[str, float] | None, signed: bool = False) -> str:
    if r is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(r['mean'])} [{fmt.format(r['ci_low'])}, {fmt.format(r['ci_high'])}]"


def matrix_table(rows: list[dict[str, Any]], iterations: int, signed: bool = False,
                 key: tuple[str, ...] = ("method",)) -> list[str]:
    """Markdown: one row per method (and baseline), one column per iteration."""
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), {})[r["iteration"]] = r
    header = [k for k in key] + [f"it {t}" for t in range(iterations + 1)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for group, by_t in groups.items():
        names = [METHOD_NAMES.get(str(g), str(g)) for g in group]
        lines.append("| " + " | ".join(names + [_cell(by_t.get(t), signed) for t in range(iterations + 1)]) + " |")
    return lines


def markdown(doc: dict[str, Any], figures: dict[str, str]) -> str:
    lines = ["# Experiments: SFT vs ST vs DPO-ST", "",
             "Generated by `dpost experiment` (cluster/aggregate.py) from the cells' per-question test results; "
             "numbers are test accuracy in % (greedy, strict `#### N`) as the mean over seeds, with a 95% "
             "interval from a bootstrap over seeds and questions. Paired differences compare two methods on the "
             "same seed's warm-up model and the same questions. Dev decides promotion; test is only reported.", ""]
    if "results" in doc:
        T = doc["iterations"]
        lines += [f"Experiment `{doc['experiment']}`: seeds {doc['seeds']}, {doc['test_questions']} test and "
                  f"{doc['dev_questions']} dev questions, {T} iteration(s), {doc['bootstrap_samples']} bootstrap "
                  f"replicates, {doc['wall_seconds'] / 60:.0f} min of runs.", "",
                  "## Test accuracy per iteration (iteration 0: the warm-up model; SFT stays there)", ""]
        lines += matrix_table(doc["results"], T)
        lines += ["", "## Paired difference to SFT and to ST (points)", ""]
        lines += matrix_table(doc["paired"], T, signed=True, key=("method", "baseline"))
        if doc.get("no_calculator"):
            lines += ["", "## Without the calculator (test accuracy, %)", ""]
            lines += matrix_table(doc["no_calculator"], T)
        for key, caption in (("fig5", "Fig. 5: accuracy per iteration"),
                             ("fig7", "Fig. 7: greedy accuracy with and without the calculator")):
            if key in figures:
                lines += ["", f"![{caption}]({figures[key]})"]
        lines += fig6_lines(doc.get("dpo_step_sampling") or [])
        if "fig6" in figures:
            lines += ["", f"![Fig. 6: the DPO step's effect on sampling]({figures['fig6']})"]
    if "demo" in doc:
        d = doc["demo"]
        lines += ["", "## The demo (one DPO-ST iteration)", "",
                  f"Seeds {d['seeds']}, {d['test_questions']} test questions, {d['wall_seconds'] / 60:.1f} min "
                  "per seed (warm-up cell + method cell).", "",
                  "| sft-0 | sft-1 | gain (paired) | 95% interval |", "|---|---|---|---|",
                  f"| {d['sft0_mean']:.1f} | {d['sft1_mean']:.1f} | {d['gain_mean']:+.1f} | "
                  f"[{d['gain_ci_low']:+.1f}, {d['gain_ci_high']:+.1f}] |"]
    return "\n".join(lines) + "\n"


def fig6_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The DPO step's effect on sampling (see the module docstring for how it differs from the paper's)."""
    if not rows:
        return ["", "The DPO step's effect on sampling (Fig. 6) needs dpo-st cells."]
    k, questions = rows[0]["k"], rows[0]["questions"]
    if rows[0].get("on") == "dev":
        title, where = "Fig. 6", (f"{k} samples (T=0.7) per question on {questions} dev questions, as the paper "
                                  "measures it")
    else:
        title, where = "Fig. 6, in-sample variant", (
            f"its first {k} samples (T=0.7) of the iteration's {questions} unlabeled questions, which the loop "
            "samples anyway. In-sample for the DPO step (its pairs came from these questions), not the paper's "
            "dev-set pass@10 (`evaluation.dpo_effect_samples` turns that on)")
    lines = ["", f"## The DPO step's effect on sampling ({title})", "",
             f"Per DPO-ST iteration: the SFT model before the DPO step and the DPO model after it, each scored on "
             f"{where}. pass@1 and pass@{k} in %, gain paired per question; pseudo-labels: distinct "
             "correct rationales (mean over seeds).", "",
             f"| iteration | model | pass@1 | pass@{k} | pseudo-labels |", "|---|---|---|---|---|"]
    for r in rows:
        for model in ("sft", "dpo"):
            m = r[model]
            lines.append(f"| {r['iteration']} | {model.upper()} | {_cell(m['pass1'])} | {_cell(m['passk'])} | "
                         f"{m['pseudo_labels']:.0f} |")
        lines.append(f"| {r['iteration']} | gain | {_cell(r['gain']['pass1'], True)} | "
                     f"{_cell(r['gain']['passk'], True)} | {r['dpo']['pseudo_labels'] - r['sft']['pseudo_labels']:+.0f} |")
    return lines


def _plot(doc: dict[str, Any], report: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    T = doc["iterations"]
    series = [("results", "", "o-"), ("no_calculator", " (no calculator)", "s--")]
    for key, wanted in (("fig5", series[:1]), ("fig7", series)):
        if key == "fig7" and not doc.get("no_calculator"):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for rows_key, suffix, style in wanted:
            for method in ("sft", "st", "dpo-st", "rft"):
                rows = sorted((r for r in doc[rows_key] if r["method"] == method), key=lambda r: r["iteration"])
                if method != "sft" and rows and rows[0]["iteration"] > 0:  # the methods start from the warm-up
                    rows = [r for r in doc[rows_key] if r["method"] == "sft" and r["iteration"] == 0] + rows
                if not rows or (method == "sft" and key == "fig7"):
                    continue
                xs = [r["iteration"] for r in rows]
                ys = [r["mean"] for r in rows]
                err = [[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]]
                ax.errorbar(xs, ys, yerr=err, fmt=style, color=METHOD_COLORS[method], capsize=3,
                            label=METHOD_NAMES[method] + suffix)
        ax.set(xlabel="iteration (0 = warm-up SFT)", ylabel="test accuracy (%)", xticks=list(range(T + 1)),
               title=f"{'Accuracy per iteration' if key == 'fig5' else 'With and without the calculator'} "
                     f"({len(doc['seeds'])} seeds, 95% CI)")
        ax.legend()
        fig.tight_layout()
        path = report.with_name(f"{report.stem}_{key}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures[key] = path
    rows = doc.get("dpo_step_sampling") or []
    if rows:
        figures["fig6"] = _plot_sampling(rows, report.with_name(f"{report.stem}_fig6.png"), plt)
    return figures


def _plot_sampling(rows: list[dict[str, Any]], path: Path, plt: Any) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    its = [r["iteration"] for r in rows]
    k = rows[0]["k"]
    width = 0.2
    for i, (model, metric) in enumerate([("sft", "pass1"), ("dpo", "pass1"), ("sft", "passk"), ("dpo", "passk")]):
        values = [r[model][metric] for r in rows]
        err = [[v["mean"] - v["ci_low"] for v in values], [v["ci_high"] - v["mean"] for v in values]]
        left.bar([t + (i - 1.5) * width for t in its], [v["mean"] for v in values], width, yerr=err, capsize=2,
                 label=f"{model.upper()} pass@{1 if metric == 'pass1' else k}")
    left.set(xlabel="iteration", ylabel="%", title="Before (SFT) and after (DPO) the DPO step", xticks=its)
    left.legend(fontsize=8)
    for i, model in enumerate(("sft", "dpo")):
        right.bar([t + (i - 0.5) * 0.35 for t in its], [r[model]["pseudo_labels"] for r in rows], 0.35,
                  label=model.upper())
    right.set(xlabel="iteration", ylabel="distinct correct rationales", title="Pseudo-labels each would yield",
              xticks=its)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
