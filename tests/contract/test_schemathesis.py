"""Schemathesis against the real app, in-process (tests/contract/harness.py says how).

All phases — examples, coverage, fuzzing, and stateful over the spec's OpenAPI `links` —
with every default check (not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance, response_headers_conformance,
negative_data_rejection, positive_data_acceptance, missing_required_header, ignored_auth,
unsupported_method, use_after_free, ensure_resource_availability, …), positive and
negative data; the app also validates each of its responses (validate_responses=True).
"""

from __future__ import annotations

import schemathesis

from generated.routing import OPERATIONS
from hangar.dispatch import HangarApp

from .coverage import COVERAGE
from .harness import load

# Fuzzing cases per operation; the examples, coverage and stateful phases add their own.
MAX_EXAMPLES = 50
MIN_TOTAL_CASES = 1000
# Default checks that must have run (a config change that silently dropped one would fail here).
EXPECTED_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
}

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261128,  # reproducible; change it to explore other inputs
        # No example database: each run starts from the seed alone (and writes no .hypothesis/).
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"stateful": {"max-steps": 8}},
        "operations": [
            {
                # `expires_at` must be in the future (the spec says so and documents the 422);
                # JSON Schema cannot state it, so a schema-valid past date is rightly refused.
                "include-operation-id": "createApiKey",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
                    }
                },
            }
        ],
    }
)


def test_app_conforms_to_its_spec(contract_app: HangarApp) -> None:
    harness = load(contract_app, CONFIG)
    result = harness.run()
    identity = harness.identity
    COVERAGE.schemathesis_run(result.cases_per_operation, result.summary())

    assert not result.errors, "\n\n".join(result.errors)
    assert not result.failure_report(), "\n\n".join(result.failure_report())
    assert not identity.unexpected_401, "\n".join(identity.unexpected_401)
    assert result.statistic.errored_cases == 0
    assert result.stop_reason == "completed"
    assert set(result.checks_run) >= EXPECTED_CHECKS, sorted(EXPECTED_CHECKS - set(result.checks_run))
    # Every testing phase ran and passed (a skipped one, e.g. stateful without links, would
    # otherwise go unnoticed).
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert result.phase_status.get(phase) == "success", result.phase_status
    assert result.linked_cases > 0, "no stateful step followed a link"
    assert set(result.cases_per_operation) == set(OPERATIONS)
    assert result.total_cases >= MIN_TOTAL_CASES, result.summary()
