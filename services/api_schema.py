"""The public API's request and response bodies: what `/openapi.json` documents and the fuzz test holds the
service to.

The OpenAI-shaped requests keep unknown fields (`extra="allow"`) so that `unsupported_fields` can name them in
a 400: a field OpenAI clients may send is accepted only at its neutral value (`NEUTRAL`), or when it cannot
change the answer (`IGNORED`); anything else would change what the answer means, so it is refused rather
than silently dropped.
"""

# no `from __future__ import annotations`: FastAPI must see the body models as real classes

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# Accepted only at these values: each means "off", i.e. what dpost does anyway.
_PENALTIES = {"frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logit_bias": (None, {}),
              "stop": (None, [])}
NEUTRAL: dict[str, dict[str, tuple[Any, ...]]] = {
    "chat": {**_PENALTIES, "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
             "functions": (None, []), "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"),
             "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]), "audio": (None,),
             "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,)},
    "completions": {**_PENALTIES, "logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
                    "best_of": (None, 1)},
}
# Bookkeeping fields that cannot change an answer.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
                     "prompt_cache_key"})


def unsupported_fields(body: BaseModel, endpoint: str) -> list[str]:
    """Names of the body's undeclared fields that dpost cannot honour (see the module docstring)."""
    neutral = NEUTRAL[endpoint]
    return [name for name, value in (body.model_extra or {}).items()
            if name not in IGNORED and not (name in neutral and _among(value, neutral[name]))]


def _among(value: Any, allowed: tuple[Any, ...]) -> bool:
    # `type(value) is type(a)`-free on purpose: 0, 0.0 and False are all "off"; a string never equals a number
    return any(value == a and isinstance(value, str) == isinstance(a, str) for a in allowed)


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail


# ---- /v1/solve

class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: StrictStr = Field(min_length=1)
    strategy: Literal["greedy", "majority", "rerank"] = Field(
        default="greedy", description="greedy: one greedy sample; majority: the largest answer cluster of n "
                                      "samples; rerank: n samples scored by the verifier pool and chosen by its "
                                      "rule (solution-cluster re-ranking; needs a deployed verifier and n >= 2).")
    n: StrictInt = Field(default=1, ge=1, description="Samples (majority, rerank); at most the server's max_n.")
    top_k: StrictInt | None = Field(default=None, ge=1, description="rerank only: K of the top-K rules, in 1..n "
                                                                    "(default: the verifier's, else min(8, n // 2)).")
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    calculator: bool = True


class CalculatorOverride(BaseModel):
    """A calculator result forced into the text: it reads `<<expr=result>>` there."""

    expr: str
    result: str


class Cluster(BaseModel):
    """Samples whose final answers are equivalent (the server's answer checker)."""

    answer: str
    votes: int
    rationale: str = Field(description="The first of the cluster's samples; with rerank, its best-scored one.")
    calculator_overrides: list[CalculatorOverride]
    best_score: float | None = Field(default=None, description="rerank: the verifier's best score in the cluster.")
    summed_score: float | None = Field(default=None, description="rerank: the cluster's summed verifier score.")


class SolveResponse(BaseModel):
    answer: str | None = Field(description="The chosen answer: the majority's, or the re-ranking rule's (None "
                                           "if no sample has one).")
    rationale: str = Field(description="The chosen cluster's rationale (see Cluster.rationale).")
    votes: int = Field(description="The chosen cluster's votes.")
    n: int
    model_version: str
    calculator_overrides: list[CalculatorOverride] = Field(description="The rationale's calculator results.")
    clusters: list[Cluster] = Field(description="Every distinct answer, most votes first (ties: first seen).")
    rule: Literal["rr_topk", "weighted", "weighted_topk"] | None = Field(
        default=None, description="rerank: the rule that chose the answer.")
    top_k: int | None = Field(default=None, description="rerank: K of the top-K rules.")
    score: float | None = Field(default=None, description="rerank: the verifier's score of the rationale.")
    verifier_version: str | None = Field(default=None, description="rerank: the verifier version that scored.")


# ---- OpenAI: /v1/completions and /v1/chat/completions

class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported_fields`
    model: StrictStr | None = None
    temperature: StrictFloat | StrictInt = Field(default=1.0, ge=0, le=2)
    top_p: StrictFloat | StrictInt = Field(default=1.0, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = Field(default=None, ge=1, description="Default 16, as OpenAI's.")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: only the last user message is read
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The question is the last message, which "
                                                                  "must be the user's.")
    max_tokens: StrictInt | None = Field(default=None, ge=1, description="Default: the server's cap.")
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, description="Same as max_tokens.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Choice(BaseModel):
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    calculator_overrides: list[CalculatorOverride] = Field(description="dpost's: the calculator results in "
                                                                       "the text, in order.")


class CompletionChoice(_Choice):
    text: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage


class _Answer(BaseModel):
    id: str
    created: int
    model: str = Field(description="The model version that answered.")
    usage: Usage


class Completion(_Answer):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class ChatCompletion(_Answer):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


# ---- model and health

class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ModelStatus(BaseModel):
    pool: str
    model_version: str | None
    checkpoint: str | None
    replicas: dict[str, str | None]
    history: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str | None


_ERROR = {"model": ErrorBody}
SERVER_ERROR = {503: {**_ERROR, "description": "The solver could not answer (no model yet, a replica failed)."}}
ERRORS: dict[int | str, dict[str, Any]] = {  # of every route with a body
    400: {**_ERROR, "description": "The body could not be read (not UTF-8, cut short)."},
    422: {**_ERROR, "description": "Invalid body, or beyond the server's limits."}, **SERVER_ERROR}
SOLVE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 422: {**_ERROR, "description": "Invalid body, beyond the server's limits, or strategy rerank on a "
                                             "solver with no verifier deployed."}}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 400: {**_ERROR, "description": "The body could not be read, or it has a field dpost does not "
                                             "implement (named in the message)."}}
STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "With `stream: true`: OpenAI's "
                                                                             "chunks as server-sent events, "
                                                                             "ending with `data: [DONE]`."}}}
