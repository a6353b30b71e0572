"""The run directory and its manifest (docs/architecture.md): every stage's output is a file, written atomically.

    runs/<name>/manifest.json          config, stages with status/outputs/timings, versions, promotions
    runs/<name>/data/<stage>.jsonl     samples, pairs, pseudo-labels
    runs/<name>/checkpoints/<version>/ HF folders
A stage marked done whose outputs exist is never recomputed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from trainers.core.files import atomic_write_text


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.checkpoints = self.root / "checkpoints"
        self.manifest_path = self.root / "manifest.json"
        self._lock = threading.Lock()
        for folder in (self.data, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = (json.loads(self.manifest_path.read_text())
                                         if self.manifest_path.exists() else
                                         {"stages": {}, "versions": {}, "promotions": [], "live": {}})

    def save(self) -> None:
        with self._lock:
            atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=1, default=str))

    def update(self, **values: Any) -> None:
        self.manifest.update(values)
        self.save()

    # ---- stages
    def is_done(self, stage: str) -> bool:
        entry = self.manifest["stages"].get(stage)
        if not entry or entry.get("status") != "done":
            return False
        return all(Path(p).exists() for p in _paths(entry.get("outputs", {})))

    def outputs(self, stage: str) -> dict[str, Any]:
        return self.manifest["stages"][stage]["outputs"]

    def start(self, stage: str) -> None:
        self.manifest["stages"][stage] = {"status": "running", "started": time.time()}
        self.save()

    def finish(self, stage: str, outputs: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        entry = self.manifest["stages"][stage]
        entry.update(status="done", finished=time.time(), outputs=outputs, metrics=metrics or {})
        entry["seconds"] = round(entry["finished"] - entry["started"], 2)
        self.save()

    def fail(self, stage: str, error: str) -> None:
        self.manifest["stages"].setdefault(stage, {}).update(status="failed", error=error)
        self.save()

    # ---- models
    def checkpoint(self, version: str) -> Path:
        return self.checkpoints / version

    def add_version(self, version: str, path: Path, metrics: dict[str, Any] | None = None) -> None:
        self.manifest["versions"][version] = {"path": str(path), **(metrics or {})}
        self.save()


def _paths(outputs: dict[str, Any]) -> list[str]:
    return [v for k, v in outputs.items() if isinstance(v, str) and (k.endswith("path") or k == "checkpoint")]
