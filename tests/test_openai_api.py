"""The OpenAI-compatible API on a real Serve app: chat, streaming (real, token by token), refused fields, the
solve endpoint's clusters, and the app's metrics on the node's Prometheus endpoint."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import ray

from services.config import ServingConfig
from services.pools import deploy_pool, swap
from trainers.core.answers import answers_match, extract_answer
from trainers.core.prompting import format_prompt
from trainers.data.problems import load_problems
from trainers.engine.decoding import DecodeEngine, DecodeRequest, decode_batch
from trainers.models.checkpoints import load_policy

pytestmark = pytest.mark.ray

QUESTION = "Ava has 12 pens. She buys 5 more. How many pens does she have?"


@pytest.fixture(scope="module")
def solver(serve_port, sft_result):
    deploy_pool("solver", ServingConfig(port=serve_port, max_new_tokens=64), "o1", str(sft_result.checkpoint))
    url = f"http://127.0.0.1:{serve_port}"
    return url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def questions(synthetic_dir) -> list[str]:
    return [p.question for p in load_problems(synthetic_dir / "test.jsonl").problems[:16]]


def _events(response: httpx.Response) -> list[tuple[float, dict | str]]:
    """(arrival time, parsed event) for each server-sent event of a streamed response."""
    out: list[tuple[float, dict | str]] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
    return out


def test_engine_streams_exactly_the_final_text_with_calculator_results_marked(sft_result, questions):
    model, tokenizer = load_policy(sft_result.checkpoint)
    rows = [DecodeRequest(prompt=format_prompt(q), max_new_tokens=64, temperature=0.0 if i % 2 else 0.8, seed=i)
            for i, q in enumerate(questions)]
    pieces: dict[int, list[tuple[str, dict | None]]] = {i: [] for i in range(len(rows))}
    done = {}
    engine = DecodeEngine(model, tokenizer, max_batch=6)  # fewer slots than rows: rows join while others run
    engine.add(rows, done.__setitem__, lambda i, text, override: pieces[i].append((text, override)))
    engine.run()
    assert [done[i].text for i in range(len(rows))] == [d.text for d in decode_batch(model, tokenizer, rows)]
    for i, decoded in done.items():
        assert "".join(text for text, _ in pieces[i]) == decoded.text
        assert len(pieces[i]) > 1 or len(decoded.text) <= 1  # piece by piece, not the finished text at once
        # every forced result arrives marked, exactly (cut short only when the row hit its token limit)
        marked = "".join(text for text, override in pieces[i] if override is not None)
        forced = "".join(o["result"] + ">>" for o in decoded.calculator_overrides)
        assert marked == forced or (decoded.finish_reason == "length" and forced.startswith(marked)), i
    assert any(d.calculator_overrides for d in done.values()), "the trained model should use the calculator"


def test_openai_client_chat_completions_work_unchanged(solver):
    url, client = solver
    messages = [{"role": "system", "content": "You solve math word problems."},
                {"role": "user", "content": QUESTION}]
    out = client.chat.completions.create(model="o1", messages=messages, temperature=0, max_tokens=48)
    assert out.object == "chat.completion" and out.model == "o1" and len(out.choices) == 1
    content = out.choices[0].message.content
    assert out.choices[0].message.role == "assistant" and content and out.choices[0].finish_reason in {"stop",
                                                                                                       "length"}
    assert out.usage.prompt_tokens > 0 and out.usage.total_tokens == out.usage.prompt_tokens + \
        out.usage.completion_tokens
    # the question went through the project's prompt format: the same as completing that prompt
    plain = client.completions.create(model="o1", prompt=format_prompt(QUESTION), temperature=0, max_tokens=48)
    assert plain.choices[0].text == " " + content
    assert plain.usage.prompt_tokens == out.usage.prompt_tokens

    sampled = [client.chat.completions.create(model="o1", messages=messages, n=3, temperature=1.0, seed=7,
                                              max_completion_tokens=32) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert len(sampled[0].choices) == 3 and sampled[0].usage.prompt_tokens == out.usage.prompt_tokens


def test_openai_client_streams_chat_and_completions_unchanged(solver):
    url, client = solver
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="o1", messages=messages, n=2, temperature=0.9, seed=3)
    stream = client.chat.completions.create(model="o1", messages=messages, n=2, temperature=0.9, seed=3,
                                            stream=True, stream_options={"include_usage": True})
    text, finish, usage, chunks = ["", ""], [None, None], None, 0
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == "o1"
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert text == [c.message.content for c in whole.choices]
    assert finish == [c.finish_reason for c in whole.choices]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert chunks > 4 + len(text)  # pieces of text, not one chunk per choice

    prompt = format_prompt(QUESTION)
    whole = client.completions.create(model="o1", prompt=prompt, temperature=0, max_tokens=40)
    pieces = [c.choices[0].text for c in client.completions.create(model="o1", prompt=prompt, temperature=0,
                                                                      max_tokens=40, stream=True) if c.choices]
    assert "".join(pieces) == whole.choices[0].text and len([p for p in pieces if p]) > 2


def test_stream_delivers_text_while_the_model_is_still_decoding(solver):
    """Real streaming: the first text arrives long before the last, spread over many network reads."""
    url, _ = solver
    body = {"prompt": format_prompt(QUESTION), "max_tokens": 64, "temperature": 1.0, "seed": 1, "n": 8,
            "stream": True}
    with httpx.Client(timeout=60) as client:
        started = time.monotonic()
        with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response)
    assert events[-1][1] == "[DONE]"
    texts = [t for t, e in events if isinstance(e, dict) and any(c["text"] for c in e["choices"])]
    total = events[-1][0] - started
    assert len(texts) >= 16
    assert texts[0] - started < 0.5 * total, (texts[0] - started, total)
    assert len({round(t, 2) for t in texts}) >= 4  # arrivals spread out in time, not one burst


def test_calculator_results_travel_marked_in_the_stream(solver, questions):
    url, _ = solver
    body = {"prompt": [format_prompt(q) for q in questions], "max_tokens": 64, "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
        events = [e for _, e in _events(r) if isinstance(e, dict)]
    forced: dict[int, str] = {}
    overrides: dict[int, list] = {}
    finish: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            if choice.get("calculator"):
                forced[choice["index"]] = forced.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                overrides[choice["index"]] = choice["calculator_overrides"]
                finish[choice["index"]] = choice["finish_reason"]
    assert forced, "the trained model should use the calculator on some of these questions"
    assert set(overrides) == set(range(len(questions)))
    for index in range(len(questions)):
        results = "".join(o["result"] + ">>" for o in overrides[index])
        marked = forced.get(index, "")
        assert marked == results or finish[index] == "length" and results.startswith(marked), index


@pytest.mark.parametrize("endpoint, extra, named", [
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, ["tools"]),
    ("chat", {"functions": [{"name": "f"}], "logprobs": True}, ["functions", "logprobs"]),
    ("chat", {"response_format": {"type": "json_object"}}, ["response_format"]),
    ("chat", {"stop": ["\n"], "frequency_penalty": 0.5}, ["stop", "frequency_penalty"]),
    ("chat", {"top_logprobs": 3, "n_best": 2}, ["top_logprobs", "n_best"]),
    ("completions", {"echo": True}, ["echo"]),
    ("completions", {"logprobs": 2, "suffix": "!"}, ["logprobs", "suffix"]),
    ("completions", {"best_of": 3, "logit_bias": {"50": 100}}, ["best_of", "logit_bias"]),
])
def test_unsupported_fields_get_400_naming_them(solver, endpoint, extra, named):
    url, _ = solver
    base = {"messages": [{"role": "user", "content": QUESTION}]} if endpoint == "chat" else \
        {"prompt": format_prompt(QUESTION)}
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    r = httpx.post(f"{url}{path}", json={**base, **extra, "max_tokens": 4}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and all(name in error["message"] for name in named)


def test_refusals_reach_openai_clients_as_their_errors(solver):
    _, client = solver
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="o1", messages=[{"role": "user", "content": QUESTION}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model="o1", messages=[{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": "data:,"}}]}])
    with pytest.raises(openai.UnprocessableEntityError, match="last message"):
        client.chat.completions.create(model="o1", messages=[{"role": "user", "content": QUESTION},
                                                             {"role": "assistant", "content": "The answer"}])


def test_fields_clients_send_by_default_are_accepted(solver):
    url, _ = solver
    body = {"model": "o1", "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}],
                                         "name": "ava"}],
            "max_tokens": 8, "temperature": 0, "top_p": 1, "n": 1, "stream": False, "frequency_penalty": 0,
            "presence_penalty": 0.0, "logit_bias": {}, "logprobs": False, "response_format": {"type": "text"},
            "stop": None, "tools": [], "tool_choice": "none", "parallel_tool_calls": True, "user": "u1",
            "store": False, "metadata": {"k": "v"}, "service_tier": "auto"}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_solve_returns_answer_clusters_by_votes(solver, questions):
    url, _ = solver
    r = httpx.post(f"{url}/v1/solve", json={"question": questions[0], "strategy": "majority", "n": 12,
                                            "temperature": 1.0}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    clusters = body["clusters"]
    assert clusters, body
    assert [c["votes"] for c in clusters] == sorted((c["votes"] for c in clusters), reverse=True)
    assert sum(c["votes"] for c in clusters) <= 12 and body["n"] == 12
    assert (body["answer"], body["votes"], body["rationale"]) == \
           (clusters[0]["answer"], clusters[0]["votes"], clusters[0]["rationale"])
    for c in clusters:
        assert answers_match(extract_answer(c["rationale"]), float(c["answer"].replace(",", "")))
        for o in c["calculator_overrides"]:
            assert f"<<{o['expr']}={o['result']}>>" in c["rationale"] or f"<<{o['expr']}=" in c["rationale"]
    for a, b in zip(clusters, clusters[1:]):
        assert not answers_match(float(a["answer"].replace(",", "")), float(b["answer"].replace(",", "")))
    greedy = httpx.post(f"{url}/v1/solve", json={"question": questions[0]}, timeout=60).json()
    assert greedy["n"] == 1 and len(greedy["clusters"]) == (1 if greedy["answer"] is not None else 0)
    assert greedy["calculator_overrides"] == (greedy["clusters"][0]["calculator_overrides"]
                                              if greedy["clusters"] else greedy["calculator_overrides"])


def _scrape() -> str:
    texts = []
    for node in ray.nodes():
        if node["Alive"]:
            address = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            texts.append(httpx.get(address, timeout=10).text)
    return "\n".join(texts)


def _value(text: str, name: str, **tags: str) -> float:
    """Sum of a metric's samples whose labels include `tags`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels = line[line.find("{") + 1:line.rfind("}")] if "{" in line else ""
            if all(f'{k}="{v}"' in labels for k, v in tags.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_app_metrics_reach_the_nodes_prometheus_endpoint(solver, base_checkpoint, sft_result):
    """After the requests above and one hot swap, dpost's counters and histograms are scraped from the same
    endpoint as Serve's own metrics."""
    url, client = solver
    client.chat.completions.create(model="o1", messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
    swap("solver", "o2", str(base_checkpoint))
    swap("solver", "o3", str(sft_result.checkpoint))
    wanted = {("ray_dpost_answers_total", (("endpoint", "chat"), ("strategy", "sample"))): 3,
              ("ray_dpost_answers_total", (("endpoint", "completions"), ("strategy", "greedy"))): 3,
              ("ray_dpost_answers_total", (("endpoint", "solve"), ("strategy", "majority"))): 1,
              ("ray_dpost_calculator_overrides_total", (("pool", "solver"),)): 1,
              ("ray_dpost_model_swaps_total", (("pool", "solver"),)): 2,
              ("ray_dpost_request_latency_s_count", (("endpoint", "chat"), ("stream", "true"))): 1,
              ("ray_dpost_stream_first_text_s_count", (("endpoint", "completions"),)): 2}
    deadline = time.monotonic() + 60  # Ray's agents export every few seconds
    while True:
        text = _scrape()
        missing = {k: _value(text, k[0], **dict(k[1])) for k, least in wanted.items()
                   if _value(text, k[0], **dict(k[1])) < least}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, missing
    assert "ray_serve_num_http_requests" in text  # Serve's own, on the same endpoint
    print(f"\nscraped from {len(ray.nodes())} node(s): " + ", ".join(
        f"{name}{dict(tags)}={_value(text, name, **dict(tags)):g}" for name, tags in wanted))
