"""How often the safe calculator reproduces GSM8K's own `<<lhs=rhs>>` annotations, and why it misses.

    python benchmarks/calculator_gsm8k.py [--data PATH] [--json OUT]

Prints the total, the share reproduced (answers_match of calculate(lhs) against parse_number(rhs)), a
table of miss kinds with examples, and how many reproduced results are also the same text (GSM8K often
writes money style `9.00` or a bare `.5` where format_result writes `9` and `0.5`); writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainers.core.answers import answers_match, parse_number  # noqa: E402
from trainers.core.calculator import CalculatorError, annotations, calculate  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
EXAMPLES_PER_KIND = 3


@dataclass
class Kind:
    count: int = 0
    examples: list[str] = field(default_factory=list)


def miss_kind(lhs: str, rhs: str, got: str | None, error: str | None) -> str:
    """Why calculate(lhs) did not reproduce rhs, in a few words."""
    want = parse_number(rhs)
    if want is None:
        return "rhs is not a number"
    if got is None:
        if any(c in lhs for c in "%x×^$,"):
            return "calculator refused: lhs has %, x, ^, $ or ','"
        return f"calculator refused: {error}"
    value = float(got)
    decimals = len(rhs.split(".", 1)[1]) if "." in rhs else 0
    if round(value, decimals) == want or abs(value - want) <= 0.5 * 10**-decimals + 1e-9:
        return "rhs rounded or truncated differently"
    if answers_match(value, -want):
        return "rhs has the wrong sign"
    if answers_match(value * 100, want) or answers_match(value / 100, want):
        return "rhs off by a factor of 100 (percent)"
    return "rhs is wrong in the data"


def format_kind(rhs: str, got: str) -> str:
    """How a numerically equal rhs is written differently from format_result's text."""
    if rhs.startswith(".") and "0" + rhs.rstrip("0") == got:
        return "rhs drops the leading 0 (.5)"
    if "." in rhs and rhs.rstrip("0").rstrip(".") in (got, got.removeprefix("0")):
        return "rhs keeps trailing zeros (9.00)"
    if "/" in rhs:
        return "rhs is a fraction (3/4)"
    return "other"


def run(data: Path) -> dict:
    total = reproduced = 0
    kinds: dict[str, Kind] = {}
    formats: Counter[str] = Counter()
    lines = data.read_text(encoding="utf-8").splitlines()
    start = time.perf_counter()
    for lineno, line in enumerate(lines, start=1):
        for lhs, rhs in annotations(json.loads(line)["answer"]):
            total += 1
            try:
                got, error = calculate(lhs), None
            except CalculatorError as exc:
                got, error = None, str(exc)
            want = parse_number(rhs)
            if got is not None and want is not None and answers_match(float(got), want):
                reproduced += 1
                if got != rhs:
                    formats[format_kind(rhs, got)] += 1
                continue
            kind = kinds.setdefault(miss_kind(lhs, rhs, got, error), Kind())
            kind.count += 1
            if len(kind.examples) < EXAMPLES_PER_KIND:
                kind.examples.append(f"line {lineno}: <<{lhs}={rhs}>> -> {got if got is not None else error}")
    seconds = time.perf_counter() - start
    return {
        "data": str(data),
        "items": len(lines),
        "annotations": total,
        "reproduced": reproduced,
        "share_reproduced": reproduced / total if total else 0.0,
        "identical_text": reproduced - sum(formats.values()),
        "format_differences": dict(formats.most_common()),
        "seconds": seconds,
        "misses": {
            name: {"count": k.count, "share": k.count / total, "examples": k.examples}
            for name, k in sorted(kinds.items(), key=lambda kv: -kv[1].count)
        },
    }


def print_report(result: dict) -> None:
    total = max(result["annotations"], 1)
    print(f"data: {result['data']} ({result['items']} items)")
    print(f"annotations: {result['annotations']}  reproduced: {result['reproduced']} "
          f"({100 * result['share_reproduced']:.2f}%)  in {result['seconds']:.2f} s")
    print(f"same text as rhs: {result['identical_text']} ({100 * result['identical_text'] / total:.2f}%); "
          f"written differently: {result['format_differences']}")
    print(f"\n{'miss kind':<48} {'count':>6} {'share':>7}")
    if not result["misses"]:
        print("(none)")
    for name, miss in result["misses"].items():
        print(f"{name:<48} {miss['count']:>6} {100 * miss['share']:>6.2f}%")
        for example in miss["examples"]:
            print(f"    {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K jsonl (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here as JSON")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"error: no such data file: {args.data}", file=sys.stderr)
        return 2
    result = run(args.data)
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
