"""What a run shows on the driver's console, kept by the coordinator and read by the driver (cluster/console.py).

Two things: console lines (a stage started, a stage finished with its key numbers, a note), and the bar of the
stage in flight (rows sampled or evaluated, or training steps). A bar lives inside one stage, so every new
line ends it. The driver polls `snapshot` about once a second; everything else a process prints stays
in that process's log file.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import ray


class Progress:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex  # a restarted coordinator has a new one: the driver rereads from line 0
        self.lines: list[dict[str, Any]] = []
        self.bar: dict[str, Any] | None = None
        self.running: str | None = None  # the stage in flight
        self._lock = threading.Lock()

    def started(self, stage: str) -> None:
        self._line(f"[{stage}] started", stage=stage, start=True)
        self.running = stage

    def finished(self, stage: str, seconds: float | None, outputs: dict[str, Any]) -> None:
        """`seconds` None: done in an earlier coordinator's life, kept."""
        when = "done earlier, kept" if seconds is None else f"done in {seconds:.1f}s"
        numbers = key_numbers(outputs)
        self._line(f"[{stage}] {when}" + (f": {numbers}" if numbers and seconds is not None else ""), stage=stage)
        self.running = None

    def log(self, text: str) -> None:
        self._line(text)

    def update(self, name: str, done: int, total: int, unit: str = "row", **info: Any) -> None:
        """The bar of the running stage: `done` of `total` `unit`s; `info` (e.g. the loss) shown beside it."""
        with self._lock:
            self.bar = {"name": name, "done": done, "total": total, "unit": unit, "info": info}

    def update_from_worker(self, stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        """A training step count sent by a Ray Train worker (`for_workers`). It arrives without ordering
        against this process's own lines, so one for a stage that already finished is dropped."""
        if stage == self.running:
            self.update(stage, done, total, unit="step", **info)

    def for_workers(self, stage: str) -> "WorkerProgress":
        """A picklable step reporter for the running stage's Ray Train workers (this runs inside the
        coordinator actor, which forwards the reports to `update_from_worker`)."""
        return WorkerProgress(ray.get_runtime_context().current_actor, stage)

    def snapshot(self, since: int, seen_id: str | None) -> dict[str, Any]:
        """The lines from `since` on, if the reader's `since` counts this Progress's lines (`seen_id`); all of
        them if it counted another's (the coordinator restarted and logs its stages again)."""
        start = since if seen_id == self.id else 0
        with self._lock:
            return {"id": self.id, "lines": self.lines[start:], "next": len(self.lines),
                    "bar": dict(self.bar) if self.bar else None}

    def _line(self, text: str, stage: str | None = None, start: bool = False) -> None:
        with self._lock:
            self.lines.append({"text": text, "stage": stage, "start": start})
            self.bar = None


@dataclass(frozen=True)
class WorkerProgress:
    """Called in a Ray Train worker as `progress(step, total, loss=...)`; reports without waiting."""

    coordinator: Any  # the coordinator's actor handle
    stage: str

    def __call__(self, done: int, total: int, **info: Any) -> None:
        self.coordinator.report_training.remote(self.stage, done, total, info)


def key_numbers(outputs: dict[str, Any]) -> str:
    """A stage's numeric outputs as `key=value` (accuracies in %); paths, ids and texts are left out."""
    parts = []
    for key, value in outputs.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'yes' if value else 'no'}")
        elif isinstance(value, (int, float)) and key != "seconds":  # the line already says how long
            if key.endswith("accuracy"):
                parts.append(f"{key}={100 * value:.1f}%")
            elif isinstance(value, float):
                parts.append(f"{key}={value:.4g}")
            else:
                parts.append(f"{key}={value}")
    return " ".join(parts)
