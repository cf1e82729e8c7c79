"""The SDK and CLI stages: determinism, headers, command naming and coverage, help text, and
the behaviour the SDK's templates add (idempotency keys, retries, pagination).

Rendering is in-process (about a second for both); the SDK behaviour tests run the installed
`hangar_client` (generated/sdk, installed editable by `make install`) against an
httpx.MockTransport — no server, no real sleeping.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import cli, sdk
from pipeline.stages import HEADER

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "generated" / "openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def operation_ids(spec: dict[str, Any]) -> set[str]:
    return {
        op["operationId"]
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }


@pytest.fixture(scope="module")
def sdk_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sdk")
    for name in ("a", "b"):
        sdk.render_sdk(SPEC_PATH, base / name)
    return base / "a", base / "b"


@pytest.fixture(scope="module")
def cli_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    for name in ("a", "b"):
        cli.render_cli(copy.deepcopy(SPEC), base / name)
    return base / "a", base / "b"


# --- determinism and headers ------------------------------------------------------------------


def test_sdk_generation_is_byte_identical(sdk_trees: tuple[Path, Path]) -> None:
    first, second = files(sdk_trees[0]), files(sdk_trees[1])
    assert first == second
    assert "hangar_client/retry.py" in first and "hangar_client/pagination.py" in first


def test_cli_generation_is_byte_identical(cli_trees: tuple[Path, Path]) -> None:
    assert files(cli_trees[0]) == files(cli_trees[1])


def test_every_generated_file_is_headed(sdk_trees: tuple[Path, Path], cli_trees: tuple[Path, Path]) -> None:
    for tree in (sdk_trees[0], cli_trees[0]):
        for rel, data in files(tree).items():
            if rel.endswith(".json"):  # JSON has no comments; commands.json is a plain map
                continue
            first_line = data.decode("utf-8").splitlines()[0]
            assert HEADER in first_line, f"{tree.name}/{rel} starts with {first_line!r}"


def test_generated_python_compiles(sdk_trees: tuple[Path, Path], cli_trees: tuple[Path, Path]) -> None:
    for tree in (sdk_trees[0], cli_trees[0]):
        for path in tree.rglob("*.py"):
            compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_sync_tree_rewrites_only_changes_and_keeps_egg_info(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "a.py").write_text("a\n")
    (dest / "pkg" / "old").mkdir(parents=True)
    (dest / "pkg" / "old" / "stale.py").write_text("stale\n")
    (dest / "x.egg-info").mkdir()
    (dest / "x.egg-info" / "PKG-INFO").write_text("keep\n")
    sdk.sync_tree(source, dest)
    assert (dest / "pkg" / "a.py").read_text() == "a\n"
    assert not (dest / "pkg" / "old").exists()
    assert (dest / "x.egg-info" / "PKG-INFO").exists()


# --- the command map ----------------------------------------------------------------------------


def test_command_map_covers_every_operation(cli_trees: tuple[Path, Path]) -> None:
    mapping = json.loads((cli_trees[0] / "hangar_cli" / "commands.json").read_text())
    assert set(mapping) == operation_ids(SPEC)
    assert list(mapping) == sorted(mapping)
    assert len(set(mapping.values())) == len(mapping), "two operations share a command"
    assert mapping["listApiKeys"] == "hangar api-keys list"
    assert mapping["signUp"] == "hangar signup"
    assert mapping["getMe"] == "hangar me"
    assert mapping["acceptInvitation"] == "hangar accept-invitation"


def test_committed_command_map_matches_the_spec() -> None:
    committed = ROOT / "generated" / "cli" / "hangar_cli" / "commands.json"
    assert json.loads(committed.read_text()) == cli.command_map(cli.build_commands(SPEC))


def _sdk_function_args(tree: Path, module: str) -> set[str]:
    path = tree / Path(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{module} is not in the generated SDK"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == "sync_detailed":
            return {a.arg for a in [*node.args.args, *node.args.kwonlyargs]}
    raise AssertionError(f"{module} has no sync_detailed")


def test_every_command_calls_an_sdk_function_that_exists(sdk_trees: tuple[Path, Path]) -> None:
    models_init = (sdk_trees[0] / "hangar_client" / "models" / "__init__.py").read_text()
    for command in cli.build_commands(SPEC):
        args = _sdk_function_args(sdk_trees[0], command.sdk_module)
        for flag in command.flags:
            if flag.sdk_arg is not None:
                assert flag.sdk_arg in args, f"{command.operation_id}: SDK lacks {flag.sdk_arg}"
        if command.body_class:
            assert "body" in args
            assert f'"{command.body_class}"' in models_init


# --- naming rules, on a small spec --------------------------------------------------------------


def _op(op_id: str, tag: str, **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "tags": [tag], "responses": {"204": {"description": "ok"}}, **extra}


def small_spec(**paths: dict[str, Any]) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "T", "version": "1"}, "paths": paths, "components": {"schemas": {}}}


def test_command_names_follow_tags_x_cli_and_operation_ids() -> None:
    spec = small_spec(
        **{
            "/v1/widgets": {
                "get": _op("listWidgets", "widgets"),
                "post": _op("createWidget", "widgets", **{"x-cli": {"command": "make"}}),
            },
            "/v1/widgets/{id}/spin": {"post": _op("spinWidgetFast", "widgets")},
            "/v1/ping": {"get": _op("ping", "health")},
            "/v1/join": {"post": _op("joinClub", "clubs", **{"x-cli": {"command": "join-club"}})},
        }
    )
    words = {c.operation_id: c.words for c in cli.build_commands(spec)}
    assert words == {
        "listWidgets": ("widgets", "list"),
        "createWidget": ("widgets", "make"),
        "spinWidgetFast": ("widgets", "spin-fast"),
        "ping": ("health",),  # the only operation of its tag: top-level, named after the tag
        "joinClub": ("join-club",),  # … or by its x-cli command
    }


def test_colliding_command_names_fail_generation() -> None:
    spec = small_spec(
        **{
            "/v1/a": {"get": _op("listWidgets", "widgets")},
            "/v1/b": {"get": _op("listAllWidgets", "widgets", **{"x-cli": {"command": "list"}})},
        }
    )
    with pytest.raises(cli.CliSpecError, match="both `hangar widgets list`"):
        cli.build_commands(spec)


def test_flags_from_parameters_and_body() -> None:
    commands = {c.operation_id: c for c in cli.build_commands(SPEC)}
    create = {f.name: f for f in commands["createApiKey"].flags}
    assert create["scopes"].option == "--scope" and create["scopes"].repeated
    assert "instances:read" in create["scopes"].choices
    assert create["Idempotency-Key"].option == "--idempotency-key"
    assert commands["createApiKey"].body_required == ("name", "scopes")
    members = {f.name: f for f in commands["listMembers"].flags}
    assert members["organizationId"].config_default == "organization_id"
    assert not members["organizationId"].required
    assert commands["listMembers"].paginated and not commands["getMe"].paginated
    get_key = {f.name: f for f in commands["getApiKey"].flags}
    assert get_key["apiKeyId"].required and get_key["apiKeyId"].kind == "uuid"
    signup = {f.name: f for f in commands["signUp"].flags}
    assert signup["password"].secret
    assert commands["signUp"].public and dict(commands["signUp"].saves)["api_key"] == "secret"


def test_a_flag_may_not_shadow_a_global_option() -> None:
    spec = small_spec(
        **{
            "/v1/x": {
                "get": _op("getX", "x", parameters=[{"name": "output", "in": "query", "schema": {"type": "string"}}])
            }
        }
    )
    with pytest.raises(cli.CliSpecError, match="--output"):
        cli.build_commands(spec)


def test_unknown_x_cli_column_fails_generation() -> None:
    spec = copy.deepcopy(SPEC)
    spec["paths"]["/v1/me"]["get"]["x-cli"]["columns"].append("user.shoe_size")
    with pytest.raises(cli.CliSpecError, match="shoe_size"):
        cli.build_commands(spec)


@pytest.mark.parametrize(
    ("name", "expected"), [("scopes", "scope"), ("policies", "policy"), ("addresses", "address"), ("class", "class")]
)
def test_singular(name: str, expected: str) -> None:
    assert cli.singular(name) == expected


# --- help text ----------------------------------------------------------------------------------


def test_help_shows_an_example_body_and_command(cli_trees: tuple[Path, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(cli_trees[0])}
    done = subprocess.run(
        [sys.executable, "-m", "hangar_cli", "api-keys", "create", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "example body" in out
    body = out.split("example body", 1)[1].split("\n", 1)[1]
    example = json.loads(body[: body.index("\n  }") + 4])
    assert example["name"] == "ci" and example["scopes"] == ["instances:read"]
    assert "hangar api-keys create --name ci --scope instances:read" in out
    assert "--idempotency-key" in out


# --- SDK behaviour: idempotency keys, retries, pagination ----------------------------------------

# These import the installed `hangar_client` (generated/sdk, installed editable by `make install`).
ORG = "0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11"


def api_key(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n)),
        "organization_id": ORG,
        "user_id": ORG,
        "name": f"k{n}",
        "prefix": "hgr_abc",
        "scopes": ["instances:read"],
        "status": "active",
        "created_at": "2026-11-28T10:00:00Z",
    }


def client_for(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float], **policy: Any) -> Any:
    from hangar_client import AuthenticatedClient, RetryPolicy

    async def async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return AuthenticatedClient(
        base_url="http://hangar.test",
        token="hgr_test",
        httpx_args={"transport": httpx.MockTransport(handler)},
        retry=RetryPolicy(sleep=sleeps.append, async_sleep=async_sleep, **policy),
    )


def create_body() -> Any:
    from hangar_client.models import ApiKeyCreate, Scope

    return ApiKeyCreate(name="ci", scopes=[Scope.INSTANCESREAD])


def test_idempotent_create_reuses_one_key_across_retries() -> None:
    from hangar_client.api.api_keys import create_api_key

    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) < 3:
            return httpx.Response(503)
        return httpx.Response(201, json={"api_key": api_key(1), "secret": "hgr_abc_def"})

    sleeps: list[float] = []
    response = create_api_key.sync_detailed(client=client_for(handler, sleeps), body=create_body())
    assert response.status_code == 201
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0] is not None
    uuid.UUID(keys[0])
    assert len(sleeps) == 2
    # A second logical call gets a new key; a caller's own key is sent as given.
    create_api_key.sync_detailed(client=client_for(handler, sleeps), body=create_body())
    assert keys[-1] != keys[0]
    create_api_key.sync_detailed(client=client_for(handler, sleeps), body=create_body(), idempotency_key="mine-1")
    assert keys[-1] == "mine-1"


def test_async_calls_retry_with_the_same_key() -> None:
    from hangar_client.api.api_keys import create_api_key

    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(201, json={"api_key": api_key(1), "secret": "hgr_abc_def"})

    sleeps: list[float] = []
    response = asyncio.run(create_api_key.asyncio_detailed(client=client_for(handler, sleeps), body=create_body()))
    assert response.status_code == 201 and len(keys) == 2 and keys[0] == keys[1] and len(sleeps) == 1


def test_retry_after_is_honoured_and_a_long_one_returns_the_response() -> None:
    from hangar_client.api.me import get_me

    statuses = iter([429, 404])
    problem = {"type": "t", "title": "x", "status": 429, "detail": "d", "request_id": "r"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), headers={"Retry-After": "7"}, json=problem)

    sleeps: list[float] = []
    assert get_me.sync_detailed(client=client_for(handler, sleeps)).status_code == 404
    assert sleeps == [7.0]

    def slow(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3600"}, json=problem)

    sleeps.clear()
    assert get_me.sync_detailed(client=client_for(slow, sleeps)).status_code == 429
    assert sleeps == []


def test_a_non_replayable_call_is_retried_only_when_it_cannot_have_run() -> None:
    from hangar_client.api.organizations import update_organization
    from hangar_client.models import OrganizationUpdate

    calls: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503)

    sleeps: list[float] = []
    response = update_organization.sync_detailed(
        uuid.UUID(ORG), client=client_for(flaky, sleeps), body=OrganizationUpdate(name="Acme")
    )
    # The refused connection was retried; the 503 (the PATCH may have run) was not.
    assert response.status_code == 503 and calls == ["PATCH", "PATCH"] and len(sleeps) == 1


def test_retries_stop_after_max_attempts() -> None:
    from hangar_client.api.me import get_me

    calls: list[int] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        get_me.sync_detailed(client=client_for(down, [], max_attempts=4))
    assert len(calls) == 4


def paged(total: int) -> Callable[[httpx.Request], httpx.Response]:
    keys = [api_key(n) for n in range(1, total + 1)]

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        limit = int(request.url.params.get("limit", "50"))
        end = start + limit
        return httpx.Response(200, json={"data": keys[start:end], "next_cursor": str(end) if end < total else None})

    return handler


def test_sync_all_walks_every_page() -> None:
    from hangar_client import iterate
    from hangar_client.api.api_keys import list_api_keys

    client = client_for(paged(7), [])
    names = [k.name for k in list_api_keys.sync_all(client=client, limit=3)]
    assert names == [f"k{n}" for n in range(1, 8)]
    later = [k.name for k in iterate(list_api_keys.sync_detailed, client=client, limit=2, cursor="5")]
    assert later == ["k6", "k7"]


def test_asyncio_all_walks_every_page() -> None:
    from hangar_client.api.api_keys import list_api_keys

    async def collect() -> list[str]:
        client = client_for(paged(5), [])
        return [k.name async for k in list_api_keys.asyncio_all(client=client, limit=2)]

    assert asyncio.run(collect()) == ["k1", "k2", "k3", "k4", "k5"]


def test_a_failed_page_raises_api_error_with_the_problem() -> None:
    from hangar_client import ApiError
    from hangar_client.api.api_keys import list_api_keys

    def denied(request: httpx.Request) -> httpx.Response:
        problem = {"type": "t", "title": "Unauthorized", "status": 401, "detail": "bad key", "request_id": "req_1"}
        return httpx.Response(401, json=problem, headers={"Content-Type": "application/problem+json"})

    with pytest.raises(ApiError) as caught:
        list(list_api_keys.sync_all(client=client_for(denied, [])))
    assert caught.value.status_code == 401 and caught.value.request_id == "req_1"
