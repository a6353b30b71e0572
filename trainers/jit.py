"""Where code compiled at first use (DeepSpeed's CPU communication op, dpost's decode-attention kernel) is
built: once per Python environment, kept where it survives."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def extensions_dir() -> str:
    """`TORCH_EXTENSIONS_DIR` if set, else one folder per Python environment: inside a virtual environment its
    own `torch_extensions` folder, otherwise a per-user cache named by the interpreter's prefix.

    A build records its source paths and compiler flags, so two environments (two checkouts, two torch
    versions) sharing one folder would each find the other's build stale and rebuild it, about 40 s, inside
    the first decode or training step that needs it."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if sys.prefix != sys.base_prefix:
        return str(Path(sys.prefix) / "torch_extensions")
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    return str(Path.home() / ".cache" / "dpost" / "torch_extensions" / tag)
