"""The one safe calculator: GSM8K `<<lhs=rhs>>` annotations, evaluated without eval/exec.

An expression is parsed with `ast.parse(..., mode="eval")` and the tree is walked by hand; only numbers,
`+ - * / // % **`, unary `+ -` and parentheses are allowed, and every value stays within bounds.

GSM8K-isms, decided from the data (all 23,716 train and 4,282 test annotations): every left-hand side uses
only ASCII digits, `.`, `+ - * / ( )` and a handful of `//`. So only the two normalisations that cost no
safety are done, `$` before a number and thousands separators (`1,000`), because model samples copy the
prose around the annotation. Postfix percent (`50%`), `x`/`×` for multiply and `^` for power never occur
in an annotation and are refused rather than guessed: `%` is Python's modulo, `50%` alone is a parse error.
Letters are refused too, so `1e5`, `0x10`, `1j` and every name never reach the parser.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from typing import Callable

from trainers.core.errors import CalculatorError

__all__ = [
    "CalculatorError",
    "MAX_ABS",
    "MAX_EXPONENT",
    "MAX_EXPR_LEN",
    "MAX_NODES",
    "annotations",
    "calculate",
    "compute",
    "format_result",
    "pending_expression",
]

MAX_EXPR_LEN = 200  # GSM8K's longest annotation is 30 characters
MAX_NODES = 100  # ast.walk nodes, operators included; GSM8K's largest annotation has 35
MAX_EXPONENT = 100
MAX_ABS = 1e15  # bound on the result and on every intermediate value
_LOG10_MAX_ABS = math.log10(MAX_ABS)

Number = int | float

# What may be left after normalisation; everything else (letters, quotes, brackets, non-ASCII) is refused
# before ast.parse ever sees it.
_ALLOWED_CHARS = frozenset("0123456789.+-*/%() \t")
# `$5`, `($5`, `+ $5`: a currency sign in front of a number, never one between two digits (`5$5`).
_DOLLAR = re.compile(r"(?<![0-9.)])\$(?=[0-9.(])")
# `1,000` and `12,345,678.5`, not `1.5,000` nor `1,0000` (those stay and are refused as tuples).
_THOUSANDS = re.compile(r"(?<![0-9.,])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9,])")

_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
# `a op b` with two plain integers, most of GSM8K's annotations (`48/2`, `20+38`): evaluated without the parser,
# which is most of the calculator's time inside the decode loop, with the tree walk's result, bounds and errors
# (a leading zero is the parser's syntax error, so it takes the parser's path).
_SIMPLE = re.compile(r"[ \t]*(0|[1-9][0-9]*)[ \t]*([-+*/])[ \t]*(0|[1-9][0-9]*)[ \t]*")
_SIMPLE_OPS: dict[str, Callable[[Number, Number], Number]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_UNARYOPS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _normalise(expr: str) -> str:
    expr = expr.strip()
    if "$" in expr:
        expr = _DOLLAR.sub("", expr)
    if "," in expr:
        expr = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), expr)
    return expr


def _checked(value: Number) -> Number:
    # type() not isinstance(): bool is an int subclass and complex comes out of (-8) ** 0.5.
    if type(value) not in (int, float):
        raise CalculatorError(f"not a real number: {value!r}")
    if not math.isfinite(value) or abs(value) > MAX_ABS:
        raise CalculatorError(f"value out of range (|x| <= {MAX_ABS:g})")
    return value


def _power(base: Number, exponent: Number) -> Number:
    # Refuse before computing: 9**999999 would take seconds and gigabytes before any bound check.
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent out of range (|e| <= {MAX_EXPONENT})")
    if base != 0 and exponent * math.log10(abs(base)) > _LOG10_MAX_ABS + 0.01:
        raise CalculatorError(f"value out of range (|x| <= {MAX_ABS:g})")
    return base**exponent


def _eval_node(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        return _checked(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        return _checked(_UNARYOPS[type(node.op)](_eval_node(node.operand)))
    raise CalculatorError(f"not allowed in an expression: {type(node).__name__}")


def compute(expr: str) -> int | float:
    """Value of an arithmetic expression; CalculatorError for anything that is not plain, bounded arithmetic."""
    if not isinstance(expr, str):
        raise CalculatorError(f"expression must be a string, got {type(expr).__name__}")
    # Length first: every later step is at least linear in it and ast.parse is much worse on nesting.
    if len(expr) > MAX_EXPR_LEN:
        raise CalculatorError(f"expression longer than {MAX_EXPR_LEN} characters")
    text = _normalise(expr)
    bad = set(text) - _ALLOWED_CHARS  # also catches unicode digits, which int() and the parser accept
    if bad:
        raise CalculatorError(f"characters not allowed in an expression: {''.join(sorted(bad))!r}")
    if not text.strip():
        raise CalculatorError("empty expression")
    simple = _SIMPLE.fullmatch(text)
    if simple:
        left, op, right = simple.groups()
        try:
            return _checked(_SIMPLE_OPS[op](_checked(int(left)), _checked(int(right))))
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalculatorError(f"cannot parse expression: {expr!r}") from exc
    for count, _ in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    try:
        return _eval_node(tree.body)
    except ZeroDivisionError as exc:
        raise CalculatorError("division by zero") from exc
    except (OverflowError, RecursionError) as exc:
        raise CalculatorError(f"value out of range (|x| <= {MAX_ABS:g})") from exc


def format_result(value: int | float) -> str:
    """GSM8K style: `24` for integral values, else at most 4 decimals without trailing zeros (`2.5`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected int or float, got {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise CalculatorError(f"not a finite number: {value!r}")
    rounded = round(value, 4)
    if rounded == int(rounded):
        return str(int(rounded))  # also turns -0.0 into "0"
    return f"{rounded:.4f}".rstrip("0").rstrip(".")


@functools.lru_cache(maxsize=65536)
def calculate(expr: str) -> str:
    """`compute` then `format_result`: the text the decoder writes after `<<expr=`. Remembered per expression
    (`calculate.cache_clear()` forgets): the samples of one question mostly write the same expressions (about
    half of a sampling stage's are repeats), and parsing is most of the calculator's cost inside the decode
    loop. A refused expression raises, and is not remembered."""
    return format_result(compute(expr))


def pending_expression(text: str) -> str | None:
    """EXPR when `text` ends inside an open annotation `<<EXPR=`, else None (also for an empty EXPR)."""
    # Runs for every row on many decoding steps: endswith and two bounded searches, no regex.
    if not text.endswith("="):
        return None
    start = text.rfind("<<")
    if start < 0 or text.find(">>", start + 2) >= 0:
        return None
    expr = text[start + 2 : -1]
    return expr if expr.strip() else None


_ANNOTATION = re.compile(r"<<([^<>\n]*)>>")


def annotations(text: str) -> list[tuple[str, str]]:
    """All complete `<<lhs=rhs>>` annotations in order, split on the last `=`; ones without `=` are skipped."""
    pairs = []
    for match in _ANNOTATION.finditer(text):
        lhs, eq, rhs = match.group(1).rpartition("=")
        if eq:
            pairs.append((lhs, rhs))
    return pairs
