"""The driver's console during a run: the coordinator's lines and one progress bar for the stage in flight.

A run's processes print a lot (Ray, Serve, DeepSpeed, TRL); none of it is meant for the person at the terminal.
`Console.to_log_file` sends this process's own stdout and stderr (file descriptors included, so C++ and
subprocess output too) to a log file in the run directory, and keeps the terminal for what `Console` writes.
The coordinator's and workers' output stays in Ray's per-process log files (`dpost run` links them into the
run directory). Bars are drawn only on a terminal; a log or a pipe gets the lines alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from tqdm import tqdm


class Console:
    def __init__(self, stream: IO[str] | None = None, bars: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.bars = self.stream.isatty() if bars is None else bars
        self.bar: tqdm | None = None
        self.source: str | None = None  # the Progress (coordinator life) the lines come from
        self.seen = 0  # lines of that Progress already handled

    def print(self, text: str = "") -> None:
        self.end_bar()
        print(text, file=self.stream, flush=True)

    def show(self, snapshot: dict[str, Any]) -> None:
        """Apply `Progress.snapshot(self.seen, self.source)`: print its new lines, then draw its bar."""
        self.source, self.seen = snapshot["id"], snapshot["next"]
        for line in _unfinished_starts_and_the_rest(snapshot["lines"]):
            self.print(line)
        if snapshot["bar"]:
            self._draw(snapshot["bar"])
        else:
            self.end_bar()

    def end_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: the line it drew is cleared, so it does not linger
            self.bar = None

    def _draw(self, state: dict[str, Any]) -> None:
        if not self.bars:
            return
        if self.bar is None or self.bar.desc != state["name"] or state["done"] < self.bar.n:
            self.end_bar()
            # `initial`: the rate (and so the ETA) counts only what happens while this bar watches
            self.bar = tqdm(total=state["total"], initial=state["done"], desc=state["name"], unit=state["unit"],
                            leave=False, file=self.stream, dynamic_ncols=True)
        self.bar.total = state["total"]
        if state["info"]:
            self.bar.set_postfix(state["info"], refresh=False)
        self.bar.update(state["done"] - self.bar.n)

    @classmethod
    @contextlib.contextmanager
    def to_log_file(cls, path: Path) -> Iterator["Console"]:
        """While inside: this process's stdout/stderr go to `path` (appended); the Console writes to the
        terminal they were before. Restored on the way out, so errors after it reach the terminal again."""
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        terminal = os.fdopen(os.dup(1), "w", buffering=1)
        old_streams = sys.stdout, sys.stderr
        with open(path, "a", buffering=1) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = log
            console = cls(terminal)
            try:
                yield console
            finally:
                console.end_bar()
                log.flush()
                sys.stdout, sys.stderr = old_streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                terminal.close()


def _unfinished_starts_and_the_rest(lines: list[dict[str, Any]]) -> list[str]:
    """The lines' texts, without a stage's start line when its finish line is in the same batch: a stage
    that ends within one poll needs only its finish line."""
    finished = {line["stage"] for line in lines if line["stage"] and not line["start"]}
    return [line["text"] for line in lines if not (line["start"] and line["stage"] in finished)]
