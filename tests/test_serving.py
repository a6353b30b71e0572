"""Sampling and serving on a real local Ray cluster: Serve replicas, real HTTP, real hot swaps."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest
from ray import serve

from services.config import PoolConfig, ServingConfig
from services.pools import deploy_pool, pool_status, decode_on_pool, scale, swap
from services.registry import HEARTBEAT_TTL_S
from trainers.models.checkpoints import load_policy
from trainers.data.problems import load_problems
from trainers.engine.decoding import DecodeRequest, decode_batch
from trainers.core.errors import CheckpointError
from trainers.core.prompting import format_prompt

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def serving(serve_port, sft_result, base_checkpoint, other_base_checkpoint):
    config = ServingConfig(port=serve_port, max_new_tokens=48, solver=PoolConfig(max_batch_size=32))
    deploy_pool("solver", config, "v1", str(sft_result.checkpoint))
    deploy_pool("rollout", config, "r1", str(sft_result.checkpoint))
    yield config, f"http://127.0.0.1:{serve_port}"


def test_row_decodes_the_same_alone_and_in_a_mixed_batch_and_calculator_hits_only_its_rows(
        sft_result, synthetic_dir):
    model, tokenizer = load_policy(sft_result.checkpoint)
    problems = load_problems(synthetic_dir / "test.jsonl").problems[:32]
    rows = [DecodeRequest(prompt=format_prompt(p.question), max_new_tokens=64,
                          temperature=0.0 if i % 3 else 0.8, calculator=i % 4 != 1, seed=i)
            for i, p in enumerate(problems)]
    batch = decode_batch(model, tokenizer, rows)
    alone = [decode_batch(model, tokenizer, [r])[0] for r in rows[:12]]
    assert [a.text for a in alone] == [b.text for b in batch[:12]]
    assert [a.calculator_overrides for a in alone] == [b.calculator_overrides for b in batch[:12]]
    overridden = [i for i, b in enumerate(batch) if b.calculator_overrides]
    assert overridden, "the trained tiny model should write at least one <<expr= annotation"
    for i, out in enumerate(batch):
        if not rows[i].calculator:
            assert out.calculator_overrides == []
        for o in out.calculator_overrides:
            forced = f"<<{o['expr']}={o['result']}>>"
            # the forced result sits in this row's text (unless the row hit its token limit mid-force)
            assert forced in out.text or (out.finish_reason == "length" and f"<<{o['expr']}=" in out.text)


def test_solve_answers_over_http_with_model_version(serving):
    _, url = serving
    r = httpx.post(f"{url}/v1/solve", json={"question": "Ava has 12 pens. She buys 5 more. How many pens?"},
                   timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"answer", "rationale", "votes", "model_version"}
    r = httpx.post(f"{url}/v1/solve", json={"question": "Ava has 12 pens. She buys 5 more. How many?",
                                             "strategy": "majority", "n": 5, "temperature": 0.7}, timeout=60)
    assert r.status_code == 200 and 1 <= r.json()["votes"] <= 5 or r.json()["answer"] is None
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


@pytest.mark.parametrize("body", [
    {"question": ""}, {"question": "   "}, {"question": "x" * 5000}, {"question": 12},
    {"question": "ok", "n": 0}, {"question": "ok", "strategy": "majority", "n": 10_000},
    {"question": "ok", "strategy": "beam"}, {"question": "ok", "temperature": "hot"}, {"question": ["a"]},
    {"nope": 1}, [], "just a string", None,
])
def test_bad_solve_input_gets_4xx_json_and_service_stays_up(serving, body):
    _, url = serving
    r = httpx.post(f"{url}/v1/solve", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json()
    assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00garbage", b"", b'{"question": "a"' * 1000])
def test_non_json_body_gets_4xx(serving, raw):
    _, url = serving
    r = httpx.post(f"{url}/v1/solve", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_openai_client_completions_work_unchanged(serving):
    import openai

    _, url = serving
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert models.data and models.data[0].id
    out = client.completions.create(model=models.data[0].id, prompt=format_prompt("Bo has 3 cats. How many?"),
                                    max_tokens=16, temperature=0)
    assert out.choices and isinstance(out.choices[0].text, str) and out.choices[0].text
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="x", prompt="", max_tokens=5)


def test_three_hot_swaps_under_concurrent_http_load_fail_no_request(serving, sft_result, base_checkpoint,
                                                                     other_base_checkpoint):
    """The load test of the suite: enough concurrent requests that swaps happen while they are in flight.
    Throughput and latency under swaps at volume are measured by benchmarks/swap_load.py, not here."""
    _, url = serving
    versions = ["v1", "v2", "v3", "v4"]
    checkpoints = [sft_result.checkpoint, base_checkpoint, other_base_checkpoint, sft_result.checkpoint]
    swap("solver", "v1", str(checkpoints[0]))

    async def load() -> tuple[list[int], list[str]]:
        statuses, seen = [], []
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with sem:
                    r = await client.post(f"{url}/v1/solve", json={"question": f"Mo has {i} hats. He buys 2."})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        seen.append(r.json()["model_version"])

            tasks = [asyncio.create_task(one(i)) for i in range(240)]
            for version, checkpoint in zip(versions[1:], checkpoints[1:]):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(swap, "solver", version, str(checkpoint))
            await asyncio.gather(*tasks)
        return statuses, seen

    statuses, seen = asyncio.run(load())
    assert len(statuses) == 240 and all(s == 200 for s in statuses), sorted(set(statuses))
    assert set(seen) <= set(versions) and len(set(seen)) >= 2  # answered across at least one swap
    after = [httpx.post(f"{url}/v1/solve", json={"question": "One more?"}, timeout=60).json()["model_version"]
             for _ in range(5)]
    assert after == ["v4"] * 5


def test_corrupt_checkpoint_is_refused_and_old_model_keeps_serving(serving, sft_result, tmp_path):
    _, url = serving
    swap("solver", "good", str(sft_result.checkpoint))
    broken = tmp_path / "broken"
    shutil.copytree(sft_result.checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # half-written
    with pytest.raises(CheckpointError):
        swap("solver", "broken", str(broken), timeout_s=60)
    assert pool_status("solver")["version"] == "good"
    r = httpx.post(f"{url}/v1/solve", json={"question": "Still there?"}, timeout=60)
    assert r.status_code == 200 and r.json()["model_version"] == "good"
    with pytest.raises(CheckpointError):
        swap("solver", "empty", str(tmp_path))  # no config.json: refused before any replica sees it


def test_scaling_one_pool_leaves_the_other_alone_and_new_replicas_serve_current_version(serving, sft_result):
    config, url = serving
    swap("rollout", "r2", str(sft_result.checkpoint))
    scale("solver", 2, config)
    status = serve.status().applications
    assert status["solver"].deployments["Sampler"].replica_states.get("RUNNING") == 2
    assert status["rollout"].deployments["Sampler"].replica_states.get("RUNNING") == 1
    from services.pools import wait_for_version

    wait_for_version("solver", pool_status("solver")["version"], timeout_s=60)
    # a replaced replica's last heartbeat stays in the registry until it expires (HEARTBEAT_TTL_S)
    deadline = time.monotonic() + HEARTBEAT_TTL_S + 10
    while len(pool_status("solver")["replicas"]) != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    live = pool_status("solver")
    assert len(live["replicas"]) == 2 and {r["version"] for r in live["replicas"].values()} == {live["version"]}
    rows = [DecodeRequest(prompt=format_prompt(f"q{i}"), max_new_tokens=8, seed=i) for i in range(50)]
    decoded, versions = decode_on_pool(rows, pool="rollout", chunk_rows=10)
    assert len(decoded) == 50 and set(versions) == {"r2"}
    scale("solver", 1, config)
