"""The waiter and verb extensions at generation time: `x-waiter` (SDK waiters, `hangar <tag>
wait`), `x-cli.wait` (`--wait`) and `x-cli.verbs` (one command per enum value), on the small
fixture spec in fixtures/waiters/ — what they generate, and the generation error each bad
value is, naming the operation.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import cli, sdk

FIXTURE = Path(__file__).parent / "fixtures" / "waiters" / "spec.yaml"


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(FIXTURE.read_text(encoding="utf-8"))


SPEC = load_spec()


def op(spec: dict[str, Any], op_id: str) -> dict[str, Any]:
    for item in spec["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and operation.get("operationId") == op_id:
                return operation
    raise KeyError(op_id)


def schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][name]


def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    change(spec)
    return spec


# --- what the extensions generate ------------------------------------------------------------


def test_waiters_are_read_and_named_after_the_operation() -> None:
    job, machine = sdk.waiters(SPEC)
    assert (job.operation_id, job.function, job.noun, job.model) == ("getJob", "wait_for_job", "job", "Job")
    assert (job.targets, job.failure, job.progress, job.error) == (("done",), ("failed",), "progress", "error")
    assert job.target_arg is None, "a single target needs no keyword"
    assert (machine.function, machine.targets, machine.target_arg) == ("wait_for_machine", ("on", "off"), "state")


def test_commands_for_waits_and_verbs() -> None:
    commands = {c.words: c for c in cli.build_commands(SPEC)}
    assert sorted(" ".join(w) for w in commands) == [
        "jobs get", "jobs wait", "machines create", "machines get", "machines power-off", "machines power-on",
        "machines wait",
    ]  # fmt: skip
    wait = commands[("machines", "wait")]
    assert (wait.kind, wait.waits_for, wait.operation_id) == ("wait", "getMachine", "getMachine")
    state = {f.name: f for f in wait.flags}["state"]
    assert (state.option, state.choices, state.required, state.default) == ("--state", ("on", "off"), True, None)
    job_state = {f.name: f for f in commands[("jobs", "wait")].flags}["status"]
    assert (job_state.required, job_state.default) == (False, "done"), "one target: the default"

    power_on = commands[("machines", "power-on")]
    assert power_on.verb == ("kind", "power-on") and power_on.summary == "Power on a machine"
    assert [f.option for f in power_on.flags] == ["--machine-id", "--note"], "the verb's field is no flag"
    assert power_on.body_option, "another body field (note) keeps --body"
    assert (power_on.waits_for, power_on.wait_parameters) == ("getJob", (("jobId", "/id"),))
    create = commands[("machines", "create")]
    assert (create.waits_for, create.wait_parameters) == ("getJob", (("jobId", "/job/id"),))
    assert commands[("machines", "get")].waits_for is None


def test_a_verb_that_is_the_whole_body_drops_body() -> None:
    spec = broken(lambda s: schema(s, "JobRequest")["properties"].pop("note"))
    power_off = {c.words: c for c in cli.build_commands(spec)}[("machines", "power-off")]
    assert not power_off.body_option and "example body" not in power_off.epilog


def test_command_map_lists_every_command_of_an_operation() -> None:
    assert cli.command_map(cli.build_commands(SPEC)) == {
        "createMachine": "hangar machines create",
        "createMachineJob": "hangar machines power-off, hangar machines power-on",
        "getJob": "hangar jobs get, hangar jobs wait",
        "getMachine": "hangar machines get, hangar machines wait",
    }


def test_the_real_spec_gets_instance_verbs_waits_and_wait_flags() -> None:
    spec = json.loads((Path(__file__).resolve().parents[2] / "generated" / "openapi.json").read_text())
    mapping = cli.command_map(cli.build_commands(spec))
    assert mapping["createInstanceAction"] == "hangar instances reboot, hangar instances start, hangar instances stop"
    assert mapping["getAction"] == "hangar actions get, hangar actions wait"
    assert mapping["getInstance"] == "hangar instances get, hangar instances wait"
    waiting = {c.line for c in cli.build_commands(spec) if c.kind == "call" and c.waits_for == "getAction"}
    assert waiting == {
        "hangar instances create", "hangar instances reboot", "hangar instances start", "hangar instances stop",
        "hangar instances terminate",
    }  # fmt: skip
    # Other contexts add waiters of their own (payments: wait_for_top_up; storage: volumes…).
    assert {"wait_for_action", "wait_for_instance", "wait_for_top_up"} <= {w.function for w in sdk.waiters(spec)}


def test_epilogs_explain_waiting_and_verbs() -> None:
    commands = {c.words: c for c in cli.build_commands(SPEC)}
    epilog = commands[("machines", "power-on")].epilog
    assert "hangar machines power-on 7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6 --wait" in epilog
    assert 'Sends createMachineJob with kind "power-on".' in epilog and '"kind"' not in epilog.split("Sends")[0]
    assert "--wait: after the call, poll getJob (GET /v1/jobs/{jobId})" in epilog
    wait = commands[("machines", "wait")].epilog
    assert "hangar machines wait 7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6 --state on" in wait
    assert "Polls getMachine" in wait and "state is broken" in wait


# --- generation errors -------------------------------------------------------------------------


def _set_waiter(op_id: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        waiter = op(spec, op_id)["x-waiter"]
        for key, value in changes.items():
            if value is None:
                waiter.pop(key)
            else:
                waiter[key] = value

    return change


def _move_waiter_to_post(spec: dict[str, Any]) -> None:
    op(spec, "createMachine")["x-waiter"] = op(spec, "getJob").pop("x-waiter")


def _integer_state(spec: dict[str, Any]) -> None:
    schema(spec, "Machine")["properties"]["name"] = {"type": "string"}
    op(spec, "getMachine")["x-waiter"]["field"] = "name"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_waiter("getJob", field="colour"), "getJob: x-waiter field `colour` is not a property of Job"),
        (_set_waiter("getMachine", field="name"), "getMachine: x-waiter field `name` of Machine is not an enum"),
        (_set_waiter("getJob", targets=["finished"]), "getJob: x-waiter `targets` has finished, not among"),
        (_set_waiter("getJob", targets=[]), "getJob: x-waiter `targets` is empty"),
        (_set_waiter("getJob", failure=["exploded"]), "getJob: x-waiter `failure` has exploded"),
        (_set_waiter("getJob", failure=["done"]), "getJob: x-waiter done is both a target and a failure"),
        (_set_waiter("getJob", wait_param="id"), "getJob: x-waiter wait_param `id` is not a path parameter"),
        (_set_waiter("getJob", progress="status"), "getJob: x-waiter progress `status` is not an integer"),
        (_set_waiter("getJob", error="status"), "getJob: x-waiter error `status` is not a property of Job with"),
        (_set_waiter("getJob", busy="status"), "getJob: x-waiter busy `status` is not a boolean property of Job"),
        (_set_waiter("getJob", field=None), "getJob: x-waiter lacks field"),
        (_set_waiter("getJob", colour="red"), "getJob: x-waiter has unknown key(s) colour"),
        (_move_waiter_to_post, "createMachine: x-waiter belongs on a GET operation named get<Thing>"),
    ],
)
def test_a_bad_x_waiter_fails_both_stages_naming_the_operation(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    spec = broken(change)
    with pytest.raises(sdk.WaiterSpecError) as caught:
        sdk.waiters(spec)
    assert str(caught.value).startswith(message), caught.value
    with pytest.raises(sdk.WaiterSpecError):
        cli.build_commands(spec)


def test_a_waiter_field_clashing_with_a_waiter_keyword_fails() -> None:
    def change(spec: dict[str, Any]) -> None:
        schema(spec, "Machine")["properties"]["timeout"] = {"type": "string", "enum": ["a", "b"]}
        _set_waiter("getMachine", field="timeout", targets=["a", "b"], failure=[])(spec)

    with pytest.raises(sdk.WaiterSpecError, match=r"getMachine: .* the keyword `timeout`"):
        sdk.waiters(broken(change))


def _set_wait(op_id: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        op(spec, op_id)["x-cli"]["wait"] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set_wait(
                "createMachine", {"operationId": "getNothing", "parameters": {"jobId": "$response.body#/job/id"}}
            ),
            "createMachine: x-cli.wait names getNothing, which is not an operation with an x-waiter",
        ),
        (
            _set_wait(
                "createMachine",
                {"operationId": "getMachine", "parameters": {"machineId": "$response.body#/machine/id"}},
            ),
            "createMachine: x-cli.wait names getMachine, whose x-waiter has several targets",
        ),
        (
            _set_wait("createMachine", {"operationId": "getJob", "parameters": {"jobId": "$request.path.machineId"}}),
            "createMachine: x-cli.wait parameter jobId: '$request.path.machineId' is not a `$response.body#/",
        ),
        (
            _set_wait("createMachine", {"operationId": "getJob", "parameters": {"jobId": "$response.body#/job/uuid"}}),
            "createMachine: x-cli.wait parameter jobId: $response.body#/job/uuid is not a scalar of the response",
        ),
        (
            _set_wait("createMachine", {"operationId": "getJob", "parameters": {"jobId": "$response.body#/job"}}),
            "createMachine: x-cli.wait parameter jobId: $response.body#/job is not a scalar",
        ),
        (
            _set_wait("createMachineJob", {"operationId": "getJob", "parameters": {"id": "$response.body#/id"}}),
            "createMachineJob: x-cli.wait parameters must give exactly getJob's jobId",
        ),
        (_set_wait("createMachine", "getJob"), "createMachine: x-cli.wait must be {operationId"),
    ],
)
def test_a_bad_x_cli_wait_fails_naming_the_operation(change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(cli.CliSpecError) as caught:
        cli.build_commands(broken(change))
    assert str(caught.value).startswith(message), caught.value


def _set_verb_enum(values: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        schema(spec, "JobRequest")["properties"]["kind"]["enum"] = values

    return change


def _body_flag_named(name: str) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        schema(spec, "MachineCreate")["properties"][name] = {"type": "string"}

    return change


def _command_named_wait(spec: dict[str, Any]) -> None:
    op(spec, "createMachine")["x-cli"]["command"] = "wait"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: op(s, "createMachineJob")["x-cli"].__setitem__("verbs", {"field": "colour"}),
            "createMachineJob: x-cli.verbs field `colour` is not in the request body",
        ),
        (
            lambda s: op(s, "createMachineJob")["x-cli"].__setitem__("verbs", {"field": "note"}),
            "createMachineJob: x-cli.verbs field `note` is not a string enum",
        ),
        (
            lambda s: op(s, "createMachineJob")["x-cli"].__setitem__("verbs", "kind"),
            "createMachineJob: x-cli.verbs must be {field: <request body field>}",
        ),
        (
            lambda s: op(s, "getMachine").setdefault("x-cli", {}).__setitem__("verbs", {"field": "kind"}),
            "getMachine: x-cli.verbs needs a JSON request body",
        ),
        (_set_verb_enum(["power-on", "Power_On"]), "createMachineJob: x-cli.verbs values"),
        (
            _set_verb_enum(["power-on", "create"]),
            "createMachineJob (verb create) and createMachine are both `hangar machines create`",
        ),
        (
            _set_verb_enum(["get", "power-on"]),
            "createMachineJob (verb get) and getMachine are both `hangar machines get`",
        ),
        (
            _set_verb_enum(["wait"]),
            "createMachineJob (verb wait) and getMachine (x-waiter) are both `hangar machines wait`",
        ),
        (_command_named_wait, "getMachine (x-waiter) and createMachine are both `hangar machines wait`"),
        (_body_flag_named("timeout"), "createMachine: flags collide: --timeout"),
        (_body_flag_named("wait"), "createMachine: flags collide: --wait"),
    ],
)
def test_bad_verbs_and_name_clashes_fail_naming_the_operation(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(cli.CliSpecError) as caught:
        cli.build_commands(broken(change))
    assert str(caught.value).startswith(message), caught.value


# --- the generated code ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fixture-sdk")
    spec_path = base / "openapi.json"
    spec_path.write_text(json.dumps(SPEC), encoding="utf-8")
    sdk.render_sdk(spec_path, base / "sdk")
    return base / "sdk"


def _functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_the_sdk_gets_a_sync_and_an_async_waiter_per_x_waiter(fixture_sdk: Path) -> None:
    package = fixture_sdk / "hangar_client"
    functions = _functions(package / "waiters.py")
    assert {"wait_for_job", "wait_for_job_async", "wait_for_machine", "wait_for_machine_async"} <= set(functions)
    assert isinstance(functions["wait_for_job_async"], ast.AsyncFunctionDef)
    machine = functions["wait_for_machine"].args
    assert [a.arg for a in machine.args] == ["client", "machine_id"]
    assert [a.arg for a in machine.kwonlyargs] == ["state", "timeout", "interval", "max_interval", "on_update"]
    assert ast.literal_eval(machine.kw_defaults[0]) == "on"  # type: ignore[arg-type]
    assert "state" not in [a.arg for a in functions["wait_for_job"].args.kwonlyargs]
    init = (package / "__init__.py").read_text()
    for name in ("wait_for_job", "wait_for_machine_async", "WaitFailed", "WaitTimeout"):
        assert f'"{name}"' in init
    readme = (fixture_sdk / "README.md").read_text()
    assert "## Waiters" in readme and '`wait_for_machine(client, machine_id, *, state="on"' in readme


def test_the_fixture_waiter_runs(fixture_sdk: Path) -> None:
    """The generated module imports and waits (in a subprocess: the package is hangar_client too)."""
    script = """
import httpx
from hangar_client import AuthenticatedClient, RetryPolicy, WaitFailed, wait_for_machine
answers = iter(["pending", "pending", "off", "broken"])
def handler(request):
    return httpx.Response(200, json={"id": "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6", "name": "m", "state": next(answers)})
sleeps = []
client = AuthenticatedClient(base_url="http://x", token="t", httpx_args={"transport": httpx.MockTransport(handler)},
                             retry=RetryPolicy(sleep=sleeps.append))
seen = []
machine = wait_for_machine(client, "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6", state="off", on_update=seen.append)
assert machine.state == "off" and len(seen) == 2 and sleeps == [1.0, 1.25], (seen, sleeps)
try:
    wait_for_machine(client, "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6")
except WaitFailed as failed:
    print("failed:", failed.value)
"""
    env = {**os.environ, "PYTHONPATH": str(fixture_sdk)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "failed: broken"
