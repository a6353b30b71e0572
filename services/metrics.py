"""The serving metrics dpost adds to Ray Serve's own, through `ray.util.metrics`.

Every Ray node's metrics agent serves them, with Serve's and Ray's, in Prometheus text format on the node's
metrics export port (`ray.nodes()[i]["MetricsExportPort"]`, fixed with `ray start --metrics-export-port`).
Ray prefixes each name with `ray_`, and a counter is exported with a `_total` suffix, e.g.
`ray_dpost_answers_total{endpoint="solve",strategy="majority"}`.

The metrics are made on first use, inside the replica that records them (a metric belongs to the Ray worker
that created it).
"""

from __future__ import annotations

import functools

from ray.util.metrics import Counter, Histogram

# Seconds; the tiny CPU models answer in well under a second, a 300-token rationale on a busy replica in tens.
LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


@functools.cache
def answers() -> Counter:
    return Counter("dpost_answers", "Requests the solver answered, by endpoint (solve, completions, chat) and "
                   "strategy (greedy, majority, sample).", tag_keys=("endpoint", "strategy"))


@functools.cache
def latency() -> Histogram:
    return Histogram("dpost_request_latency_s", "Seconds from a request's arrival to its last byte of answer, "
                     "by endpoint and whether it streamed.", boundaries=LATENCY_BOUNDARIES_S,
                     tag_keys=("endpoint", "stream"))


@functools.cache
def first_text() -> Histogram:
    return Histogram("dpost_stream_first_text_s", "Seconds from a streaming request's arrival to its first "
                     "piece of generated text, by endpoint.", boundaries=LATENCY_BOUNDARIES_S,
                     tag_keys=("endpoint",))


@functools.cache
def calculator_overrides() -> Counter:
    return Counter("dpost_calculator_overrides", "Calculator results forced into generated text, by sampler "
                   "pool.", tag_keys=("pool",))


@functools.cache
def model_swaps() -> Counter:
    return Counter("dpost_model_swaps", "Times a sampler replica changed the model version it serves "
                   "(its first load is not counted), by pool.", tag_keys=("pool",))


def record_answer(endpoint: str, strategy: str, seconds: float, stream: bool = False) -> None:
    answers().inc(tags={"endpoint": endpoint, "strategy": strategy})
    latency().observe(seconds, tags={"endpoint": endpoint, "stream": "true" if stream else "false"})
