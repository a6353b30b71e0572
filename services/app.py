"""The solver's application builder, for Serve config files and `serve run`:

    serve run services.app:solver_app checkpoint=/path/to/sft-1 version=sft-1
    serve run services.app:solver_app run_dir=runs/tiny     # the live model stays; `/` shows the run
    serve deploy deploy/serve_solver.yaml      # same builder, args from the file

`args` may also hold a `serving` mapping with `ServingConfig` fields (pools, limits; `verifier: {path: ...}`
adds the verifier pool that `/v1/solve` strategy `rerank` scores on), and `run_dir`: the run
directory whose progress the web page's run view shows. Like the model, the run directory stays in the
registry across redeploys when not given (a run publishes its own); an empty `run_dir=` forgets it.
"""

from __future__ import annotations

from typing import Any

from services.config import ServingConfig
from services.pools import build_app, publish, publish_run_dir, publish_verifier


def solver_app(args: dict[str, Any]):
    """The public solver: FastAPI ingress + `solver` Sampler pool, serving `checkpoint` if given, and the
    verifier pool when `serving.verifier` is set."""
    config = ServingConfig.from_dict(dict(args.get("serving") or {}))
    publish_verifier(config)
    checkpoint = args.get("checkpoint")
    if checkpoint:
        publish("solver", str(args.get("version") or "v0"), str(checkpoint))
    if "run_dir" in args:  # like the checkpoint, kept in the registry when not given; `run_dir=` forgets it
        publish_run_dir(args["run_dir"])
    return build_app("solver", config)
