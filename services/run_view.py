"""What the web page's run view shows, read from a run directory's `manifest.json` (docs/architecture.md):
accuracy per iteration, training data made per iteration, the stage timeline and the live model's history.

Read-only, and from the file alone: services never import cluster, and the manifest is written atomically by
the run's coordinator, so a read sees a whole manifest even while the run goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class IterationRow(BaseModel):
    iteration: int = Field(description="t; 0 is the warm-up SFT model")
    version: str = Field(description="the SFT model `sft-t`")
    dev: float | None = Field(description="greedy dev accuracy (a fraction), None until evaluated")
    test: float | None = Field(description="greedy test accuracy (a fraction), None until evaluated")
    pairs: int | None = Field(description="DPO preference pairs iteration t made")
    pseudo_labels: int | None = Field(description="pseudo-labels iteration t kept after dedup")
    solve_rate: float | None = Field(description="share of iteration t's questions some sample solved")


class StageRow(BaseModel):
    name: str
    status: str | None = Field(description="running, done or failed")
    seconds: float | None = Field(description="time taken; for the running stage, time so far")
    started: float | None = Field(description="Unix time")
    error: str | None = None


class Serving(BaseModel):
    model_version: str | None = Field(description="what the solver serves now")
    history: list[str] = Field(description="every version published to the solver, oldest first")


class RunView(BaseModel):
    """`GET /v1/run`: the run the solver was started for."""
    name: str
    run_dir: str
    mode: str | None
    status: str | None = Field(description="running, done or failed")
    started: float | None
    finished: float | None
    now: float = Field(description="the server's clock, for the running stage's seconds")
    live: str | None = Field(description="the run's live version (its last promotion or rollback)")
    iterations: list[IterationRow]
    stages: list[StageRow] = Field(description="in the order they started")
    promotions: list[dict[str, Any]] = Field(description="the promotion gate's decisions and rollbacks")
    serving: Serving


def read_run(root: Path) -> dict[str, Any]:
    """The run view's JSON for the run directory `root`; raises FileNotFoundError when it has no manifest."""
    manifest = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
    now = time.time()
    return {"name": manifest.get("name") or Path(root).name, "run_dir": str(root),
            "mode": manifest.get("config", {}).get("mode"), "status": manifest.get("status"),
            "started": manifest.get("started"), "finished": manifest.get("finished"), "now": now,
            "live": manifest.get("live", {}).get("solver"), "iterations": iterations(manifest),
            "stages": stage_timeline(manifest, now), "promotions": manifest.get("promotions", [])}


def iterations(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per SFT model `sft-t` (t = 0 is the warm-up): its dev/test accuracy and the data iteration t
    made (DPO pairs, pseudo-labels, questions solved by the sampled rationales); None where not made yet."""
    stages, versions = manifest.get("stages", {}), manifest.get("versions", {})

    def output(stage: str, field: str) -> Any:
        entry = stages.get(stage, {})
        return entry.get("outputs", {}).get(field) if entry.get("status") == "done" else None

    rows = []
    t = 0
    while f"sft-{t}" in versions:
        version = versions[f"sft-{t}"]
        labels = output(f"it{t}-pseudo-labels", "pseudo_labels")
        if t == 1 and labels is None:
            labels = output("rft-pseudo-labels", "pseudo_labels")  # RFT's one round
        solved, asked = output(f"it{t}-sft-samples", "questions_solved"), output(f"it{t}-sft-samples", "questions")
        rows.append({"iteration": t, "version": f"sft-{t}", "dev": version.get("dev_accuracy"),
                     "test": version.get("test_accuracy"), "pairs": output(f"it{t}-pairs", "pairs"),
                     "pseudo_labels": labels if t > 0 else None,
                     "solve_rate": solved / asked if solved is not None and asked else None})
        t += 1
    return rows


def stage_timeline(manifest: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Every stage in the order it started: status, seconds taken (so far, for the running one), error."""
    timeline = []
    for name, entry in manifest.get("stages", {}).items():
        status = entry.get("status")
        seconds = entry.get("seconds")
        if status == "running" and entry.get("started"):
            seconds = round(now - entry["started"], 1)
        timeline.append({"name": name, "status": status, "seconds": seconds, "started": entry.get("started"),
                         "error": entry.get("error")})
    return timeline
