"""Errors a user can cause. Each is shown as one line at the edge (CLI exit code 2, HTTP 4xx);
anything else is a bug and keeps its stack trace."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping


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


def reject_unknown_keys(values: Mapping[str, Any], config_class: type, where: str) -> None:
    """A config mapping may only use the fields of the dataclass it fills: a typo is an error, not a default."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
