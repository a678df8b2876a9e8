"""Fuzzing the server from its own OpenAPI schema with schemathesis' generators: whatever the body, no 5xx, and the
server stays up. (Driven through hypothesis directly: schemathesis' pytest plugin does not load with our pytest.)

Budget: generated cases per route that takes a body, by what a case costs (EXAMPLES; x INTERNS1_FUZZ_SCALE); the
routes without inputs have a single case. A generated request may ask for many tokens, and decoding is not what this
test is about: the server's per-request limit is its shortest (1 s), so no case costs more than that.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serve_fixture import serving

# the three chat/generate routes usually decode until the limit (~1 s a case); completions mostly fail validation
EXAMPLES = {"/v1/chat/completions": 50, "/api/chat": 50, "/api/generate": 50, "/v1/completions": 100,
            "/api/show": 200}
SCALE = float(os.environ.get("INTERNS1_FUZZ_SCALE", "1"))


@pytest.fixture(scope="module")
def fuzz_server(converted):
    with serving(converted("f16", "f16").model.path.parent, "--parallel", "2", "--ctx-size", "512",
                 "--timeout", "1") as url:
        yield url


def test_no_server_errors(fuzz_server) -> None:
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/api/chat", "/api/generate", "/v1/responses",
                                              "/v1/responses/{response_id}", "/v1/messages",
                                              "/v1/messages/count_tokens"}
    statuses: Counter[int] = Counter()
    per_route: dict[str, Counter[int]] = {}
    for operation in operations:
        seen = per_route.setdefault(operation.path, Counter())
        started = time.monotonic()

        @given(case=operation.as_strategy())
        @settings(max_examples=int(EXAMPLES.get(operation.path, 10) * SCALE), deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            if isinstance(case.body, dict) and "model" in case.body:  # else nearly every case stops at "unknown model"
                case.body["model"] = "intern-s1"
            response = case.call_and_validate(checks=[not_a_server_error], timeout=30)
            statuses[response.status_code] += 1
            seen[response.status_code] += 1

        fuzz()
        assert httpx.get(fuzz_server + "/health", timeout=10).status_code == 200, operation.path
        print(f"fuzz {operation.method.upper()} {operation.path}: {sum(seen.values())} cases in "
              f"{time.monotonic() - started:.1f} s, statuses {dict(sorted(seen.items()))}")
    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0 and sum(n for code, n in statuses.items() if 400 <= code < 500) > 0
    short = {path: sum(per_route[path].values()) for path, budget in EXAMPLES.items()
             if sum(per_route[path].values()) < budget * SCALE // 2}
    assert not short, short  # hypothesis stops early only when a route's inputs run out
