"""`report.md` + `report.png` for a run: accuracy per iteration (the paper's Fig. 5), pseudo-labels and DPO
pairs per iteration (Fig. 6, right), promotions and stage timings. Everything is read from the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.rundir import RunDir, atomic_write_text
from services.run_view import iterations


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _count(x: int | None) -> str:
    return "-" if x is None else str(x)


ACCURACY_COLUMNS = ["iteration", "model", "dev", "test", "DPO pairs", "pseudo-labels",
                    "questions solved by K samples"]


def _accuracy_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[str(r["iteration"]), r["version"], _pct(r["dev"]), _pct(r["test"]), _count(r["pairs"]),
             _count(r["pseudo_labels"]), _pct(r["solve_rate"])] for r in rows]


def accuracy_table(manifest: dict[str, Any]) -> list[str]:
    """The report's accuracy table as aligned text lines (the console's last word on a run); the live
    solver's row is marked."""
    live = manifest["live"].get("solver")
    cells = [row + (["live"] if row[1] == live else [""]) for row in _accuracy_cells(iterations(manifest))]
    table = [ACCURACY_COLUMNS + [""]] + cells
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]


def write_report(run: RunDir) -> Path:
    m = run.manifest
    rows = iterations(m)
    lines = [f"# dpost run `{m.get('name', run.root.name)}`", "",
             f"mode `{m.get('config', {}).get('mode')}`, live solver model: `{m['live'].get('solver')}`", "",
             "## Accuracy per iteration (greedy, calculator on)", "",
             "| " + " | ".join(ACCURACY_COLUMNS) + " |", "|---" * len(ACCURACY_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _accuracy_cells(rows)]
    dpo = {k: v for k, v in m["versions"].items() if k.startswith("dpo-")}
    if dpo:
        lines += ["", "## DPO steps", "", "| model | steps | reward margin first -> last | reward accuracy |",
                  "|---|---|---|---|"]
        for k, v in sorted(dpo.items()):
            lines.append(f"| {k} | {v.get('global_step')} | {v.get('first_margin', 0):.3f} -> "
                         f"{v.get('final_margin', 0):.3f} | {v.get('final_reward_accuracy', 0):.2f} |")
    lines += ["", "## Promotions", "", "| model | dev | live before | live dev | promoted |", "|---|---|---|---|---|"]
    for p in m["promotions"]:
        lines.append(f"| {p['version']} | {_pct(p.get('dev_accuracy'))} | {p.get('live') or '-'} | "
                     f"{_pct(p.get('live_dev_accuracy'))} | {'yes' if p.get('promoted') else 'no'} |")
    lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---|"]
    total = 0.0
    for name, entry in m["stages"].items():
        if entry.get("status") == "done":
            total += entry.get("seconds", 0)
            lines.append(f"| {name} | {entry.get('seconds', 0):.1f} |")
    lines.append(f"| **total** | {total:.1f} |")
    lines += ["", "![accuracy per iteration](report.png)", ""]
    _plot(rows, run.root / "report.png")
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    its = [r["iteration"] for r in rows]
    for key, style in (("dev", "o-"), ("test", "s--")):
        ys = [100 * r[key] if r.get(key) is not None else float("nan") for r in rows]
        left.plot(its, ys, style, label=key)
    left.set(xlabel="iteration (0 = warm-up SFT)", ylabel="greedy accuracy (%)", title="Accuracy per iteration")
    left.set_xticks(its)
    left.legend()
    width = 0.38
    right.bar([i - width / 2 for i in its], [r.get("pairs") or 0 for r in rows], width, label="DPO pairs")
    right.bar([i + width / 2 for i in its], [r.get("pseudo_labels") or 0 for r in rows], width,
              label="pseudo-labels")
    right.set(xlabel="iteration", ylabel="count", title="Training data made per iteration")
    right.set_xticks(its)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

