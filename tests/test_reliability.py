"""Faults, load and hostile input on a real local Ray cluster: nothing lost, nothing duplicated, no 5xx."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.config import PoolConfig, ServingConfig
from services.pools import deploy_pool, decode_on_pool, scale, swap
from trainers.engine.decoding import DecodeRequest
from trainers.core.prompting import format_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def solver(serve_port, sft_result):
    config = ServingConfig(port=serve_port, max_new_tokens=32, solver=PoolConfig(max_batch_size=32))
    deploy_pool("solver", config, "rel-1", str(sft_result.checkpoint))
    deploy_pool("rollout", config, "rel-r1", str(sft_result.checkpoint))
    return config, f"http://127.0.0.1:{serve_port}"


def _replica_pids(pool: str) -> list[int]:
    """Replicas of THIS session's cluster only (descendants of this process), never another cluster's."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if f"ServeReplica:{pool}:Sampler" in " ".join(p.cmdline() or [])]


@pytest.mark.ray
def test_killed_rollout_replica_mid_sampling_loses_and_duplicates_no_sample(solver):
    config, _ = solver
    scale("rollout", 2, config)
    rows = [DecodeRequest(prompt=format_prompt(f"Bo has {i} pens and buys {i % 7} more. How many?"),
                          temperature=0.7, max_new_tokens=24, seed=1000 + i) for i in range(400)]
    clean, _ = decode_on_pool(rows, chunk_rows=20)
    first_chunk = threading.Event()
    box: dict = {}

    def run() -> None:
        box["out"] = decode_on_pool(rows, chunk_rows=20, on_chunk=lambda *a: first_chunk.set())

    thread = threading.Thread(target=run)
    thread.start()
    assert first_chunk.wait(120)
    victims = _replica_pids("rollout")
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    thread.join(300)
    decoded, _ = box["out"]
    assert len(decoded) == len(rows)  # every planned row came back exactly once, in order
    assert [d.text for d in decoded] == [d.text for d in clean]  # retried rows reproduce their seeded samples
    scale("rollout", 1, config)


def test_killed_writer_leaves_the_old_file_or_the_new_one_never_half(tmp_path):
    target = tmp_path / "stage.jsonl"
    writer = (
        "import sys, itertools\n"
        "from trainers.core.files import atomic_write_text\n"
        "for i in itertools.count():\n"
        "    atomic_write_text(sys.argv[1], (str(i % 10) * 1000 + '\\n') * 20000)\n"
    )
    for delay in (0.05, 0.2, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=ROOT)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            lines = target.read_text().splitlines()
            assert len(lines) == 20000 and len(set(lines)) == 1 and len(lines[0]) == 1000


async def _blast(url: str, n: int, concurrency: int, body_for) -> list[dict]:
    """n POST /v1/solve at most `concurrency` at a time; each response's status, headers and body."""
    bodies: list[dict] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=180, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post(f"{url}/v1/solve", json=body_for(i))
                # Serve's own backpressure 503 is plain text; everything from our app is JSON
                is_json = r.headers.get("content-type", "").startswith("application/json")
                bodies.append({"status": r.status_code, "headers": dict(r.headers),
                               "json": r.json() if is_json else None, "text": r.text[:200]})
        await asyncio.gather(*(one(i) for i in range(n)))
    return bodies


@pytest.mark.ray
def test_saturated_solver_answers_503_with_retry_after_instead_of_hanging(solver, sft_result):
    config, url = solver
    tight = ServingConfig(port=config.port, max_new_tokens=64, retry_after_s=2,
                          solver=PoolConfig(max_ongoing_requests=2, max_queued_requests=2, max_batch_size=2))
    deploy_pool("solver", tight, "rel-tight", str(sft_result.checkpoint))
    try:
        bodies = asyncio.run(_blast(url, 60, 60, lambda i: {"question": f"Q{i}?"}))
        statuses = [b["status"] for b in bodies]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        rejected = [b for b in bodies if b["status"] == 503]
        assert all(b["headers"].get("retry-after") == "2" for b in rejected)
    finally:
        deploy_pool("solver", config, "rel-1", str(sft_result.checkpoint))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
solve_bodies = st.fixed_dictionaries({}, optional={
    "question": st.text(max_size=300) | st.integers() | st.none()
    | st.sampled_from(["<<__import__('os').system('id')=", "x" * 50_000, "<<9**9**9=", "\ud800"]),
    "strategy": st.sampled_from(["greedy", "majority", "beam", ""]) | st.integers(),
    "n": st.integers(-5, 100) | st.floats() | st.text(max_size=3),
    "temperature": st.floats(allow_nan=True) | st.integers(-3, 5) | st.text(max_size=3),
}) | json_values


@pytest.mark.ray
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=solve_bodies)
def test_hostile_json_never_gets_a_5xx(solver, body):
    _, url = solver
    r = httpx.post(f"{url}/v1/solve", content=json.dumps(body, allow_nan=True), timeout=120,
                   headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    assert "error" in r.json() or r.status_code == 200


@pytest.mark.ray
@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b"{" * 10_000 + b"}" * 10_000, b"[" * 100_000,
                                 b'{"question": "' + b"9" * 2_000_000 + b'"}'])
def test_invalid_utf8_deep_nesting_and_huge_bodies_get_4xx(solver, raw):
    _, url = solver
    r = httpx.post(f"{url}/v1/solve", content=raw, headers={"content-type": "application/json"}, timeout=60)
    assert 400 <= r.status_code < 500, r.text[:300]


def test_calculator_injection_in_generated_text_runs_no_code(base_checkpoint, tmp_path, monkeypatch):
    """A row whose generated text ends in a hostile `<<expr=` is refused by the calculator: nothing is
    forced into the row and nothing is executed."""
    import builtins

    from transformers import AutoTokenizer

    from trainers.engine.decoding import RowCalculator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: pytest.fail("exec called"))
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    for hostile in ["<<__import__('os').system('touch pwned')=", "<<9**9**9=", "<<open('/etc/passwd').read()=",
                    "<<().__class__.__bases__[0]=", "<<" + "(" * 3000 + "1" + ")" * 3000 + "=", "<<1e308*1e308="]:
        calc = RowCalculator(tokenizer)
        calc.observe(tokenizer.encode("Answer: " + hostile, add_special_tokens=False))
        assert calc.overrides == [] and calc.forced_token() is None
        assert not (tmp_path / "pwned").exists()
    calc = RowCalculator(tokenizer)
    calc.observe(tokenizer.encode("Answer: <<12+30=", add_special_tokens=False))
    assert calc.overrides == [{"expr": "12+30", "result": "42"}]  # the same path does fire on arithmetic
    forced = []
    while (token := calc.forced_token()) is not None:
        forced.append(token)
    assert tokenizer.decode(forced) == "42>>"
