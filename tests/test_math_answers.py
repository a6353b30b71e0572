"""MATH-style answers: `\\boxed{}` extraction, math-verify equivalence (here, from a Serve replica and from a Ray
Train worker, where math-verify's signal timeouts cannot run) and the MATH jsonl loader."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest

from trainers.core.answers import answer_checker, extract_boxed
from trainers.core.errors import ConfigError, DataError
from trainers.data.problems import load_problems

FIXTURES = Path(__file__).parent / "fixtures"
BOXED = answer_checker("boxed")

# (pred, gold, math-verify's verdict); verify(gold, pred) is the library's own definition.
EQUIVALENCES = [
    (r"\frac{1}{2}", "0.5", True), ("0.5", r"\frac{1}{2}", True), ("1/2", r"\frac{1}{2}", True),
    ("1/2", "0.5", True), (r"\dfrac12", "1/2", True),
    # math-verify reads `x=3` as the assignment x := 3 and compares its right side: the same answer as 3
    ("3", "x=3", True), ("x=3", "3", True),
    (r"\frac{\pi}{2}", r"\dfrac{\pi}{2}", True), ("(2,1)", "(2, 1)", True),
    ("2", "3", False), (r"\frac{1}{3}", "0.5", False), ("(1,2)", "(2,1)", False),
]


def _verdicts() -> list[bool]:
    return BOXED.equivalent_many([(pred, gold) for pred, gold, _ in EQUIVALENCES])


@pytest.mark.parametrize(("pred", "gold", "same"), EQUIVALENCES)
def test_math_verify_decides_boxed_equivalence(pred: str, gold: str, same: bool) -> None:
    assert BOXED.equivalent(pred, gold) is same


def test_boxed_equivalence_off_the_main_thread_runs_in_a_process_and_agrees() -> None:
    got: list[list[bool]] = []
    thread = threading.Thread(target=lambda: got.append(_verdicts()))
    thread.start()
    thread.join(timeout=120)
    assert got == [[same for _, _, same in EQUIVALENCES]]


@pytest.mark.parametrize(("text", "boxed"), [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{x^{2}+\{1\}}", r"x^{2}+\{1\}"),  # nested and escaped braces
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"first \boxed{1}, finally \boxed{ {2}^{3} }", "{2}^{3}"),  # the last one, stripped
    (r"\fbox{7}", "7"),
    (r"\boxed{5} then \boxed{6", "5"),  # an unclosed one is no answer
    ("The answer is 5.", None), (r"\boxed{}", None), (r"\boxed{  }", None), ("", None),
])
def test_extract_boxed_reads_the_last_complete_box(text: str, boxed: str | None) -> None:
    assert extract_boxed(text) == boxed


def test_boxed_checker_labels_strict_and_flexible_answers() -> None:
    assert BOXED.label(r"Half of it: $\boxed{\frac{2}{4}}$", "0.5").correct
    no_box = BOXED.label("so the answer is 0.5", r"\frac{1}{2}")
    assert no_box.strict_answer is None and not no_box.correct
    assert no_box.answer == "0.5" and no_box.correct_flexible
    assert BOXED.extract("no answer here") is None
    assert not BOXED.equivalent(None, "1") and not BOXED.equivalent("1", None)


def test_gsm8k_checker_is_the_module_functions() -> None:
    gsm8k = answer_checker()
    assert gsm8k.gold("a <<2*3=6>>6\n#### 6") == 6.0
    label = gsm8k.label("2*3 = 6\n#### 6.00001\n", 6.0)
    assert label.correct and label.strict_answer == pytest.approx(6.00001)
    assert gsm8k.equivalent_many([(6.0, 6.0), (None, 6.0), (5.0, 6.0)]) == [True, False, False]
    with pytest.raises(ConfigError, match="unknown answer format 'latex'"):
        answer_checker("latex")


def test_math_loader_reads_boxed_gold_answers_and_turns_the_calculator_off() -> None:
    problems = load_problems(FIXTURES / "math_small.jsonl")
    assert problems.answer_format == "boxed" and problems.calculator is False
    assert [p.answer for p in problems] == [r"\frac{1}{2}", "x = 3", "4", "(2, 1)", r"90^\circ"]
    assert problems[2].answer == "4"  # an explicit `answer` wins over the solution's box
    assert problems[3].id == "pair-1" and problems[0].level == "Level 1" and problems[0].subject == "Prealgebra"
    assert load_problems(FIXTURES / "math_small.jsonl", fmt="math").problems == problems.problems
    gsm8k = load_problems(FIXTURES / "gsm8k.jsonl")
    assert gsm8k.answer_format == "gsm8k" and gsm8k.calculator is True


def test_math_data_without_boxed_answers_is_one_line_data_error() -> None:
    with pytest.raises(DataError) as info:
        load_problems(FIXTURES / "math_no_boxed.jsonl")
    message = str(info.value)
    assert "\n" not in message and "math_no_boxed.jsonl" in message and r"no \boxed{} answer" in message


def test_math_item_with_a_bad_answer_field_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "solution": "\\\\boxed{1}"}\n{"problem": "q", "solution": "s", "answer": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: 'answer' must be a non-empty string"):
        load_problems(path)


# ---------------------------------------------------------------------------------------------- on Ray


@pytest.mark.ray
def test_math_verify_equivalence_inside_a_serve_replica(serve_port) -> None:
    from ray import serve

    @serve.deployment(name="math-verify-check", num_replicas=1, ray_actor_options={"num_cpus": 0})
    class Checker:
        def __call__(self) -> list[bool]:  # a sync method: Serve runs it off the replica's main thread
            return _verdicts()

    handle = serve.run(Checker.bind(), name="math-verify-check", route_prefix=None)
    try:
        assert handle.remote().result(timeout_s=180) == [same for _, _, same in EQUIVALENCES]
    finally:
        serve.delete("math-verify-check")


@pytest.mark.ray
def test_math_verify_equivalence_inside_a_ray_train_worker(ray_cluster, tmp_path: Path) -> None:
    import ray.train

    from trainers.training.orphaned_groups import Trainer

    def loop(_: dict) -> None:
        # Ray Train keeps only metrics that come with a checkpoint: the verdicts travel in one
        out = Path(tempfile.mkdtemp())
        (out / "verdicts.json").write_text(json.dumps(
            {"verdicts": _verdicts(), "main_thread": threading.current_thread() is threading.main_thread()}))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(str(out)))

    result = Trainer(loop, train_loop_config={},
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(name="math-verify-check", storage_path=str(tmp_path))).fit()
    with result.checkpoint.as_directory() as folder:
        found = json.loads(Path(folder, "verdicts.json").read_text())
    assert found["verdicts"] == [same for _, _, same in EQUIVALENCES]
    print(f"Ray Train loop on the main thread: {found['main_thread']}")
