"""The public solver API: a FastAPI ingress on Ray Serve in front of the `solver` pool.

    POST /v1/solve               a question -> the answer, its rationale, and for several samples their clusters;
                                 `rerank` scores the samples on the verifier pool and chooses by its rule
    POST /v1/completions         OpenAI completions (prompt as given), `stream: true` as server-sent events
    POST /v1/chat/completions    OpenAI chat: the last user message is the question, in dpost's prompt format
    GET  /v1/models, /v1/model, /healthz

Read-only by design: nothing here changes state (no swap, rollback, scale or job control), so the public
port never needs credentials. Every error is a 4xx/5xx with a JSON body `{"error": {"message", "type"}}`,
the shape OpenAI clients expect; the bodies are declared in services/api_schema.py (`/openapi.json`).
"""

# no `from __future__ import annotations`: FastAPI must see the body models as real classes

import asyncio
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import metrics
from services.api_schema import (OPENAI_ERRORS, SERVER_ERROR, SOLVE_ERRORS, STREAM, ChatCompletion,
                                 ChatCompletionRequest, Completion, CompletionRequest, Health, ModelList, ModelStatus,
                                 SolveRequest, SolveResponse, unsupported_fields)
from services.config import ServingConfig
from services.registry import get_registry
from services.streaming import TextStream, sse
from services.web import router as web_router
from trainers.core.answers import Answer, AnswerChecker, answer_checker, cut_after_answer, format_answer
from trainers.core.prompting import format_prompt
from trainers.core.rerank import Cluster, choose, cluster_answers
from trainers.evaluation import RERANK_TOP_K

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


def _unsupported(body: Any, endpoint: str) -> JSONResponse | None:
    names = unsupported_fields(body, endpoint)
    if names:
        return _error(400, f"unsupported field{'s' if len(names) > 1 else ''} {', '.join(names)}: dpost's solver "
                           f"does not implement {'them' if len(names) > 1 else 'it'} (send the default or leave "
                           f"{'them' if len(names) > 1 else 'it'} out)", "invalid_request_error")
    return None


def _random_seed() -> int:
    return uuid.uuid4().int & 0x7FFFFFFF


def _shown(answer: Answer) -> str:
    return format_answer(answer) if isinstance(answer, float) else answer


def clusters(groups: list[Cluster], texts: list[str], overrides: list[list[dict[str, str]]],
             scores: list[float] | None = None) -> list[dict[str, Any]]:
    """The clusters as the API shows them: each with its first sample's rationale, or with `scores` its
    best-scored sample's and the cluster's best and summed score."""
    shown = []
    for c in groups:
        top = c.members[0] if scores is None else max(c.members, key=lambda i: scores[i])  # first of ties
        cluster = {"answer": _shown(c.answer), "votes": c.votes, "rationale": texts[top],
                   "calculator_overrides": overrides[top]}
        if scores is not None:
            cluster.update(best_score=c.best_score(scores), summed_score=c.summed_score(scores))
        shown.append(cluster)
    return shown


def _usage(outputs: list[dict[str, Any]], n: int) -> dict[str, int]:
    """OpenAI's usage: each prompt counted once however many samples it had (rows are prompt-major)."""
    prompt = sum(o["prompt_tokens"] for o in outputs[::n])
    completion = sum(o["num_tokens"] for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@serve.deployment(name="SolverAPI")
@serve.ingress(app)
class SolverAPI:
    def __init__(self, sampler: DeploymentHandle, limits: dict[str, Any] | None = None,
                 verifier: DeploymentHandle | None = None) -> None:
        self.sampler = sampler
        self.verifier = verifier  # the verifier pool (`serving.verifier`); None: no rerank
        limits = {k: v for k, v in (limits or {}).items() if k not in ("rollout", "solver")}
        self.limits = ServingConfig.from_dict(limits, check_files=False)  # the verifier was checked at deploy
        self.checker: AnswerChecker = answer_checker(self.limits.answer_format)
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

    def _check_rerank(self, body: SolveRequest) -> JSONResponse | None:
        if body.strategy != "rerank":
            if body.top_k is not None:
                return _error(422, "top_k: only used with strategy rerank", "invalid_request_error")
            return None
        if self.verifier is None or self.limits.verifier is None:
            return _error(422, "strategy rerank needs a verifier, and this solver has none deployed "
                               "(serving.verifier)", "invalid_request_error")
        if body.n < 2:
            return _error(422, "n: strategy rerank needs at least 2 samples", "invalid_request_error")
        if body.top_k is not None and body.top_k > body.n:
            return _error(422, f"top_k: must be between 1 and n={body.n}", "invalid_request_error")
        return None

    def _top_k(self, body: SolveRequest) -> int:
        """The request's K, else the verifier's, else min(8, n // 2) as `dpost eval --rerank`; at most n."""
        k = body.top_k or self.limits.verifier.top_k
        return min(k, body.n) if k else max(1, min(RERANK_TOP_K, body.n // 2))

    @app.post("/v1/solve", responses={200: {"model": SolveResponse}, **SOLVE_ERRORS})
    async def solve(self, body: SolveRequest) -> Any:
        started = time.monotonic()
        bad = self._check_text(body.question, "question") or self._check_n(body.n) or self._check_rerank(body)
        if bad:
            return bad
        n = 1 if body.strategy == "greedy" else body.n
        temperature = 0.0 if body.strategy == "greedy" else (0.7 if body.temperature is None else body.temperature)
        seed = _random_seed()
        rows = [{"prompt": format_prompt(body.question), "temperature": float(temperature),
                 "max_new_tokens": self.limits.max_new_tokens, "calculator": body.calculator, "seed": seed + k}
                for k in range(n)]
        result = await self.sampler.generate.remote(rows)
        outputs = result["outputs"]
        texts = [cut_after_answer(o["text"]) for o in outputs]
        overrides = [o["calculator_overrides"] for o in outputs]
        # off the event loop: a boxed checker's math-verify can take seconds (it runs in its own process)
        clustering = asyncio.to_thread(cluster_answers, [self.checker.extract(t) for t in texts], self.checker)
        answer: dict[str, Any] = {"n": n, "model_version": result["model_version"]}
        if body.strategy == "rerank":  # the verifier scores while the answers are grouped
            groups, scored = await asyncio.gather(clustering, self.verifier.score.remote([body.question] * n, texts))
            scores, k, rule = scored["scores"], self._top_k(body), self.limits.verifier.rule
            chosen = choose(groups, rule, scores, k)
            answer.update(rule=rule, top_k=k, verifier_version=scored["model_version"])
        else:
            groups = await clustering
            scores, chosen = None, choose(groups, "maj")
        shown = clusters(groups, texts, overrides, scores)
        if chosen is None:  # no sample has an answer
            best = {"answer": None, "votes": 0, "rationale": texts[0], "calculator_overrides": overrides[0]}
        else:
            best = {key: shown[groups.index(chosen)][key]
                    for key in ("answer", "votes", "rationale", "calculator_overrides")}
            if scores is not None:
                best["score"] = shown[groups.index(chosen)]["best_score"]
        metrics.record_answer("solve", body.strategy, time.monotonic() - started)
        return {**best, **answer, "clusters": shown}

    @app.post("/v1/completions", responses={200: {"model": Completion, "content": STREAM}, **OPENAI_ERRORS})
    async def completions(self, body: CompletionRequest) -> Any:
        started = time.monotonic()
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        bad = _unsupported(body, "completions")
        if not bad and not prompts:
            bad = _error(422, "prompt: must not be empty", "invalid_request_error")
        for p in prompts:
            bad = bad or self._check_text(p, "prompt")
        bad = bad or self._check_n(body.n * len(prompts))
        if bad:
            return bad
        rows = self._rows(prompts, body, body.max_tokens or 16)
        strategy = "greedy" if body.temperature == 0 else "sample"
        if body.stream:
            return await self._stream("completions", strategy, rows, body, started)
        result = await self.sampler.generate.remote(rows)
        outputs = result["outputs"]
        choices = [{"text": " " + o["text"] if o["text"] else "", "index": i, "logprobs": None,
                    "finish_reason": o["finish_reason"], "calculator_overrides": o["calculator_overrides"]}
                   for i, o in enumerate(outputs)]
        metrics.record_answer("completions", strategy, time.monotonic() - started)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": result["model_version"], "choices": choices, "usage": _usage(outputs, body.n)}

    @app.post("/v1/chat/completions", responses={200: {"model": ChatCompletion, "content": STREAM},
                                                 **OPENAI_ERRORS})
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        started = time.monotonic()
        last = body.messages[-1]
        parts = [last.content] if isinstance(last.content, str) else last.content or []
        kinds = sorted({p.type for p in parts if not isinstance(p, str) and p.type != "text"})
        bad = _unsupported(body, "chat")
        if not bad and last.role != "user":
            bad = _error(422, f"messages: the last message must be the user's question, not {last.role!r}",
                         "invalid_request_error")
        if not bad and kinds:
            bad = _error(400, f"messages: content parts of type {', '.join(kinds)} are not supported (text only)",
                         "invalid_request_error")
        question = "\n".join(p if isinstance(p, str) else p.text or "" for p in parts)
        bad = bad or self._check_text(question, "messages") or self._check_n(body.n)
        if bad:
            return bad
        max_tokens = body.max_completion_tokens or body.max_tokens or self.limits.max_new_tokens
        rows = self._rows([format_prompt(question)], body, max_tokens)
        strategy = "greedy" if body.temperature == 0 else "sample"
        if body.stream:
            return await self._stream("chat", strategy, rows, body, started)
        result = await self.sampler.generate.remote(rows)
        outputs = result["outputs"]
        choices = [{"index": i, "message": {"role": "assistant", "content": o["text"]}, "logprobs": None,
                    "finish_reason": o["finish_reason"], "calculator_overrides": o["calculator_overrides"]}
                   for i, o in enumerate(outputs)]
        metrics.record_answer("chat", strategy, time.monotonic() - started)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": result["model_version"], "choices": choices, "usage": _usage(outputs, body.n)}

    def _rows(self, prompts: list[str], body: Any, max_tokens: int) -> list[dict[str, Any]]:
        """`body.n` rows per prompt, prompt-major, each with its own seed (OpenAI's `seed` makes them repeat)."""
        seed = body.seed if body.seed is not None else _random_seed()
        return [{"prompt": p, "temperature": float(body.temperature), "top_p": float(body.top_p),
                 "max_new_tokens": min(max_tokens, self.limits.max_new_tokens), "calculator": True,
                 "seed": seed + i}
                for i, p in enumerate(p for p in prompts for _ in range(body.n))]

    async def _stream(self, endpoint: str, strategy: str, rows: list[dict[str, Any]], body: Any,
                      started: float) -> StreamingResponse:
        """Answer as server-sent events while the sampler decodes. The first item (the model version) is
        awaited here, so a sampler that cannot answer at all still gets a JSON error, not a broken stream."""
        items = self.sampler.options(stream=True).generate_stream.remote(rows)
        head = await items.__anext__()
        stream = TextStream(endpoint, head["model_version"], len(rows), leading_space=endpoint == "completions")
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            first_text = True
            try:
                for chunk in stream.opening():
                    yield sse(chunk)
                async for item in items:
                    if "outputs" in item:  # the last item
                        for chunk in stream.closing(item["outputs"]):
                            yield sse(chunk)
                        if include_usage:
                            yield sse(stream.usage(_usage(item["outputs"], body.n)))
                        continue
                    for chunk in stream.pieces(item["pieces"]):
                        if first_text:
                            metrics.first_text().observe(time.monotonic() - started, tags={"endpoint": endpoint})
                            first_text = False
                        yield sse(chunk)
            except Exception as exc:  # the headers are out: the error can only travel as an event
                yield sse({"error": {"message": f"the solver could not answer: {type(exc).__name__}",
                                     "type": "server_error"}})
                return
            metrics.record_answer(endpoint, strategy, time.monotonic() - started, stream=True)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models", responses={200: {"model": ModelList}, **SERVER_ERROR})
    async def models(self) -> Any:
        status = await self.registry.status.remote("solver")
        version = status["version"] or "none"
        return {"object": "list", "data": [{"id": version, "object": "model", "created": 0, "owned_by": "dpost"}]}

    @app.get("/v1/model", responses={200: {"model": ModelStatus}, **SERVER_ERROR})
    async def model(self) -> Any:
        status = await self.registry.status.remote("solver")
        return {"pool": "solver", "model_version": status["version"], "checkpoint": status["checkpoint"],
                "replicas": {rid: r["version"] for rid, r in status["replicas"].items()},
                "history": [h["version"] for h in status["history"]]}

    @app.get("/healthz", responses={200: {"model": Health}, **SERVER_ERROR})
    async def healthz(self) -> Any:
        status = await self.registry.status.remote("solver")
        return {"status": "ok", "model_version": status["version"]}

