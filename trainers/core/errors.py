"""Errors a user can cause. Each is shown as one line at the edge (CLI exit code 2, HTTP 4xx);
anything else is a bug and keeps its stack trace."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


class DpostError(Exception):
    """Base class for mistakes a user can fix (bad config, bad data, bad checkpoint)."""


class ConfigError(DpostError, ValueError):
    """A run config or stage config that cannot work."""


class DataError(DpostError, ValueError):
    """A data file that cannot be read: the message names the file, the line/item and what is wrong."""


class CalculatorError(DpostError, ValueError):
    """An expression the safe calculator refuses to evaluate."""


class CheckpointError(DpostError):
    """A checkpoint folder that is missing, incomplete or unloadable."""


def config_error(exc: ValidationError, model: type[BaseModel], where: str = "", prefix: str = "") -> ConfigError:
    """pydantic's report on `model` as one line naming the key: `where: sampling.temperature: Input should be
    less than or equal to 2 (got 5)`, `where: training.sft: unknown key 'learnig_rate' (did you mean
    'learning_rate'?)`; `prefix` is the key `model` sits under. Only the first error is shown, with a count of
    the rest: one fix at a time reads better."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = ".".join(str(part) for part in ((prefix,) if prefix else ()) + tuple(first["loc"]))
    parent, _, key = path.rpartition(".")
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = f"unknown key {key!r}{_suggestion(key, _model_at(model, tuple(first['loc'][:-1])))}"
        path = parent
    else:
        message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if first["type"] not in ("missing", "value_error", "assertion_error") and not isinstance(
                first["input"], dict):
            message += f" (got {_short(first['input'])})"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return ConfigError(": ".join(part for part in (where, path, message + more) if part))


def _suggestion(key: str, model: type | None) -> str:
    """` (did you mean 'x'?)` when the model that refused `key` has a field spelled almost the same."""
    names = list(getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {}))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(model: type | None, loc: tuple) -> type | None:
    """The model (or dataclass) class found by following `loc`'s field names down from `model`."""
    for part in loc:
        fields = getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {})
        field = fields.get(str(part))
        if field is None:
            return None
        annotation = getattr(field, "annotation", None) or getattr(field, "type", None)
        classes = [t for t in (annotation, *getattr(annotation, "__args__", ())) if isinstance(t, type)
                   and (issubclass(t, BaseModel) or hasattr(t, "__dataclass_fields__"))]
        model = classes[0] if classes else None
    return model


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
