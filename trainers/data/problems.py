"""Math word problems in every format dpost reads, as one `Problem` type.

Formats (docs/architecture.md, "Problem files"):
  gsm8k       jsonl `{"question", "answer", "id"?}`; answer is a rationale ending `#### N`, or only `#### N`;
              with `unanswered=True` (unlabeled questions) the answer may be missing or null
  svamp       json list `{"ID"?, "Body", "Question", "Equation", "Answer"}`
  multiarith  json list `{"iIndex"?, "sQuestion", "lSolutions"}` (also AddSub and SingleEq)
  asdiv       xml `<Problem ID=..><Body/><Question/><Answer>9 (apples)</Answer></Problem>`; non-numeric
              answers are skipped and counted
  math        jsonl `{"problem", "solution", "answer"?, "level"?, "type"?, "id"?}` (Hendrycks MATH); the gold
              answer is `answer`, else the last `\\boxed{}` of `solution`; items with neither are skipped and
              counted. Answers are LaTeX strings checked by the `boxed` answer checker.

Every other format holds numbers checked by the `gsm8k` checker (`ProblemSet.answer_format` says which).
`ProblemSet.calculator` is whether the data's rationales use `<<expr=result>>` annotations, the loader's
answer to "should the calculator be on for this data".

Errors name the file, the line (jsonl, xml) or item (json, xml; numbered from 1) and what is wrong.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.core.answers import Answer, AnswerFormat, answer_checker, extract_gold, format_answer, parse_number
from trainers.core.files import atomic_write_text
from trainers.core.errors import ConfigError, DataError

# xml.etree is fine for trusted benchmark files; the cap keeps a wrong path from eating the machine.
MAX_FILE_BYTES = 200 * 1024 * 1024

FORMATS = ("auto", "gsm8k", "svamp", "multiarith", "addsub", "singleeq", "asdiv", "math")
_ALIASES = {"addsub": "multiarith", "singleeq": "multiarith"}

# An ASDiv answer is numeric when it is one number (or a/b), optionally followed by a unit in parentheses;
# parse_number alone would read `2:3` or `7;2` as their first number.
# A complete calculator annotation, as GSM8K writes them: `<<48/2=24>>`.
_ANNOTATION = re.compile(r"<<[^<>]*=[^<>]*>>")
_ASDIV_NUMERIC = re.compile(r"^\s*([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?)\s*(?:\([^()]*\))?\s*$")


@dataclass(frozen=True)
class Problem:
    """One math word problem.

    `rationale` is the solution text including its final answer (GSM8K's `#### N` line, MATH's `\\boxed{}`),
    or None when the source gives only the final answer (unlabeled data, SVAMP, MultiArith, ASDiv).
    `answer` is a float for the gsm8k answer format and a LaTeX string for boxed; `level` and `subject` are
    MATH's `level` and `type` (None elsewhere). `answer` is None only for an unlabeled question read with
    `load_problems(..., unanswered=True)`: the loop labels it by vote before use (trainers/synthesis/labels.py).
    """

    id: str
    question: str
    answer: Answer | None
    rationale: str | None = None
    answer_format: AnswerFormat = "gsm8k"
    level: str | None = None
    subject: str | None = None


@dataclass
class ProblemSet:
    """The problems read from one file, plus how many items were skipped and why."""

    problems: list[Problem]
    skipped: int = 0
    source: str = ""
    skipped_reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __getitem__(self, index: int) -> Problem:
        return self.problems[index]

    @property
    def answer_format(self) -> AnswerFormat:
        """How this data's answers are read and compared (`answer_checker(problems.answer_format)`)."""
        return self.problems[0].answer_format if self.problems else "gsm8k"

    @property
    def calculator(self) -> bool:
        """Whether decoding for this data should run the calculator: its rationales carry `<<expr=result>>`
        annotations, which a model fine-tuned on them learns to write. gsm8k-format data with no rationales
        at all (unlabeled questions, SVAMP, ASDiv) says nothing against it, so it stays on there; boxed data
        (MATH) is never annotated, and an annotation-free calculator only risks rewriting stray `<<`."""
        rationales = [p.rationale for p in self.problems if p.rationale is not None]
        if not rationales:
            return self.answer_format == "gsm8k"
        return any(_ANNOTATION.search(r) for r in rationales)


def load_problems(path: str | Path, fmt: str = "auto", unanswered: bool = False) -> ProblemSet:
    """Read a problem file in any supported format; `fmt="auto"` guesses from the extension and content.
    `unanswered=True` lets GSM8K rows leave out their answer (answer None): unlabeled questions only.

    Raises ConfigError for an unknown `fmt` and DataError for a missing, empty, oversized or malformed file.
    """
    path = Path(path)
    fmt = _canonical_format(fmt)
    text = _read_text(path)
    stripped = text.lstrip()
    if fmt == "auto":
        fmt = _guess_format(path, stripped)

    if fmt == "asdiv":
        problems, reasons = _load_asdiv(path, text)
    elif fmt == "math":
        problems, reasons = _load_math_jsonl(path, text)
    elif fmt == "gsm8k" and (path.suffix.lower() == ".jsonl" or not stripped.startswith("[")):
        problems, reasons = _load_gsm8k_jsonl(path, text, unanswered), []
    else:
        items = _parse_json_list(path, text)
        if fmt == "auto_json":
            fmt = _guess_json_format(path, items)
        problems, reasons = _load_json_items(path, fmt, items, unanswered), []

    if not problems:
        first = f"; first: {reasons[0]}" if reasons else ""
        raise DataError(f"{path}: no usable problems ({len(reasons)} skipped{first})")
    _check_unique_ids(path, problems)
    return ProblemSet(problems=problems, skipped=len(reasons), source=str(path), skipped_reasons=reasons)


def write_gsm8k_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    """Write problems as GSM8K jsonl `{"id", "question", "answer"}` lines, atomically (temp file + rename).

    `answer` is the rationale when there is one, else just `#### N`; an unanswered problem has no `answer`.
    """
    lines = []
    for p in problems:
        row = {"id": p.id, "question": p.question}
        if p.rationale is not None or p.answer is not None:
            row["answer"] = p.rationale if p.rationale is not None else f"#### {format_answer(p.answer)}"
        lines.append(json.dumps(row) + "\n")
    return atomic_write_text(path, "".join(lines))


# ---------------------------------------------------------------------------------------------- reading


def _canonical_format(fmt: str) -> str:
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _ALIASES.get(name, name)


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: file is {size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _guess_format(path: Path, stripped: str) -> str:
    """Pick a format from the extension, else from the first character of the content."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "math" if _looks_like_math(stripped) else "gsm8k"
    if suffix == ".xml" or stripped.startswith("<"):
        return "asdiv"
    if stripped.startswith("["):
        return "auto_json"  # decided from the first item's keys once the list is parsed
    if stripped.startswith("{"):  # one object per line, whatever the extension says
        return "math" if _looks_like_math(stripped) else "gsm8k"
    raise DataError(f"{path}: cannot tell the format from the extension or content; pass fmt=")


def _looks_like_math(stripped: str) -> bool:
    """A jsonl whose first object has MATH's `problem` and `solution` keys (and no GSM8K `question`)."""
    first = stripped.split("\n", 1)[0]
    try:
        item = json.loads(first)
    except json.JSONDecodeError:
        return False  # the gsm8k reader reports the bad line
    return isinstance(item, dict) and "problem" in item and "solution" in item and "question" not in item


def _guess_json_format(path: Path, items: list[Any]) -> str:
    first = items[0]
    if not isinstance(first, dict):
        raise DataError(f"{path} item 1: expected a JSON object, got {type(first).__name__}")
    if "Body" in first and "Question" in first:
        return "svamp"
    if "sQuestion" in first:
        return "multiarith"
    if "question" in first:
        return "gsm8k"
    keys = ", ".join(sorted(map(str, first)))
    raise DataError(f"{path} item 1: cannot tell the format from its keys ({keys}); pass fmt=")


def _parse_json_list(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of problems, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the problem list is empty")
    return data


def _load_gsm8k_jsonl(path: Path, text: str, unanswered: bool = False) -> list[Problem]:
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, hand edits) carry no item
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        problems.append(_gsm8k_problem(item, where, f"{path.stem}-{number}", unanswered))
    return problems


def _load_math_jsonl(path: Path, text: str) -> tuple[list[Problem], list[str]]:
    problems, skipped = [], []
    boxed = answer_checker("boxed")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        item = _require_object(item, where)
        question = _require_text(item, "problem", where)
        solution = _require_text(item, "solution", where)
        answer = item.get("answer")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise DataError(f"{where}: 'answer' must be a non-empty string")
        try:
            gold = answer.strip() if answer is not None else boxed.gold(solution)
        except DataError:
            skipped.append(f"line {number}: no \\boxed{{}} answer in 'solution' and no 'answer'")
            continue
        problems.append(Problem(_item_id(item, "id", where, f"{path.stem}-{number}"), question.strip(), gold,
                                solution, "boxed", _optional_text(item, "level", where),
                                _optional_text(item, "type", where)))
    return problems, skipped


def _optional_text(item: dict[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _load_json_items(path: Path, fmt: str, items: list[Any], unanswered: bool = False) -> list[Problem]:
    if fmt == "gsm8k":
        return [_gsm8k_problem(item, f"{path} item {i}", f"{path.stem}-{i}", unanswered)
                for i, item in enumerate(items, start=1)]
    build = {"svamp": _svamp_problem, "multiarith": _multiarith_problem}[fmt]
    return [build(item, f"{path} item {i}", f"{path.stem}-{i}") for i, item in enumerate(items, start=1)]


def _gsm8k_problem(item: Any, where: str, default_id: str, unanswered: bool = False) -> Problem:
    item = _require_object(item, where)
    question = _require_text(item, "question", where)
    if unanswered and item.get("answer") is None:
        return Problem(_item_id(item, "id", where, default_id), question, None)
    answer = _require_text(item, "answer", where, allow_empty=True)
    if "#### " not in answer:
        raise DataError(f"{where}: answer has no '#### ' final line")
    try:
        value = extract_gold(answer)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    # Only a bare `#### N` means "no rationale": that is how unlabeled data is written.
    rationale = None if not answer.rpartition("#### ")[0].strip() else answer
    return Problem(_item_id(item, "id", where, default_id), question, _finite(value, where), rationale)


def _svamp_problem(item: Any, where: str, default_id: str) -> Problem:
    item = _require_object(item, where)
    body = _require_text(item, "Body", where, allow_empty=True)
    question = _require_text(item, "Question", where)
    if "Answer" not in item:
        raise DataError(f"{where}: missing key 'Answer'")
    value = _number(item["Answer"], "Answer", where)
    return Problem(_item_id(item, "ID", where, default_id), _join(body, question), value)


def _multiarith_problem(item: Any, where: str, default_id: str) -> Problem:
    item = _require_object(item, where)
    question = _require_text(item, "sQuestion", where)
    if "lSolutions" not in item:
        raise DataError(f"{where}: missing key 'lSolutions'")
    solutions = item["lSolutions"]
    if not isinstance(solutions, list) or not solutions:
        raise DataError(f"{where}: 'lSolutions' must be a non-empty list")
    value = _number(solutions[0], "lSolutions", where)
    return Problem(_item_id(item, "iIndex", where, default_id), question.strip(), value)


def _load_asdiv(path: Path, text: str) -> tuple[list[Problem], list[str]]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line = e.position[0] if e.position else "?"
        raise DataError(f"{path} line {line}: not valid XML ({e})") from None
    elements = list(root.iter("Problem"))
    if not elements:
        raise DataError(f"{path}: no <Problem> elements")
    problems, skipped = [], []
    for i, element in enumerate(elements, start=1):
        where = f"{path} item {i}"
        problem_id = element.get("ID") or f"{path.stem}-{i}"
        question = _xml_text(element, "Question", where)
        answer_text = _xml_text(element, "Answer", where)
        match = _ASDIV_NUMERIC.match(answer_text)
        value = parse_number(match.group(1)) if match else None
        if value is None or not math.isfinite(value):
            skipped.append(f"item {i} (ID {problem_id}): non-numeric answer {answer_text.strip()!r}")
            continue
        body = element.findtext("Body") or ""
        problems.append(Problem(problem_id, _join(body, question), float(value)))
    return problems, skipped


# ---------------------------------------------------------------------------------------------- helpers


def _require_object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def _require_text(item: dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    if key not in item:
        raise DataError(f"{where}: missing key {key!r}")
    value = item[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _xml_text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or not (child.text or "").strip():
        raise DataError(f"{where}: missing or empty <{tag}>")
    return child.text or ""


def _item_id(item: dict[str, Any], key: str, where: str, default: str) -> str:
    if key not in item:
        return default
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise DataError(f"{where}: {key!r} must be a non-empty string or integer")
    return str(value)


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool):  # bool is an int subclass, never a real answer
        number = None
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = parse_number(value)
    else:
        number = None
    if number is None:
        raise DataError(f"{where}: {key!r} is not a number ({value!r})")
    return _finite(number, where)


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise DataError(f"{where}: answer is not a finite number ({value})")
    return float(value)


def _join(body: str, question: str) -> str:
    body = body.strip()
    return f"{body} {question.strip()}" if body else question.strip()


def _check_unique_ids(path: Path, problems: list[Problem]) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(f"{path}: duplicate problem id {p.id!r}")
        seen.add(p.id)

