"""The safe calculator: GSM8K arithmetic in, hostile input refused fast and without running code."""

from __future__ import annotations

import ast
import builtins
import contextlib
import re
import statistics
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trainers.core import calculator
from trainers.core.calculator import (
    MAX_EXPR_LEN,
    CalculatorError,
    annotations,
    calculate,
    compute,
    format_result,
    pending_expression,
)
from trainers.core.errors import CalculatorError as ErrorsCalculatorError

HOSTILE = [
    "__import__('os')",
    "__import__('os').system('touch pwned')",
    "open('pwned', 'w')",
    "_dpost_sentinel()",
    "(lambda: _dpost_sentinel())()",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "9**9**9",
    "9**999999",
    "2**2**2**2**2",
    "1e308*1e308",
    "10**15*10",
    "999999999999999*999999999999999",
    "x" * 10_000,
    "1+" * 5_000 + "1",
    "(" * 5_000 + "1" + ")" * 5_000,
    "-" * 199 + "1",
    "1" + "+1" * 99,
    "٣+٣",
    "١٢*2",
    "𝟗*2",
    "²",
    "1\x00+2",
    "True+1",
    "1j*1j",
    "0x10",
    "1_000",
    "'a'*10",
    "b'1'",
    "[1]*10",
    "{1: 2}",
    "1 if 1 else 2",
    "1 < 2",
    "f'{1}'",
    "(-8)**0.5",
    "0**-1",
    "1/0",
    "1//0",
    "1%0",
    "",
    "   ",
    "=",
]


def test_calculator_error_is_the_shared_one() -> None:
    assert CalculatorError is ErrorsCalculatorError


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("48/2", "24"),
        ("48+24", "72"),
        ("12/60", "0.2"),
        ("0.2*50", "10"),
        ("100-50-30-15", "5"),
        ("2*20*.01", "0.4"),
        ("12.50+12.50+5.00", "30"),
        ("120*(1-20*.01)", "96"),
        ("560//10", "56"),
        ("-14+-8+1", "-21"),
        ("-18/-2", "9"),
        ("7/3", "2.3333"),
        ("2**10", "1024"),
        ("2**-2", "0.25"),
        ("2**0.5", "1.4142"),
        ("17%5", "2"),
        ("0.1+0.2", "0.3"),
        (" 3 * 4 ", "12"),
        ("10**15", "1000000000000000"),
        ("-0", "0"),
    ],
)
def test_calculator_reproduces_gsm8k_arithmetic(expr: str, expected: str) -> None:
    assert calculate(expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [("1,000*2", "2000"), ("1,234,567+1", "1234568"), ("$5*3", "15"), ("($1,200-$200)/2", "500")],
)
def test_calculator_accepts_dollars_and_thousands_separators(expr: str, expected: str) -> None:
    assert calculate(expr) == expected


@pytest.mark.parametrize("expr", ["1,0000+1", "1.5,000", "5$5", "(1,2)", "1,2"])
def test_calculator_refuses_commas_that_are_not_thousands_separators(expr: str) -> None:
    with pytest.raises(CalculatorError):
        compute(expr)


@pytest.mark.parametrize("expr", ["20*50%", "50%", "3 x 4", "3×4", "2^3", "1e5", "5 apples"])
def test_calculator_refuses_notation_gsm8k_annotations_never_use(expr: str) -> None:
    with pytest.raises(CalculatorError):
        compute(expr)


@pytest.mark.parametrize("expr", ["٣", "٣+1", "१२*2", "𝟗", "²", "1−2", "１+1"])
def test_calculator_refuses_non_ascii_digits(expr: str) -> None:
    assert int("٣") == 3  # why this matters: Python itself would happily read them
    with pytest.raises(CalculatorError):
        compute(expr)


@pytest.mark.parametrize("expr", ["1/0", "4//0", "5%0", "5.5%0", "0**-1", "1/(2-2)"])
def test_calculator_reports_division_by_zero(expr: str) -> None:
    with pytest.raises(CalculatorError, match="division by zero"):
        compute(expr)


@pytest.mark.parametrize(
    "expr",
    ["9**9**9", "2**101", "1**101", "10**15+1", "-10**15-1", "999999999999999*10", "0.001**-100",
     "1000000000000001", "(-8)**0.5", "2**50/1"],
)
def test_calculator_keeps_every_value_in_bounds(expr: str) -> None:
    with pytest.raises(CalculatorError):
        compute(expr)


def test_calculate_remembers_results_but_not_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    expr, refused = "1234*5678+17", "1234/(5678-5678)"
    assert calculate(expr) == "7006669"
    with pytest.raises(CalculatorError):
        calculate(refused)
    parsed: list[str] = []
    parse = calculator.ast.parse
    monkeypatch.setattr(calculator.ast, "parse", lambda text, *a, **k: parsed.append(text) or parse(text, *a, **k))
    assert calculate(expr) == "7006669" and parsed == []  # remembered: not parsed again
    with pytest.raises(CalculatorError):
        calculate(refused)
    assert parsed == [refused]  # a refusal is decided afresh every time


def test_calculator_checks_length_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ast.parse must not see an over-long expression")

    monkeypatch.setattr(calculator.ast, "parse", no_parse)
    with pytest.raises(CalculatorError, match="longer than"):
        compute("1+" * 5_000 + "1")
    with pytest.raises(CalculatorError):
        compute("1" * (MAX_EXPR_LEN + 1))


def test_calculator_refuses_non_strings() -> None:
    for value in (None, b"1+1", 3, ["1"]):
        with pytest.raises(CalculatorError):
            compute(value)  # type: ignore[arg-type]


@contextlib.contextmanager
def code_execution_forbidden(calls: list[str]) -> Iterator[None]:
    """eval/exec raise, compile may only build ASTs, and a sentinel builtin records being called.

    Only around calculator calls: hypothesis itself uses exec while setting up a test.
    """

    def forbidden(*args: object, **kwargs: object) -> None:
        calls.append("eval/exec")
        raise AssertionError("eval/exec must never be used")

    real_compile = builtins.compile

    def ast_only_compile(source, filename, mode, flags=0, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not flags & ast.PyCF_ONLY_AST:
            calls.append("compile")
            raise AssertionError("compile may only build an AST")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    saved = {name: getattr(builtins, name) for name in ("eval", "exec", "compile")}
    builtins.eval, builtins.exec, builtins.compile = forbidden, forbidden, ast_only_compile
    builtins._dpost_sentinel = lambda: calls.append("sentinel")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)
        del builtins._dpost_sentinel  # type: ignore[attr-defined]


def test_calculator_never_runs_code_on_hostile_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # where `open('pwned', 'w')` would write
    calls: list[str] = []
    with code_execution_forbidden(calls):
        for expr in HOSTILE:
            with pytest.raises(CalculatorError):
                compute(expr)
        assert compute("48/2") == 24  # the guards themselves do not break the happy path
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def _time_call(expr: str) -> float:
    # Best of three: the limit is on the calculator's own work, not on scheduler hiccups of a shared CPU.
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        try:
            value = compute(expr)
        except CalculatorError:
            pass
        else:
            assert type(value) in (int, float) and abs(value) <= calculator.MAX_ABS
        best = min(best, time.perf_counter() - start)
    return best


ARITHMETIC = st.text(alphabet="0123456789.+-*/%() $,", max_size=MAX_EXPR_LEN + 20)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),
    ARITHMETIC,
    st.sampled_from(HOSTILE),
    st.builds(lambda depth: "(" * depth + "1" + ")" * depth, st.integers(0, 5_000)),
    st.builds(lambda n: "9**" * n + "9", st.integers(1, 60)),
    st.builds(
        lambda s, n: s * n, st.sampled_from(["1+", "-", "(", "2**", "٣", "1,000*", "x"]), st.integers(1, 10_000)
    ),
)


def test_calculator_on_random_and_hostile_text_only_raises_calculator_error_and_is_fast() -> None:
    timings: list[float] = []
    calls: list[str] = []

    @settings(max_examples=300, deadline=None)
    @given(HOSTILE_TEXT)
    def check(expr: str) -> None:
        with code_execution_forbidden(calls):
            timings.append(_time_call(expr))

    check()
    assert calls == []
    assert statistics.median(timings) < 1e-3, f"median {statistics.median(timings) * 1e3:.3f} ms"
    assert max(timings) < 10e-3, f"max {max(timings) * 1e3:.3f} ms"


def _expressions() -> st.SearchStrategy[str]:
    # Leaves: integers and 2-decimal numbers as GSM8K writes them ("12.50", ".5").
    ints = st.integers(0, 10**6).map(str)
    decimals = st.integers(0, 99_999).map(lambda n: f"{n // 100}.{n % 100:02d}")
    bare = st.integers(1, 99).map(lambda n: f".{n:02d}")
    leaves = st.one_of(ints, decimals, bare)

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.builds(
            lambda a, op, b: f"({a}{op}{b})", children, st.sampled_from(["+", "-", "*", "/", "//", "%"]), children
        )
        power = st.builds(lambda a, e: f"({a}**{e})", children, st.integers(-3, 4))
        return st.one_of(binary, power, children.map(lambda a: f"(-{a})"))

    return st.recursive(leaves, extend, max_leaves=8)


def _reference(node: ast.AST) -> int | float:
    """The expected value, computed straight from the tree with Python's operators."""
    if isinstance(node, ast.Constant):
        value = node.value
    elif isinstance(node, ast.UnaryOp):
        value = -_reference(node.operand)
    else:
        assert isinstance(node, ast.BinOp)
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
               ast.Pow: lambda a, b: a**b}
        value = ops[type(node.op)](_reference(node.left), _reference(node.right))
    if abs(value) > 1e15:
        raise OverflowError
    return value


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_calculator_agrees_with_python_arithmetic_on_valid_expressions(expr: str) -> None:
    tree = ast.parse(expr, mode="eval")
    try:
        expected: int | float | None = _reference(tree.body)
    except (OverflowError, ZeroDivisionError):
        expected = None
    too_big = len(expr) > MAX_EXPR_LEN or sum(1 for _ in ast.walk(tree)) > calculator.MAX_NODES
    if expected is None or too_big:
        with pytest.raises(CalculatorError):
            compute(expr)
    else:
        assert compute(expr) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [(24, "24"), (24.0, "24"), (-3, "-3"), (2.5, "2.5"), (1 / 3, "0.3333"), (2 / 3, "0.6667"), (-0.5, "-0.5"),
     (-0.0, "0"), (0.00001, "0"), (0.30000000000000004, "0.3"), (1.99999, "2"), (10**15, "1000000000000000"),
     (123456.78, "123456.78"), (1e15, "1000000000000000")],
)
def test_format_result_writes_gsm8k_style_numbers(value: int | float, text: str) -> None:
    assert format_result(value) == text


def test_format_result_refuses_non_finite_and_non_numbers() -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(CalculatorError):
            format_result(value)
    with pytest.raises(TypeError):
        format_result(True)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_format_result_is_within_rounding_of_the_value(value: float) -> None:
    text = format_result(value)
    assert "e" not in text
    if "." in text:
        assert not text.endswith("0") and len(text.split(".")[1]) <= 4
    assert abs(float(text) - value) <= 5e-5 + 1e-12 * abs(value)


@pytest.mark.parametrize(
    ("text", "expr"),
    [
        ("Natalia sold 48/2 = <<48/2=", "48/2"),
        ("<<48/2=24>>24 clips.\nThen <<24+48=", "24+48"),
        ("x = <<3 * 4 =", "3 * 4 "),
        ("<<a=b=", "a=b"),
        ("<<48/2=24>>24 so y =", None),
        ("no annotation =", None),
        ("<<48/2=24", None),
        ("<<48/2=24>>", None),
        ("<<=", None),
        ("", None),
    ],
)
def test_pending_expression_finds_only_an_open_annotation_ending_in_equals(text: str, expr: str | None) -> None:
    assert pending_expression(text) == expr


def test_pending_expression_is_cheap_on_long_texts() -> None:
    text = "Some reasoning <<1+1=2>>2. " * 2_000 + "<<2*3="
    start = time.perf_counter()
    for _ in range(1_000):
        assert pending_expression(text) == "2*3"
        assert pending_expression(text + "x") is None
    assert time.perf_counter() - start < 0.5


def test_annotations_lists_complete_pairs_in_order() -> None:
    answer = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    )
    assert annotations(answer) == [("48/2", "24"), ("48+24", "72")]
    assert annotations("<<a=b=c>> <<no equals>> <<1+1=2>> <<3*4=") == [("a=b", "c"), ("1+1", "2")]
    assert annotations("") == []


def test_code_execution_guard_would_catch_an_evaluating_calculator() -> None:
    calls: list[str] = []
    with code_execution_forbidden(calls):
        for run in (lambda: eval("1+1"), lambda: exec("x = 1"), lambda: compile("1", "<s>", "eval")):
            with pytest.raises(AssertionError):
                run()
        builtins._dpost_sentinel()  # type: ignore[attr-defined]
    assert calls == ["eval/exec", "eval/exec", "compile", "sentinel"]
    assert eval("1+1") == 2  # and everything is restored afterwards


def _outcome(expr: str) -> tuple[str, object]:
    try:
        value = compute(expr)
        return type(value).__name__, value
    except CalculatorError as exc:
        return "refused", str(exc)


_PLAIN = st.one_of(st.integers(0, 10**17).map(str), st.from_regex(r"0[0-9]{1,3}", fullmatch=True))
_BLANK = st.sampled_from(["", " ", "\t", "  "])


@settings(max_examples=400, deadline=None)
@given(left=_PLAIN, op=st.sampled_from("+-*/"), right=_PLAIN, blanks=st.tuples(_BLANK, _BLANK, _BLANK, _BLANK))
@example(left="10000000000000000", op="*", right="0", blanks=("", "", "", ""))  # an operand out of range
@example(left="08", op="+", right="1", blanks=("", "", "", ""))  # the parser's leading-zero error
@example(left="7", op="/", right="0", blanks=(" ", " ", " ", " "))
def test_plain_two_number_expressions_skip_the_parser_with_the_parsers_result(left, op, right, blanks) -> None:
    """`a op b` with plain integers is computed without ast.parse: same value and type, same refusals (leading
    zeros, values out of range, division by zero) as the parser's tree walk."""
    expr = f"{blanks[0]}{left}{blanks[1]}{op}{blanks[2]}{right}{blanks[3]}"
    fast = _outcome(expr)
    simple = calculator._SIMPLE
    calculator._SIMPLE = re.compile(r"(?!)")  # never matches: every expression takes the parser
    try:
        parsed = _outcome(expr)
    finally:
        calculator._SIMPLE = simple
    assert fast == parsed
    if not (left.startswith("0") and left != "0") and not (right.startswith("0") and right != "0"):
        assert calculator._SIMPLE.fullmatch(expr.strip())  # the fast path was the one taken
