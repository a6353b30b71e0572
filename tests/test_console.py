"""The run's console (cluster/progress.py, cluster/console.py): stage lines without repeats, one bar that ends
with its stage, and everything else the driver prints kept out of the terminal, in the run's log."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from cluster.console import Console
from cluster.progress import Progress, key_numbers
from cluster.report import accuracy_table


def _poll(progress: Progress, console: Console) -> None:
    console.show(progress.snapshot(console.seen, console.source))


def test_a_stage_finished_between_two_polls_shows_only_its_finish_line():
    progress, out = Progress(), io.StringIO()
    console = Console(out, bars=False)
    progress.started("data")
    progress.finished("data", 0.1, {"path": "/x", "labeled_count": 300})
    progress.started("sft-0")
    _poll(progress, console)
    progress.finished("sft-0", 61.0, {"global_step": 400, "final_loss": 0.91234})
    _poll(progress, console)
    _poll(progress, console)  # nothing new: nothing printed again
    assert out.getvalue().splitlines() == [
        "[data] done in 0.1s: labeled_count=300",
        "[sft-0] started",
        "[sft-0] done in 61.0s: global_step=400 final_loss=0.9123",
    ]


def test_a_line_ends_the_bar_and_a_late_worker_report_does_not_bring_it_back():
    progress = Progress()
    progress.started("sft-0")
    progress.update_from_worker("sft-0", 10, 400, {"loss": 2.5})
    assert progress.snapshot(0, None)["bar"] == {"name": "sft-0", "done": 10, "total": 400, "unit": "step",
                                                 "info": {"loss": 2.5}}
    progress.finished("sft-0", 60.0, {})
    progress.started("eval-sft-0")
    progress.update_from_worker("sft-0", 400, 400, {"loss": 0.9})  # sent before the end, arrives after
    assert progress.snapshot(0, None)["bar"] is None


def test_a_restarted_coordinators_lines_are_read_from_its_first():
    out = io.StringIO()
    console = Console(out, bars=False)
    first = Progress()
    first.log("one")
    first.log("two")
    _poll(first, console)
    restarted = Progress()
    restarted.finished("data", None, {"labeled_count": 300})
    _poll(restarted, console)
    assert out.getvalue().splitlines() == ["one", "two", "[data] done earlier, kept"]


def test_the_bar_closes_when_its_stage_ends(tmp_path):
    out = io.StringIO()
    console = Console(out, bars=True)
    progress = Progress()
    progress.started("it1-dpo-samples")
    progress.update("it1-dpo-samples", 40, 200)
    _poll(progress, console)
    assert console.bar is not None and console.bar.n == 40
    progress.finished("it1-dpo-samples", 9.0, {"samples": 200})
    _poll(progress, console)
    assert console.bar is None
    assert out.getvalue().rstrip().endswith("[it1-dpo-samples] done in 9.0s: samples=200")


def test_key_numbers_leave_out_paths_and_show_accuracies_in_percent():
    assert key_numbers({"path": "/a", "dev_accuracy": 0.125, "samples": 200, "seconds": 3.2, "promoted": True,
                        "decision": "{}"}) == "dev_accuracy=12.5% samples=200 promoted=yes"


def test_accuracy_table_aligns_columns_and_marks_the_live_model():
    manifest = {"live": {"solver": "sft-1"}, "stages": {},
                "versions": {"sft-0": {"dev_accuracy": 0.125, "test_accuracy": 0.1},
                             "sft-1": {"dev_accuracy": 0.2, "test_accuracy": 0.175}}}
    header, first, second = accuracy_table(manifest)
    assert header.split()[:4] == ["iteration", "model", "dev", "test"]
    assert first.split()[:4] == ["0", "sft-0", "12.5%", "10.0%"] and not first.endswith("live")
    assert second.split()[:4] == ["1", "sft-1", "20.0%", "17.5%"] and second.endswith("live")
    assert header.index("dev") == first.index("12.5%") == second.index("20.0%")


def test_to_log_file_keeps_the_terminal_for_the_console_and_restores_it(tmp_path):
    """In a child process, so its real file descriptors 1 and 2 are redirected, as `dpost run` does."""
    log = tmp_path / "logs" / "driver.log"
    script = textwrap.dedent(f"""
        import os, sys, warnings
        from pathlib import Path
        from cluster.console import Console
        with Console.to_log_file(Path({str(log)!r})) as console:
            print("a library's print")
            os.write(2, b"C-level stderr\\n")
            warnings.warn("a library's warning")
            console.print("[data] done in 0.1s")
        print("after: the terminal again")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[data] done in 0.1s", "after: the terminal again"]
    assert result.stderr == ""
    logged = log.read_text()
    assert "a library's print" in logged and "C-level stderr" in logged and "a library's warning" in logged
    assert "[data] done" not in logged
