"""The solver's application builder, for Serve config files and `serve run`:

    serve run services.app:solver_app checkpoint=/path/to/sft-1 version=sft-1
    serve deploy deploy/serve_solver.yaml      # same builder, args from the file

`args` may also hold a `serving` mapping with `ServingConfig` fields (pools, limits).
"""

from __future__ import annotations

from typing import Any

from services.config import ServingConfig
from services.pools import build_app, publish


def solver_app(args: dict[str, Any]):
    """The public solver: FastAPI ingress + `solver` Sampler pool, serving `checkpoint` if given."""
    config = ServingConfig.from_dict(dict(args.get("serving") or {}))
    checkpoint = args.get("checkpoint")
    if checkpoint:
        publish("solver", str(args.get("version") or "v0"), str(checkpoint))
    return build_app("solver", config)
