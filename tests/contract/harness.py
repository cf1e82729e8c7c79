"""Run schemathesis' engine — what `schemathesis run` runs — against the app in-process.

Why the engine rather than `@schema.parametrize()`: the engine runs every phase (examples,
coverage, fuzzing, then stateful over the spec's links) with every default check, exactly
as the CLI does, and reports each case; and schemathesis' lazy pytest fixture does not
work with pytest 9.2 (it writes `Node._nodeid`, which pytest 9.2 no longer has).

What a real client does that schemathesis cannot know from the schema, applied to *valid*
generated values only (invalid ones are sent as generated, and must be rejected):
- an `Idempotency-Key` names one logical request: a client never reuses one for another
  body (the server answers that with a 422, as the spec says), so each positive key is
  made unique;
- a `cursor` is valid only if the server issued it: positive cases keep a cursor only if
  it came from a `next_cursor` the server returned (the stateful links pass real ones);
- a launch names what the public catalogue offers: most positive createInstance bodies get
  a (region, instance type, image) the catalogue lists as launchable together; the rest keep
  their generated slugs, which the server refuses with the documented 422;
- an operator registers a host under a name nobody has taken, in a region and one of its
  zones: most positive createHost bodies get a fresh name and a real region and zone (the
  rest keep the generated ones); the generated inventories are kept as they are;
- the sandbox provider signs its webhooks: positive receiveSandboxWebhook cases carry a
  valid `Hangar-Signature` over the bytes sent (payments);
- one action at a time per instance: before stopping, starting, rebooting or terminating
  an instance it launched, a client waits until the action in flight has finished (the
  CLI's `--wait`), so the stateful create → act → terminate sequences do what they say
  rather than all meeting 409 `resource-locked`.
The choices are made from a hash of the generated value, so a run replays from its seed.

And one thing the run must not do silently: lose its own identity. The run authenticates
as the owner of an operator organization (created out of band, as `hangar-admin
create-operator` does), so the admin operations are exercised positively too. The stateful
phase may revoke the key it is authenticating with, or demote or remove its own membership —
all legitimate API use. When that succeeds, the next case authenticates as a fresh
operator. A 401 for a key the run still believes valid is recorded as a failure of its own.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic
from starlette.testclient import TestClient

from hangar.dispatch import HangarApp

from .support import Tenant, bearer, operator

ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
# How long a client waits for an instance's action in flight before acting anyway (and
# meeting the documented 409 resource-locked).
ACTION_WAIT_SECONDS = 10.0
# Of every four positive launches / host registrations, how many get catalogue values.
FIXED_OF_FOUR = 3


def _operation_id(case: schemathesis.Case) -> str:
    return str(case.operation.definition.raw["operationId"])


def _client(app: HangarApp) -> TestClient:
    # No `with`: entering would run (and, on exit, end) the app's lifespan again.
    return TestClient(app, base_url="http://testserver")


class WithoutLifespan:
    """The app for schemathesis: every request goes to the app, the lifespan does not.

    Schemathesis starts an ASGI app's lifespan on its first request and ends it only at
    interpreter exit; the contract stage already runs the app's one lifespan (conftest's
    `served`), and a second would start a second relay and saga runner, alive past the
    session and its database."""

    def __init__(self, app: HangarApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIMessage, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class Identity:
    """Who the generated requests authenticate as: a fresh operator organization's owner."""

    def __init__(self, app: HangarApp) -> None:
        self._app = app
        self.tenant: Tenant | None = None
        self.identities = 0
        self.unexpected_401: list[str] = []

    def token(self) -> str:
        if self.tenant is None:
            self.tenant = operator(_client(self._app), self._app.runtime.sessions, "Schemathesis Operations")
            self.identities += 1
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
            self.tenant = None  # the next case authenticates as a fresh operator


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
    linked_per_operation: Counter[str] = field(default_factory=Counter)
    # Cases answered 2xx, per operationId: the operation was exercised positively.
    successes_per_operation: Counter[str] = field(default_factory=Counter)
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


def _pick(value: Any, options: list[Any]) -> Any | None:
    """One of `options` for most values (FIXED_OF_FOUR in four), None for the rest; chosen by
    a stable hash of the value, so a run replays from its seed."""
    digest = zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode())
    if not options or digest % 4 >= FIXED_OF_FOUR:
        return None
    return options[(digest // 4) % len(options)]


@dataclass(frozen=True)
class Catalogue:
    """What a client reads from the public catalogue before launching or registering."""

    # (region, instance type, image) launchable together: offered there, image suitable.
    launches: list[tuple[str, str, str]]
    # (region, zone)
    zones: list[tuple[str, str]]

    @classmethod
    def read(cls, client: TestClient) -> Catalogue:
        def every(path: str) -> list[dict[str, Any]]:
            response = client.get(path, params={"limit": 200})
            assert response.status_code == 200, response.text
            assert response.json()["next_cursor"] is None, f"{path}: more than one page"
            data: list[dict[str, Any]] = response.json()["data"]
            return data

        images = [i for i in every("/v1/images") if i["status"] == "active"]
        launches = [
            (offer["region"], kind["slug"], image["slug"])
            for kind in every("/v1/instance-types")
            for offer in kind["availability"]
            for image in images
            if image["min_disk_gb"] <= kind["disk_gb"] and (image["gpu_ready"] or not kind["gpus"])
        ]
        zones = [(region["slug"], zone) for region in every("/v1/regions") for zone in region["zones"]]
        assert launches and zones, "the catalogue offers nothing to launch or no zone to register a host in"
        return cls(launches=sorted(launches), zones=sorted(zones))


@dataclass
class Harness:
    schema: Any
    identity: Identity
    app: HangarApp
    catalogue: Catalogue
    issued_cursors: set[str] = field(default_factory=set)
    # Instances this run launched: id → the key that launched it (to poll it with).
    launched: dict[str, str] = field(default_factory=dict)
    # Polls while an action was in flight, and the time spent waiting.
    waited_for_actions: int = 0
    seconds_waited: float = 0.0

    def act_like_a_client(self, context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
        """before_call: the client habits from the module docstring, for valid values only."""
        meta = case.meta
        headers_valid = meta is None or not meta.is_negative_at(ParameterLocation.HEADER)
        if headers_valid and "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = f"st-{uuid.uuid4()}"
        query_valid = meta is None or not meta.is_negative_at(ParameterLocation.QUERY)
        if query_valid and case.query and case.query.get("cursor") not in self.issued_cursors:
            case.query.pop("cursor", None)
        body_valid = meta is None or not meta.is_negative_at(ParameterLocation.BODY)
        op_id = _operation_id(case)
        body: Any = case.body
        if body_valid and isinstance(body, dict):
            if op_id == "createInstance":
                self._launch_from_catalogue(body)
            elif op_id == "createHost":
                self._register_in_a_zone(body)
            elif op_id == "receiveSandboxWebhook" and headers_valid:
                self._sign_like_the_provider(case)
        path_valid = meta is None or not meta.is_negative_at(ParameterLocation.PATH)
        if path_valid and op_id in ("createInstanceAction", "terminateInstance"):
            self._wait_for_the_action_in_flight(str((case.path_parameters or {}).get("instanceId")))

    def _sign_like_the_provider(self, case: schemathesis.Case) -> None:
        """payments: the sandbox provider signs what it sends (its one credential).
        The signature is over the bytes the transport will send: `requests` encodes `json=`
        with json.dumps' defaults. The generated event names no real top-up, so the server
        answers the documented 422 `webhook-event-rejected` — after the signature check."""
        from handlers.payments import signing
        from tests.conftest import PAYMENTS_WEBHOOK_SECRET

        raw = json.dumps(case.body, allow_nan=False).encode()
        case.headers["Hangar-Signature"] = signing.sign(raw, PAYMENTS_WEBHOOK_SECRET, int(time.time()))

    def _launch_from_catalogue(self, body: dict[str, Any]) -> None:
        picked = _pick(body, self.catalogue.launches)
        if picked is not None:
            body["region"], body["instance_type"], body["image"] = picked

    def _register_in_a_zone(self, body: dict[str, Any]) -> None:
        picked = _pick(body, self.catalogue.zones)
        if picked is None:
            return
        body["region"], body["zone"] = picked
        # A fresh name within the pattern and 64 characters: the generated one, made unique.
        name = str(body.get("name") or "h")
        body["name"] = f"{name[:47]}-{uuid.uuid4().hex[:16]}"

    def _wait_for_the_action_in_flight(self, instance_id: str) -> None:
        token = self.launched.get(instance_id)
        if token is None:
            return  # not ours (or not an instance at all): sent as generated
        client = _client(self.app)
        started = time.monotonic()
        deadline = started + ACTION_WAIT_SECONDS
        try:
            self._poll_until_unlocked(client, instance_id, token, deadline)
        finally:
            self.seconds_waited += time.monotonic() - started

    def _poll_until_unlocked(self, client: TestClient, instance_id: str, token: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            response = client.get(f"/v1/instances/{instance_id}", headers=bearer(token))
            if response.status_code != 200 or not response.json()["locked"]:
                return
            self.waited_for_actions += 1
            time.sleep(0.02)

    def watch(self, context: Any, case: schemathesis.Case, response: Any) -> None:
        """after_call: keep the identity alive; remember the cursors the server issued and
        the instances launched."""
        self.identity.observe(case, response.status_code)
        if response.status_code not in (200, 202):
            return
        try:
            body = response.json()
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if isinstance(body.get("next_cursor"), str):
            self.issued_cursors.add(body["next_cursor"])
        if _operation_id(case) == "createInstance" and response.status_code == 202:
            sent = case.headers.get("Authorization", "")
            self.launched[body["instance"]["id"]] = sent.removeprefix("Bearer ")

    def run(self) -> RunResult:
        # `before_call` exists only as a process-wide hook: registered for this run only.
        def before_call(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
            self.act_like_a_client(context, case, kwargs)

        hook = schemathesis.hook("before_call")(before_call)
        try:
            return _execute(self.schema)
        finally:
            schemathesis.hooks.unregister(hook)


HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _only(spec: dict[str, Any], operation_ids: set[str]) -> dict[str, Any]:
    """The spec with just these operations (and the paths that still have one). Unlike
    `schema.include(...)`, which only the examples, coverage and fuzzing phases honour, this
    also narrows the stateful phase's rules and links."""
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        kept = {
            key: value
            for key, value in item.items()
            if key not in HTTP_METHODS or value.get("operationId") in operation_ids
        }
        if any(key in HTTP_METHODS for key in kept):
            paths[path] = kept
    return {**spec, "paths": paths}


def load(app: HangarApp, config: schemathesis.Config, operation_ids: list[str] | None = None) -> Harness:
    """The schema as the app serves it (/v1/openapi.json) — only `operation_ids`, if given —
    with auth and the hooks above."""
    served = WithoutLifespan(app)
    if operation_ids is None:
        schema = schemathesis.openapi.from_asgi("/v1/openapi.json", served, config=config)
    else:
        response = _client(app).get("/v1/openapi.json")
        assert response.status_code == 200, response.text
        schema = schemathesis.openapi.from_dict(_only(response.json(), set(operation_ids)), config=config)
        schema.app, schema.location = served, "/v1/openapi.json"
    harness = Harness(schema=schema, identity=Identity(app), app=app, catalogue=Catalogue.read(_client(app)))
    identity = harness.identity

    # refresh_interval=None: no caching layer; `Identity` decides when to authenticate anew.
    @schema.auth(refresh_interval=None)
    class OperatorKey:
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
            cases = event.recorder.cases
            for node in cases.values():
                result.cases_per_operation[_operation_id(node.value)] += 1
                result.cases_per_phase[event.phase.value] += 1
                if event.phase.value == "stateful" and node.transition is not None:
                    result.linked_cases += 1
                    result.linked_per_operation[_operation_id(node.value)] += 1
            for checks in event.recorder.checks.values():
                result.checks_run.update(check.name for check in checks)
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    result.statuses[interaction.response.status_code] += 1
                    if 200 <= interaction.response.status_code < 300 and case_id in cases:
                        result.successes_per_operation[_operation_id(cases[case_id].value)] += 1
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
