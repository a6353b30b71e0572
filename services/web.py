"""The solver's web page and the read-only run view it draws from, mounted on the SolverAPI ingress.

    GET /          the page (services/static/: plain HTML, JS and CSS, no build step, nothing from a CDN)
    GET /v1/run    the run the solver was started for, as JSON (services/run_view.py); 404 without one

Plain functions on a router the ingress app includes: Serve's ingress binds only the `SolverAPI` methods to
the replica and leaves these routes as they are, so they need no deployment state beyond the registry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from services.registry import get_registry
from services.run_view import RunView, read_run

router = APIRouter()
STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}}}
_registry: list[Any] = []  # the registry's handle, looked up once per replica


def _not_found(message: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": {"message": message, "type": "not_found_error"}})


def _registry_handle() -> Any:
    if not _registry:
        _registry.append(get_registry())
    return _registry[0]


_NOT_FOUND = {"description": "no such thing", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


@router.get("/", response_class=FileResponse, responses={200: {"content": {"text/html": {}}}})
async def index() -> FileResponse:
    """The web page: ask the solver, watch the run it was started for."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", response_class=FileResponse, responses={
    200: {"content": {"text/javascript": {}, "text/css": {}}}, 404: _NOT_FOUND})
async def static_file(name: str) -> Any:
    """The page's script and style sheet."""
    if name not in STATIC_TYPES:
        return _not_found(f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=STATIC_TYPES[name])


@router.get("/v1/run", response_model=RunView, responses={404: _NOT_FOUND})
async def run() -> Any:
    """The run the solver was started for: accuracy per iteration, training data per iteration, the stage
    timeline (the running stage with its seconds so far), promotions, and the versions the solver served."""
    registry = _registry_handle()
    root = await registry.run_dir.remote()
    if root is None:
        return _not_found("the solver was started without a run directory (start it with run_dir=...)")
    try:
        view = await asyncio.to_thread(read_run, Path(root))
    except FileNotFoundError:
        return _not_found(f"run directory {root} has no manifest.json yet")
    status = await registry.status.remote("solver")
    view["serving"] = {"model_version": status["version"], "history": [h["version"] for h in status["history"]]}
    return view
