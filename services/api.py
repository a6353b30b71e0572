"""The public solver API: a FastAPI ingress on Ray Serve in front of the `solver` pool.

Read-only by design: nothing here changes state (no swap, rollback, scale or job control), so the public
port never needs credentials. Every error is a 4xx/5xx with a JSON body `{"error": {"message", "type"}}`,
the shape OpenAI clients expect.
"""

# no `from __future__ import annotations`: FastAPI must see the body models as real classes

import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.config import ServingConfig
from services.registry import get_registry
from services.web import router as web_router
from trainers.core.answers import answers_match, cut_after_answer, extract_answer, format_answer
from trainers.core.metrics import majority_vote
from trainers.core.prompting import format_prompt

app = FastAPI(title="dpost solver", version="1")
app.include_router(web_router)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return _error(422, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error")


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), "invalid_request_error")


@app.exception_handler(Exception)
async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return _error(503, f"the solver could not answer: {type(exc).__name__}", "server_error")


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: StrictStr = Field(min_length=1)
    strategy: Literal["greedy", "majority"] = "greedy"
    n: StrictInt = Field(default=1, ge=1)
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    calculator: bool = True


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    model: StrictStr | None = None
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | StrictInt = Field(default=1.0, ge=0, le=2)
    top_p: StrictFloat | StrictInt = Field(default=1.0, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = None
    stream: bool = False


@serve.deployment(name="SolverAPI")
@serve.ingress(app)
class SolverAPI:
    def __init__(self, sampler: DeploymentHandle, limits: dict[str, Any] | None = None) -> None:
        self.sampler = sampler
        self.limits = ServingConfig(**{k: v for k, v in (limits or {}).items() if k not in ("rollout", "solver")})
        self.registry = get_registry()

    def _check_text(self, text: str, field: str) -> JSONResponse | None:
        if not text.strip():
            return _error(422, f"{field}: must not be empty", "invalid_request_error")
        if len(text) > self.limits.max_question_chars:
            return _error(422, f"{field}: longer than {self.limits.max_question_chars} characters",
                          "invalid_request_error")
        return None

    def _check_n(self, n: int) -> JSONResponse | None:
        if n > self.limits.max_n:
            return _error(422, f"n: at most {self.limits.max_n}", "invalid_request_error")
        return None

    @app.post("/v1/solve")
    async def solve(self, body: SolveRequest) -> Any:
        bad = self._check_text(body.question, "question") or self._check_n(body.n)
        if bad:
            return bad
        n = 1 if body.strategy == "greedy" else body.n
        temperature = 0.0 if body.strategy == "greedy" else (0.7 if body.temperature is None else body.temperature)
        seed = uuid.uuid4().int & 0x7FFFFFFF
        rows = [{"prompt": format_prompt(body.question), "temperature": float(temperature),
                 "max_new_tokens": self.limits.max_new_tokens, "calculator": body.calculator, "seed": seed + k}
                for k in range(n)]
        result = await self.sampler.generate.remote(rows)
        texts = [cut_after_answer(o["text"]) for o in result["outputs"]]
        answers = [extract_answer(t) for t in texts]
        winner, votes = majority_vote(answers)
        rationale = next((t for t, a in zip(texts, answers) if winner is not None and answers_match(a, winner)),
                         texts[0])
        return {"answer": format_answer(winner) if winner is not None else None, "rationale": rationale,
                "votes": votes, "n": n, "model_version": result["model_version"]}

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        if body.stream:
            return _error(400, "stream: streaming is not supported", "invalid_request_error")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            return _error(422, "prompt: must not be empty", "invalid_request_error")
        for p in prompts:
            bad = self._check_text(p, "prompt")
            if bad:
                return bad
        bad = self._check_n(body.n * len(prompts))
        if bad:
            return bad
        seed = body.seed if body.seed is not None else uuid.uuid4().int & 0x7FFFFFFF
        max_tokens = min(body.max_tokens or 16, self.limits.max_new_tokens)
        rows = [{"prompt": p, "temperature": float(body.temperature), "top_p": float(body.top_p),
                 "max_new_tokens": max_tokens, "calculator": True, "seed": seed + i}
                for i, p in enumerate(p for p in prompts for _ in range(body.n))]
        result = await self.sampler.generate.remote(rows)
        choices = [{"text": o["text"] if not o["text"] else " " + o["text"], "index": i, "logprobs": None,
                    "finish_reason": o["finish_reason"]} for i, o in enumerate(result["outputs"])]
        completion_tokens = sum(o["num_tokens"] for o in result["outputs"])
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": result["model_version"], "choices": choices,
                "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens,
                          "total_tokens": completion_tokens}}

    @app.get("/v1/models")
    async def models(self) -> Any:
        status = await self.registry.status.remote("solver")
        version = status["version"] or "none"
        return {"object": "list", "data": [{"id": version, "object": "model", "created": 0, "owned_by": "dpost"}]}

    @app.get("/v1/model")
    async def model(self) -> Any:
        status = await self.registry.status.remote("solver")
        return {"pool": "solver", "model_version": status["version"], "checkpoint": status["checkpoint"],
                "replicas": {rid: r["version"] for rid, r in status["replicas"].items()},
                "history": [h["version"] for h in status["history"]]}

    @app.get("/healthz")
    async def healthz(self) -> Any:
        status = await self.registry.status.remote("solver")
        return {"status": "ok", "model_version": status["version"]}
