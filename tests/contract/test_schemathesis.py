"""Schemathesis against the real app, in-process (tests/contract/harness.py says how).

All phases — examples, coverage, fuzzing, and stateful over the spec's OpenAPI `links` —
with every default check (not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance, response_headers_conformance,
negative_data_rejection, positive_data_acceptance, missing_required_header, ignored_auth,
unsupported_method, use_after_free, ensure_resource_availability, …), positive and
negative data; the app also validates each of its responses (validate_responses=True).

Then the stateful phase once more per compute context (provisioning, inventory), over that
context's operations alone, to be sure every link out of a launch and out of a host
registration is followed (test_links_are_followed says why).

Cases: about 3,400 in the full run (MAX_EXAMPLES fuzzing cases per operation, plus the
examples, coverage and stateful phases) and about 400 in each stateful-only run.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis

from generated.routing import OPERATIONS
from hangar.dispatch import HangarApp

from .coverage import COVERAGE
from .harness import Harness, RunResult, load

SEED = 20261128  # reproducible; change it to explore other inputs
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

# Statuses the spec documents for schema-valid requests that break a rule JSON Schema cannot
# state, so a schema-valid request is rightly refused with a 422 (the default accepts 409).
ALSO_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
OPERATION_CONFIG: list[dict[str, Any]] = [
    {
        # createApiKey: `expires_at` must be in the future.
        # createInstance: the region, type and image must exist, the type be offered in the
        #   region and the image suit it (the catalogue says which; 422 otherwise).
        # createHost: the region must exist and the zone be one of its zones; an inventory's
        #   reserved ≤ total, min_unit ≤ max_unit, …, each resource class once.
        # updateHostInventory: the same inventory rules, on the merged inventory.
        # payments: createTopUp / createPaymentMethod: a generated card number is
        #   refused (Luhn, not a test card: 422), and so is a top-up naming neither or both of
        #   `card` and `payment_method`; receiveSandboxWebhook: a (signed) generated event names
        #   no real top-up (422 webhook-event-rejected) or one not yet confirmed (409).
        "include-operation-id": [
            "createApiKey",
            "createInstance",
            "createHost",
            "updateHostInventory",
            "createTopUp",
            "createPaymentMethod",
            "receiveSandboxWebhook",
        ],
        "checks": {"positive_data_acceptance": {"expected-statuses": ALSO_422}},
    },
    {
        # Terminating is asynchronous (202 and a `terminate` action), and a terminated instance
        # stays readable, with its actions, by design ("terminated ones included: they stay
        # listed so their history can be read"). A 200 for it after the DELETE is the
        # contract, not a use after free.
        "include-operation-id": ["getInstance", "listInstanceActions", "createInstanceAction"],
        "checks": {"use_after_free": {"enabled": False}},
    },
]

# storage:
# - createVolume: a snapshot_id must name an available snapshot of the caller's in the region,
#   no larger than size_gib; createVolumeAction: attach needs instance_id, resize size_gib (422).
# - A deleted volume (its delete is a 202 and a `delete` action) and a deleted snapshot stay
#   readable, with their actions, like terminated instances: not a use after free.
OPERATION_CONFIG += [
    {
        "include-operation-id": ["createVolume", "createVolumeAction"],
        "checks": {"positive_data_acceptance": {"expected-statuses": ALSO_422}},
    },
    {
        "include-operation-id": [
            "getVolume",
            "listVolumeActions",
            "createVolumeAction",
            "createSnapshot",
            "deleteVolume",
            "getSnapshot",
            "deleteSnapshot",
        ],
        "checks": {"use_after_free": {"enabled": False}},
    },
]

# billing: ledger: listUsage — `to` after `from`, at most 93 days apart (422
# invalid-range / range-too-long); JSON Schema cannot relate two parameters.
OPERATION_CONFIG += [
    {
        "include-operation-id": ["listUsage"],
        "checks": {"positive_data_acceptance": {"expected-statuses": ALSO_422}},
    },
]


def _config(phases: dict[str, Any]) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # No example database: each run starts from the seed alone (and writes no .hypothesis/).
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": phases,
            "operations": OPERATION_CONFIG,
        }
    )


CONFIG = _config({"stateful": {"max-steps": 8}})
# The stateful phase alone, for test_links_are_followed.
STATEFUL_CONFIG = _config(
    {
        "examples": {"enabled": False},
        "coverage": {"enabled": False},
        "fuzzing": {"enabled": False},
        "stateful": {"max-steps": 8},
    }
)

COMPUTE = sorted(op_id for op_id, op in OPERATIONS.items() if op.context in ("inventory", "provisioning"))
# Where each compute context's links lead: createInstance → getInstance, getAction,
# listInstanceActions, createInstanceAction, terminateInstance (and acting or terminating →
# getAction); createHost → getHost, drainHost, updateHostInventory.
LINKED = {
    "provisioning": {"getInstance", "getAction", "listInstanceActions", "createInstanceAction", "terminateInstance"},
    "inventory": {"getHost", "drainHost", "updateHostInventory"},
}
# storage: createVolume → getVolume, getVolumeAction, listVolumeActions,
# createVolumeAction, createSnapshot, deleteVolume; createSnapshot → getSnapshot, deleteSnapshot.
LINKED["storage"] = {
    "getVolume",
    "getVolumeAction",
    "listVolumeActions",
    "createVolumeAction",
    "createSnapshot",
    "deleteVolume",
    "getSnapshot",
    "deleteSnapshot",
}


def _assert_clean(harness: Harness, result: RunResult, phases: tuple[str, ...]) -> None:
    """No failure, error or unexpected 401; the run completed and each phase passed."""
    assert not result.errors, "\n\n".join(result.errors)
    assert not result.failure_report(), "\n\n".join(result.failure_report())
    assert not harness.identity.unexpected_401, "\n".join(harness.identity.unexpected_401)
    assert result.statistic.errored_cases == 0
    assert result.stop_reason == "completed"
    # Every testing phase ran and passed (a skipped one, e.g. stateful without links, would
    # otherwise go unnoticed).
    for phase in phases:
        assert result.phase_status.get(phase) == "success", result.phase_status


def test_app_conforms_to_its_spec(contract_app: HangarApp) -> None:
    harness = load(contract_app, CONFIG)
    result = harness.run()
    COVERAGE.schemathesis_run(result.cases_per_operation, result.summary())

    _assert_clean(harness, result, ("examples", "coverage", "fuzzing", "stateful"))
    assert set(result.checks_run) >= EXPECTED_CHECKS, sorted(EXPECTED_CHECKS - set(result.checks_run))
    assert result.linked_cases > 0, "no stateful step followed a link"
    assert set(result.cases_per_operation) == set(OPERATIONS)
    assert result.total_cases >= MIN_TOTAL_CASES, result.summary()
    # Each compute operation answered 2xx (the run is an operator, so the admin operations
    # succeed too), and launches were accepted (and, on the sim driver, ran).
    # Operations on a launched instance, its actions or a registered host get a real id only
    # through a link, and which links the run draws moves with timing (a link out of a create
    # that answered 422 carries no id): test_links_are_followed checks every link is followed,
    # and the SDK round trip and the security matrix's control test prove each one succeeds.
    never = sorted(set(COMPUTE) - set(result.successes_per_operation) - set().union(*LINKED.values()))
    assert not never, f"never answered 2xx: {never}; 2xx per operation: {dict(result.successes_per_operation)}"
    assert harness.launched, "no launch was accepted"


@pytest.mark.parametrize("context", sorted(LINKED))
def test_links_are_followed(contract_app: HangarApp, context: str) -> None:
    """The stateful phase again, over one compute context's operations alone. In the full
    run their links compete with every other operation's for a few dozen scenarios, and which
    are drawn moves with the server's timing (schemathesis weighs operations by latency and
    outcome); here every link out of a launch, and out of a host registration, is followed."""
    operation_ids = sorted(op_id for op_id, op in OPERATIONS.items() if op.context == context)
    harness = load(contract_app, STATEFUL_CONFIG, operation_ids)
    result = harness.run()
    COVERAGE.schemathesis_run(result.cases_per_operation, result.summary())

    _assert_clean(harness, result, ("stateful",))
    assert set(result.cases_per_operation) <= set(operation_ids)
    missing = sorted(LINKED[context] - set(result.linked_per_operation))
    assert not missing, f"no stateful step reached {missing} through a link: {dict(result.linked_per_operation)}"
