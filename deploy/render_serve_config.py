"""Write a copy of a Serve config file with another checkpoint, version, host or port.

`serve run CONFIG` and `serve deploy CONFIG` accept no application arguments with a config file, so this is
how the checkpoint in deploy/serve_solver.yaml is overridden:

    python deploy/render_serve_config.py --checkpoint runs/demo/checkpoints/sft-1 --out /tmp/solver.yaml
    serve run /tmp/solver.yaml

A relative checkpoint is made absolute (the Serve build task and the replicas do not run in this directory).
The version defaults to `run:version` (demo:sft-1 for runs/demo/checkpoints/sft-1), the label the coordinator
gives the same model. The result is checked against Ray's own schema, and each dpost application's
`args.serving` against dpost's `ServingConfig`, before it is written.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "serve_solver.yaml"


def load(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def default_version(checkpoint: Path) -> str:
    """`run:version` for a run directory's checkpoint (runs/demo/checkpoints/sft-1 -> demo:sft-1), the label
    the coordinator gives the same model; otherwise the folder name."""
    if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.name:
        return f"{checkpoint.parent.parent.name}:{checkpoint.name}"
    return checkpoint.name


def render(config: dict[str, Any], checkpoint: str | Path | None = None, version: str | None = None,
           host: str | None = None, port: int | None = None, app: str = "solver") -> dict[str, Any]:
    """A copy of `config` with the named application's checkpoint/version and the HTTP options replaced."""
    out = copy.deepcopy(config)
    apps = [a for a in out.get("applications", []) if a.get("name") == app]
    if not apps:
        raise ValueError(f"no application named {app!r} in the Serve config")
    args = apps[0].setdefault("args", {})
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        args["checkpoint"] = str(path if "://" in str(checkpoint) else path.resolve())
        args["version"] = version or default_version(path)
    elif version is not None:
        args["version"] = version
    http = out.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    return out


def validate(config: dict[str, Any]) -> None:
    """Raise if Ray Serve would reject the config (the schema `serve run`/`serve deploy` use) or dpost's
    application builder its `args.serving` (a ConfigError naming the key)."""
    from ray.serve.schema import ServeDeploySchema

    from services.config import ServingConfig

    ServeDeploySchema.model_validate(config)
    for app in config.get("applications", []):
        if str(app.get("import_path", "")).startswith("services.app:"):
            ServingConfig.from_dict(dict((app.get("args") or {}).get("serving") or {}),
                                    where=f"application {app.get('name')!r} args")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config to start from")
    parser.add_argument("--checkpoint", help="HF checkpoint folder to serve (made absolute)")
    parser.add_argument("--version", help="model_version the API reports (default: run:folder, e.g. demo:sft-1)")
    parser.add_argument("--host", help="Serve HTTP proxy host (0.0.0.0 exposes it on every interface)")
    parser.add_argument("--port", type=int, help="Serve HTTP proxy port")
    parser.add_argument("--app", default="solver", help="application to change (default: solver)")
    parser.add_argument("--out", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        config = render(load(args.config), args.checkpoint, args.version, args.host, args.port, args.app)
        validate(config)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"render_serve_config: error: {exc}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(config, sort_keys=False)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
