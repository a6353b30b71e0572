"""Schemathesis against the solver's own OpenAPI document, on the real running app over loopback: every
operation gets schema-valid and schema-violating requests; no answer may be a 5xx, and every answer must be
a status, content type and body the document declares. Bounded: a fixed number of examples per operation
and mode, with small generation limits, so the whole test takes about a minute on two cores."""

from __future__ import annotations

import collections
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)
from services.config import ServingConfig
from services.pools import deploy_pool

pytestmark = pytest.mark.ray

EXAMPLES = 60  # per operation and generation mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def solver_url(serve_port, sft_result) -> str:
    # small limits keep each generated request cheap; the schema does not know them, so it sees them as 422s
    deploy_pool("solver", ServingConfig(port=serve_port, max_new_tokens=12, max_n=4), "fuzz",
                str(sft_result.checkpoint))
    return f"http://127.0.0.1:{serve_port}"


def test_api_answers_every_generated_request_as_its_schema_says(solver_url):
    schema = schemathesis.openapi.from_url(f"{solver_url}/openapi.json", timeout=30)
    started = time.monotonic()
    examples: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/solve", "POST /v1/completions",
                                               "POST /v1/chat/completions", "GET /v1/models", "GET /healthz"}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def answer_conforms(case: schemathesis.Case) -> None:
                response = case.call(base_url=solver_url, timeout=60)
                examples[f"{operation.label} ({mode.value})"] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                answer_conforms()
            except Unsatisfiable:  # nothing in this operation can violate the schema (no parameters, no body)
                pass
    elapsed = time.monotonic() - started
    print(f"\nschemathesis {schemathesis.__version__}: {len(operations)} operations, {sum(examples.values())} "
          f"requests in {elapsed:.0f}s; statuses {dict(sorted(statuses.items()))}")
    for label, count in sorted(examples.items()):
        print(f"  {label}: {count}")
    assert not any(status >= 500 for status in statuses)
    assert statuses[200] and sum(c for s, c in statuses.items() if 400 <= s < 500)  # both kinds were exercised
