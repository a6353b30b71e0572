"""Application builders for Serve config files and `serve run`:

    serve run services.app:solver_app checkpoint=/path/to/sft-1 version=sft-1
    serve deploy deploy/serve_solver.yaml      # same builder, args from the file

`args` may also hold a `serving` mapping with `ServingConfig` fields (pools, limits).
"""

from __future__ import annotations

from typing import Any

from services.config import ServingConfig
from services.pools import build_app, publish


def _build(pool: str, args: dict[str, Any]):
    config = ServingConfig.from_dict(dict(args.get("serving") or {}))
    checkpoint = args.get("checkpoint")
    if checkpoint:
        publish(pool, str(args.get("version") or "v0"), str(checkpoint))
    return build_app(pool, config)


def solver_app(args: dict[str, Any]):
    """The public solver: FastAPI ingress + `solver` Sampler pool."""
    return _build("solver", args)


def rollout_app(args: dict[str, Any]):
    """The coordinator's rollout pool (no HTTP route)."""
    return _build("rollout", args)
