"""Synthesis in the loop on a real local Ray cluster: `dpost synthesize` records the session's trained
synthesizer as is (`synthesis.train: false`), has it write problems on the rollout pool, filters them and labels
them, with U_t's unanswered rows, by the warm-up policy's vote; then the loop's iteration 1 resumes the same
run directory and trains on them, every record derived from a vote-labelled question carrying its provenance.
Bad input to `dpost synthesize` is one line, exit 2, before Ray starts."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.config import parse_config
from cluster.rundir import RunDir, read_jsonl
from tests.conftest import tiny_run_config
from trainers.core.answers import answers_match

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = FIXTURES / "synthesis_seeds.txt"
U_T, UNANSWERED, WRITTEN, K, THRESHOLD = 12, 6, 24, 4, 0.5


@pytest.fixture(scope="module")
def synthesis_config(ray_cluster, serve_port, tiny_warm_up, trained_synthesizer, tmp_path_factory
                     ) -> tuple[Path, dict, dict]:
    """The tiny run (its task as files, so that half of U_1 can come without answers) in mode st with
    synthesis on, cut to what proves the path: the session's trained synthesizer used as is (it writes the
    taught shape for some of the prompts), 24 written problems, k=4 votes, a 10-step sft-1.
    Returns (config file, raw config, the stripped answers)."""
    from trainers.data.synthetic import build_synthetic_task

    root = tmp_path_factory.mktemp("synthesis-loop")
    raw = tiny_run_config(root, "tiny-synthesis", serve_port, tiny_warm_up)
    task = build_synthetic_task(parse_config(raw).synthetic_config(), root / "task")  # the warm-up's own task
    rows = read_jsonl(task["unlabeled"])
    stripped = {row["id"]: row.pop("answer") for row in rows[:U_T:2]}  # every other row of U_1
    unlabeled = root / "task" / "unlabeled-partly-unanswered.jsonl"
    unlabeled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    raw.update(mode="st", data={"labeled": str(task["labeled"]), "unlabeled": str(unlabeled),
                                "dev": str(task["dev"]), "test": str(task["test"]),
                                "unlabeled_per_iteration": U_T, "dev_limit": 10})
    raw["sampling"]["sft_samples"] = 3
    raw["training"]["num_workers"] = 1
    raw["training"]["sft"]["max_steps"] = 10
    raw["evaluation"] = {"max_new_tokens": 64, "evaluate_test": False}
    raw["synthesis"] = {"enabled": True, "problems_per_iteration": WRITTEN,
                        "synthesizer_path": str(trained_synthesizer.checkpoint), "train": False,
                        "max_new_tokens": 160, "samples_per_question": K, "vote_threshold": THRESHOLD,
                        "seed_texts": [str(SEEDS)]}
    path = root / "synthesis.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw, stripped


@pytest.fixture(scope="module")
def synthesized_then_trained(synthesis_config) -> tuple[RunDir, list[str], dict]:
    """`dpost synthesize` (in this process, on the session cluster), then the loop on the same run directory."""
    import ray

    from cluster.job import start_coordinator

    path, raw, stripped = synthesis_config
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["synthesize", str(path), "--address", "auto"])
    lines = out.getvalue().splitlines()
    assert code == 0, lines
    config = parse_config(raw)
    coordinator = start_coordinator(config, detached=False)
    ray.get(coordinator.run.remote(), timeout=900)
    ray.kill(coordinator, no_restart=True)
    return RunDir(config.run_dir), lines, stripped


def test_synthesize_prints_one_line_per_stage_with_the_filter_counts_and_vote_stats(synthesized_then_trained,
                                                                                    trained_synthesizer):
    run, lines, _ = synthesized_then_trained
    assert [line.split(":")[0] for line in lines] == ["synthesizer", "it1-synthesized", "it1-votes"], lines
    written = run.outputs("it1-synthesized")
    assert written["summary"] in lines[1] and f"threshold {THRESHOLD}" in lines[2] and f"k={K}" in lines[2]
    counts = list(written["filters"].values())
    assert counts[0] == WRITTEN == len(read_jsonl(Path(written["written_path"])))
    assert all(a >= b for a, b in zip(counts, counts[1:])), written["summary"]
    assert written["kept"] == counts[-1] == len(read_jsonl(Path(written["path"]))) >= 1, written["summary"]
    synthesizer = run.outputs("synthesizer")
    assert synthesizer == {"checkpoint": str(trained_synthesizer.checkpoint), "reused": True}, synthesizer
    assert synthesizer["checkpoint"] in lines[0] and "as is" in lines[0], lines[0]
    assert run.manifest["versions"]["synthesizer"] == {"path": synthesizer["checkpoint"], "kind": "sft",
                                                       "reused": True}


def test_unanswered_and_synthesized_questions_are_labelled_by_vote_at_the_threshold(synthesized_then_trained):
    run, _, stripped = synthesized_then_trained
    votes = run.outputs("it1-votes")
    records = read_jsonl(Path(votes["votes_path"]))
    assert (votes["unanswered"], votes["synthesized"]) == (UNANSWERED, run.outputs("it1-synthesized")["kept"])
    assert [r["question_id"] for r in records if r["source"] == "unanswered"] == list(stripped)
    needed = math.ceil(THRESHOLD * K)
    for r in records:
        assert r["samples"] == K and r["vote_share"] == r["votes"] / K
        assert r["kept"] == (r["label"] is not None and r["votes"] >= needed), r  # never below the threshold
    questions = {q["id"]: q for q in read_jsonl(Path(votes["path"]))}
    labelled = [r for r in records if r["kept"]]
    assert votes["count"] == len(questions) == U_T - UNANSWERED + len(labelled)
    assert not set(stripped) - {r["question_id"] for r in labelled} & set(questions)  # unlabelled ones left out
    for r in labelled:
        row = questions[r["question_id"]]
        assert answers_match(float(row["answer"].removeprefix("#### ")), r["label"])
        assert row["provenance"]["vote_share"] == r["vote_share"] >= THRESHOLD
        assert row["provenance"]["labelled_by"] == "tiny-synthesis:sft-0"
    # the synthesizer's own answers grade the labels (a diagnostic); the stripped gold never reached the run
    assert all(r["correct"] is None for r in records if r["source"] == "unanswered")
    graded = [r for r in records if r["kept"] and r["source"] == "synthesized"]
    expected = sum(r["correct"] for r in graded) / len(graded) if graded else None
    assert votes["label_accuracy"] == expected
    assert sum(b["questions"] for b in votes["label_accuracy_by_vote_share"]) == votes["synthesized"]


def test_the_loop_trains_on_them_and_every_derived_record_carries_its_provenance(synthesized_then_trained):
    from cluster import stages

    run, _, _ = synthesized_then_trained
    manifest = run.manifest
    assert manifest["status"] == "done" and manifest["stages"]["sft-1"]["status"] == "done"
    synthesized = {k["id"]: k for k in read_jsonl(Path(run.outputs("it1-synthesized")["path"]))}
    origin = {q["id"]: q.get("provenance") for q in read_jsonl(Path(run.outputs("it1-votes")["path"]))}
    for question_id, provenance in origin.items():
        if question_id in synthesized:
            assert provenance["source"] == "synthesized"
            assert provenance["seed_id"] == synthesized[question_id]["seed_id"]
            assert provenance["synthesizer_version"] == "tiny-synthesis:synthesizer"
    samples = read_jsonl(Path(run.outputs("it1-sft-samples")["path"]))
    assert {s["question_id"] for s in samples} == set(origin)
    pseudo = read_jsonl(Path(run.outputs("it1-pseudo-labels")["path"]))
    train_rows = read_jsonl(Path(run.outputs("sft-1-data")["path"]))
    config = parse_config(manifest["config"])
    pairs = read_jsonl(Path(stages.preference_pairs(config, run, run.outputs("it1-sft-samples")["path"],
                                                    "check-pairs")["path"]))  # the DPO step's pairs stage
    for name, records in [("samples", samples), ("pseudo-labels", pseudo), ("pairs", pairs),
                          ("sft rows", [r for r in train_rows if r["source"] != "labeled"])]:
        assert all(r.get("provenance") == origin[r["question_id"]] for r in records), name
    from_synthesized = [r for r in pseudo if r["question_id"] in synthesized]
    assert from_synthesized, "no correct sample of a synthesized question reached S"
    assert sum("provenance" in r for r in train_rows) == sum("provenance" in r for r in pseudo) >= len(from_synthesized)
    assert any("provenance" in p for p in pairs), "no vote-labelled question gave a preference pair"


# ------------------------------------------------------------------------------------- bad input, no Ray

@pytest.fixture
def tiny_config(tmp_path) -> Path:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    raw["storage"] = {"root": str(tmp_path / "runs")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("dpost: error: ")
    return captured.err


@pytest.mark.parametrize("extra, message", [
    (["--seed-text", str(FIXTURES / "synthesis_blank.txt")], "synthesis_blank.txt: file is empty"),
    (["--seed-text", str(FIXTURES / "synthesis_latin1.txt")], "synthesis_latin1.txt: not UTF-8 text"),
    (["--seed-text", str(FIXTURES / "no-such-seeds.txt")], "no-such-seeds.txt: file not found"),
    (["--vote-threshold", "0"], "synthesis.vote_threshold: Input should be greater than 0"),
    (["--vote-threshold", "1.5"], "synthesis.vote_threshold: Input should be less than or equal to 1"),
    (["--problems", "0"], "synthesis.problems_per_iteration"),
])
def test_synthesize_refuses_bad_input_in_one_line_with_exit_code_2(capsys, tiny_config, extra, message):
    assert message in _one_line_error(capsys, ["synthesize", str(tiny_config), *extra])
    assert not (tiny_config.parent / "runs").exists()  # refused before any stage ran


def test_synthesize_refuses_labeled_data_without_rationales_and_a_bad_config(capsys, tiny_config, tmp_path):
    rows = tmp_path / "answers-only.jsonl"
    rows.write_text(json.dumps({"question": "Ann has 3 apples. How many?", "answer": "#### 3"}) + "\n")
    raw = yaml.safe_load(tiny_config.read_text())
    raw["data"] = {"labeled": str(rows), "unlabeled": str(rows), "dev": str(rows), "test": str(rows)}
    files = tmp_path / "files.yaml"
    files.write_text(yaml.safe_dump(raw))
    assert "no problem has a rationale" in _one_line_error(capsys, ["synthesize", str(files)])
    raw["synthesis"] = {"vote_treshold": 0.5}
    files.write_text(yaml.safe_dump(raw))
    assert "did you mean 'vote_threshold'" in _one_line_error(capsys, ["synthesize", str(files)])
    assert "config file not found" in _one_line_error(capsys, ["synthesize", str(tmp_path / "none.yaml")])
