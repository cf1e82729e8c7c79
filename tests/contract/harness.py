"""Run schemathesis' engine — what `schemathesis run` runs — against the app in-process.

Why the engine rather than `@schema.parametrize()`: the engine runs every phase (examples,
coverage, fuzzing, then stateful over the spec's links) with every default check, exactly
as the CLI does, and reports each case; and schemathesis' lazy pytest fixture does not
work with pytest 9.2 (it writes `Node._nodeid`, which pytest 9.2 no longer has).

Two things a real client does that schemathesis cannot know from the schema, applied to
*valid* generated values only (invalid ones are sent as generated, and must be rejected):
- an `Idempotency-Key` names one logical request: a client never reuses one for another
  body (the server answers that with a 422, as the spec says), so each positive key is
  made unique;
- a `cursor` is valid only if the server issued it: positive cases keep a cursor only if
  it came from a `next_cursor` the server returned (the stateful links pass real ones).

And one thing the run must not do silently: lose its own identity. The stateful phase may
revoke the key it is authenticating with, or demote or remove its own membership — all
legitimate API use. When that succeeds, the next case signs up a fresh organization.
A 401 for a key the run still believes valid is recorded as a failure of its own.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic
from starlette.testclient import TestClient

from .support import Tenant, sign_up


def _operation_id(case: schemathesis.Case) -> str:
    return str(case.operation.definition.raw["operationId"])


class Identity:
    """Who the generated requests authenticate as: a freshly signed-up owner."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self.tenant: Tenant | None = None
        self.signups = 0
        self.unexpected_401: list[str] = []

    def token(self) -> str:
        if self.tenant is None:
            # No `with`: entering would run (and, on exit, end) the app's lifespan again.
            self.tenant = sign_up(TestClient(self._app, base_url="http://testserver"), "Schemathesis")
            self.signups += 1
        return self.tenant.token

    def observe(self, case: schemathesis.Case, status: int) -> None:
        """After each call: did it end this identity, or reject it while it was valid?"""
        tenant = self.tenant
        if tenant is None:
            return
        sent = case.headers.get("Authorization")
        carried_ours = sent == f"Bearer {tenant.token}"
        op_id = _operation_id(case)
        target = {k: str(v) for k, v in (case.path_parameters or {}).items()}
        if carried_ours and status == 401:
            self.unexpected_401.append(f"{op_id} {case.method} {case.formatted_path} -> 401 with a valid key")
        if not 200 <= status < 300:
            return
        if (op_id == "revokeApiKey" and target.get("apiKeyId") == tenant.api_key_id) or (
            op_id in ("removeMember", "updateMember") and target.get("memberId") == tenant.member_id
        ):
            self.tenant = None  # the next case signs up again


@dataclass
class RunResult:
    statistic: Statistic
    cases_per_operation: Counter[str] = field(default_factory=Counter)
    cases_per_phase: Counter[str] = field(default_factory=Counter)
    checks_run: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    phase_status: dict[str, str] = field(default_factory=dict)
    transitions: int = 0
    # Stateful steps whose inputs came from an earlier response through a link.
    linked_cases: int = 0
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0

    @property
    def total_cases(self) -> int:
        return self.statistic.total_cases

    def failure_report(self) -> list[str]:
        lines = []
        for label, grouped in sorted(self.statistic.failures.items()):
            for group in grouped.values():
                response = group.response
                got = f"{response.status_code} {response.text[:500]}" if response is not None else "no response"
                for failure in group.failures:
                    lines.append(f"{label}: {failure.title}\n  {failure.message}\n  {group.code_sample}\n  -> {got}")
        return lines

    def summary(self) -> str:
        phases = ", ".join(f"{name} {count}" for name, count in sorted(self.cases_per_phase.items()))
        return (
            f"schemathesis: {self.total_cases} cases ({phases}), {self.statistic.total_failures} failures, "
            f"{len(self.errors)} errors; {len(self.checks_run)} checks, {sum(self.checks_run.values())} verdicts; "
            f"{self.transitions} links, {self.linked_cases} linked steps; {self.seconds:.1f} s, stop: {self.stop_reason}"
        )


@dataclass
class Harness:
    schema: Any
    identity: Identity
    issued_cursors: set[str] = field(default_factory=set)

    def act_like_a_client(self, context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
        """before_call: the two client habits from the module docstring, for valid values only."""
        meta = case.meta
        headers_valid = meta is None or not meta.is_negative_at(ParameterLocation.HEADER)
        if headers_valid and "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = f"st-{uuid.uuid4()}"
        query_valid = meta is None or not meta.is_negative_at(ParameterLocation.QUERY)
        if query_valid and case.query and case.query.get("cursor") not in self.issued_cursors:
            case.query.pop("cursor", None)

    def watch(self, context: Any, case: schemathesis.Case, response: Any) -> None:
        """after_call: keep the identity alive and remember the cursors the server issued."""
        self.identity.observe(case, response.status_code)
        if response.status_code != 200:
            return
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, dict) and isinstance(body.get("next_cursor"), str):
            self.issued_cursors.add(body["next_cursor"])

    def run(self) -> RunResult:
        # `before_call` exists only as a process-wide hook: registered for this run only.
        def before_call(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
            self.act_like_a_client(context, case, kwargs)

        hook = schemathesis.hook("before_call")(before_call)
        try:
            return _execute(self.schema)
        finally:
            schemathesis.hooks.unregister(hook)


def load(app: Any, config: schemathesis.Config) -> Harness:
    """The schema as the app serves it (/v1/openapi.json), with auth and the hooks above."""
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app, config=config)
    harness = Harness(schema=schema, identity=Identity(app))
    identity = harness.identity

    # refresh_interval=None: no caching layer; `Identity` decides when to sign up again.
    @schema.auth(refresh_interval=None)
    class FreshSignupKey:
        def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
            return identity.token()

        def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
            case.headers["Authorization"] = f"Bearer {data}"

    @schema.hook("after_call")
    def after_call(context: Any, case: schemathesis.Case, response: Any) -> None:
        harness.watch(context, case, response)

    return harness


def _execute(schema: Any) -> RunResult:
    result = RunResult(statistic=Statistic())
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            result.statistic.on_scenario_finished(event.recorder)
            for node in event.recorder.cases.values():
                result.cases_per_operation[_operation_id(node.value)] += 1
                result.cases_per_phase[event.phase.value] += 1
                if event.phase.value == "stateful" and node.transition is not None:
                    result.linked_cases += 1
            for checks in event.recorder.checks.values():
                result.checks_run.update(check.name for check in checks)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    result.statuses[interaction.response.status_code] += 1
        elif isinstance(event, events.PhaseStarted) and event.payload is not None:
            result.transitions = event.payload.transitions_selected
        elif isinstance(event, events.PhaseFinished):
            result.phase_status[event.phase.name.value] = event.status.value
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            result.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            result.stop_reason = event.stop_reason.value
            result.seconds = event.running_time
            result.errors.extend(f"after run: {failure.title}: {failure.message}" for failure in event.failures)
    return result
