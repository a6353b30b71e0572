"""Where code compiled at first use (DeepSpeed's CPU communication op, dpost's decode-attention kernel) is
built: once per environment, kept where it survives."""

from __future__ import annotations

import os
from pathlib import Path


def extensions_dir() -> str:
    """`TORCH_EXTENSIONS_DIR` if set (the Makefile puts it in the venv), else a per-user cache."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "dpost" / "torch_extensions")
