"""Fuzzing the server from its own OpenAPI schema with schemathesis' generators: whatever the body, no 5xx, and the
server stays up. (Driven through hypothesis directly: schemathesis' pytest plugin does not load with our pytest.)"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serve_fixture import serving


@pytest.fixture(scope="module")
def fuzz_server(converted):
    # a short per-request limit: a generated request may ask for many tokens; the fuzz is about input handling
    with serving(converted("f16", "f16").model.path.parent, "--parallel", "2", "--ctx-size", "512",
                 "--timeout", "3") as url:
        yield url


def test_no_server_errors(fuzz_server) -> None:
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/api/chat", "/api/generate", "/v1/responses",
                                              "/v1/responses/{response_id}", "/v1/messages",
                                              "/v1/messages/count_tokens"}
    statuses: Counter[int] = Counter()
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            if isinstance(case.body, dict) and "model" in case.body:  # else nearly every case stops at "unknown model"
                case.body["model"] = "intern-s1"
            response = case.call_and_validate(checks=[not_a_server_error], timeout=30)
            statuses[response.status_code] += 1

        fuzz()
        assert httpx.get(fuzz_server + "/health", timeout=10).status_code == 200, operation.path
    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0 and sum(n for code, n in statuses.items() if 400 <= code < 500) > 0
