"""The run directory and its manifest (docs/architecture.md): every stage's output is a file, written atomically.

    runs/<name>/manifest.json          config, stages with status/outputs/timings, versions, promotions
    runs/<name>/data/<stage>.jsonl     samples, pairs, pseudo-labels
    runs/<name>/checkpoints/<version>/ HF folders
A stage marked done whose outputs exist is never recomputed.

The manifest has one writer: the process that holds the run's `RunDir`, which is the run's coordinator actor
while one exists. Anything else that changes run state (`dpost rollback`) asks that coordinator to do it
(`Coordinator.rollback`); only when no coordinator is running, so nothing else holds the manifest, does
the CLI open the `RunDir` and write it itself. Inside the writer, the coordinator's threads (the run, a
rollback, `status` polls) share one `RunDir`: every change is one method below that updates the manifest
and saves it under one lock, and readers get deep copies taken under that lock, never the live dict.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from trainers.core.files import atomic_write_text


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def recorded_path(run_dir: Path, manifest: dict[str, Any], path: str) -> Path:
    """A file path the run's manifest recorded, read from where the run folder is now: a path under the folder
    the run was recorded in (`storage.root`/name) is re-rooted at `run_dir` when the folder has moved since."""
    root = ((manifest.get("config") or {}).get("storage") or {}).get("root")
    recorded, here = Path(path), Path(run_dir).resolve()
    if not root or not manifest.get("name"):
        return recorded
    then = Path(root, manifest["name"]).resolve()
    if then == here or not recorded.is_relative_to(then):
        return recorded
    return here / recorded.relative_to(then)


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.checkpoints = self.root / "checkpoints"
        self.manifest_path = self.root / "manifest.json"
        self._lock = threading.RLock()
        # decisions about the live model (the promotion gate, a rollback) read it, swap the pool, then record
        # it; this keeps one from deciding on a live model the other is replacing (held across the swap,
        # unlike `_lock`, so status reads never wait for a swap)
        self._live_lock = threading.RLock()
        for folder in (self.data, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        self._manifest: dict[str, Any] = (json.loads(self.manifest_path.read_text())
                                          if self.manifest_path.exists() else
                                          {"stages": {}, "versions": {}, "promotions": [], "live": {}})

    # ---- reading: copies, so a reader never sees (or iterates) a dict another thread is changing
    @property
    def manifest(self) -> dict[str, Any]:
        """A deep copy of the manifest; change the run through the methods below."""
        with self._lock:
            return copy.deepcopy(self._manifest)

    @property
    def name(self) -> str:
        with self._lock:
            return self._manifest.get("name") or self.root.name

    def versions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._manifest["versions"])

    def live(self) -> str | None:
        """The version the live solver serves (the last promotion or rollback)."""
        with self._lock:
            return self._manifest["live"].get("solver")

    # ---- writing: each method changes the manifest and saves it before any other thread can change it
    def _save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self._manifest, indent=1, default=str))

    def update(self, **values: Any) -> None:
        with self._lock:
            self._manifest.update(copy.deepcopy(values))
            self._save()

    # ---- stages
    def is_done(self, stage: str) -> bool:
        with self._lock:
            entry = self._manifest["stages"].get(stage)
            if not entry or entry.get("status") != "done":
                return False
            paths = _paths(entry.get("outputs", {}))
        return all(Path(p).exists() for p in paths)

    def outputs(self, stage: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._manifest["stages"][stage]["outputs"])

    def start(self, stage: str) -> None:
        with self._lock:
            self._manifest["stages"][stage] = {"status": "running", "started": time.time()}
            self._save()

    def finish(self, stage: str, outputs: dict[str, Any]) -> None:
        with self._lock:
            entry = self._manifest["stages"][stage]
            entry.update(status="done", finished=time.time(), outputs=copy.deepcopy(outputs))
            entry["seconds"] = round(entry["finished"] - entry["started"], 2)
            self._save()

    def fail(self, stage: str, error: str) -> None:
        with self._lock:
            self._manifest["stages"].setdefault(stage, {}).update(status="failed", error=error)
            self._save()

    # ---- models
    def checkpoint(self, version: str) -> Path:
        return self.checkpoints / version

    def add_version(self, version: str, path: Path, metrics: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._manifest["versions"][version] = {"path": str(path), **copy.deepcopy(metrics or {})}
            self._save()

    def record_scores(self, version: str, checkpoint: str, scores: dict[str, float]) -> None:
        """Add evaluation scores to a version (recording the version if training did not)."""
        with self._lock:
            self._manifest["versions"].setdefault(version, {"path": str(checkpoint)}).update(scores)
            self._save()

    @contextmanager
    def live_change(self) -> Iterator[None]:
        """Hold while deciding on, swapping and recording the live model (see `_live_lock`)."""
        with self._live_lock:
            yield

    def record_promotion(self, decision: dict[str, Any], live: str | None = None) -> None:
        """Append a promotion (or rollback) decision; `live` is the version the solver now serves, if it
        changed."""
        with self._lock:
            if live is not None:
                self._manifest["live"]["solver"] = live
            self._manifest["promotions"].append(copy.deepcopy(decision))
            self._save()


def _paths(outputs: dict[str, Any]) -> list[str]:
    return [v for k, v in outputs.items() if isinstance(v, str) and (k.endswith("path") or k == "checkpoint")]
