"""CLI journeys: the real `hangar` command against a live server (the `live_server` fixture of
tests/conftest.py: `hangar-server` on a free port with a database of its own; `.url`).

One signup per module (signup is rate-limited per client address); every test after it uses
the config file that signup wrote, so the journey also proves the config round-trips.
The server runs the `sim` host driver with short delays, so instance actions end in well
under a second (see `sim_environment`).
"""

from __future__ import annotations

import json
import stat
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import PASSWORD, Result, hangar, load_sim_fleet


@dataclass
class Account:
    config: Path
    url: str
    email: str
    signup: dict[str, Any]

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        # No HANGAR_URL: the URL comes from the config file signup wrote.
        return hangar(*args, config=self.config, env=env)

    def ok(self, *args: str) -> Any:
        result = self.run(*args, "--output", "json")
        assert result.code == 0, result
        return result.json() if result.out.strip() else None


@pytest.fixture(scope="module")
def sim_environment() -> Iterator[None]:
    """What the server reads when it starts (hangar/config.py): the simulated fleet, fast."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HANGAR_DRIVER", "sim")
        patch.setenv("HANGAR_SIM_DELAY_MS", "50")
        patch.setenv("HANGAR_SAGA_POLL_SECONDS", "0.05")
        yield


@pytest.fixture(scope="module")
def live_server(sim_environment: None, live_server: Any) -> Any:
    """tests/conftest.py's live server, started after (and so with) `sim_environment`."""
    return live_server


@pytest.fixture(scope="module")
def account(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Account:
    config = tmp_path_factory.mktemp("hangar-cli") / "config.toml"
    email = f"ada-{uuid.uuid4().hex[:10]}@example.com"
    result = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Acme", "--output", "json",
        config=config, url=live_server.url,
    )  # fmt: skip
    assert result.code == 0, result
    return Account(config, live_server.url, email, result.json())


# --- signup and the config file --------------------------------------------------------------------


def test_signup_prints_the_key_once_and_stores_it_0600(account: Account) -> None:
    secret = account.signup["secret"]
    assert secret.startswith("hgr_")
    assert stat.S_IMODE(account.config.stat().st_mode) == 0o600
    stored = tomllib.loads(account.config.read_text())
    assert stored == {"url": account.url, "api_key": secret, "organization_id": account.signup["organization"]["id"]}


def test_signup_in_table_mode_shows_the_secret_once(live_server: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    email = f"grace-{uuid.uuid4().hex[:10]}@example.com"
    result = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Navy", "--output", "table",
        config=config, url=live_server.url,
    )  # fmt: skip
    assert result.code == 0, result
    secret = tomllib.loads(config.read_text())["api_key"]
    assert result.out.count(secret) == 1
    assert email in result.out and "Navy" in result.out
    assert "shown only this once" in result.err and str(config) in result.err


def test_a_validation_error_prints_the_field_errors(live_server: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    result = hangar(
        "signup", "--email", "x@example.com", "--password", "short", "--organization", "Acme",
        config=config, url=live_server.url,
    )  # fmt: skip
    assert result.code == 1
    first, *details = result.err.splitlines()
    assert first.startswith("error: ") and "(400)" in first and "request_id" in first
    assert any("password" in line for line in details), result.err
    assert not config.exists(), "a failed signup must not write the config"


# --- me, output formats, no secrets -----------------------------------------------------------------


def test_me_in_json_and_in_a_table(account: Account) -> None:
    me = account.ok("me")
    assert me["user"]["email"] == account.email
    assert me["organization"]["id"] == account.signup["organization"]["id"]
    table = account.run("me", "--output", "table")
    assert table.code == 0
    assert "user.email" in table.out and account.email in table.out and "organization.name" in table.out


def test_output_defaults_to_json_off_a_terminal(account: Account) -> None:
    result = account.run("me")
    assert result.code == 0
    assert result.json()["role"] == "owner"


def test_reads_never_print_the_secret(account: Account) -> None:
    secret = account.signup["secret"]
    for args in (("me",), ("api-keys", "list"), ("me", "--output", "table"), ("api-keys", "list", "--output", "table")):
        result = account.run(*args)
        assert result.code == 0
        assert secret not in result.out + result.err


# --- api keys --------------------------------------------------------------------------------------


def test_api_key_lifecycle(account: Account) -> None:
    created = account.ok("api-keys", "create", "--name", "ci", "--scope", "instances:read", "--scope", "api-keys:read")
    key = created["api_key"]
    assert created["secret"].startswith("hgr_") and sorted(key["scopes"]) == ["api-keys:read", "instances:read"]
    listed = account.ok("api-keys", "list")
    assert key["id"] in {k["id"] for k in listed["data"]} and listed["next_cursor"] is None
    fetched = account.ok("api-keys", "get", key["id"])
    assert fetched["name"] == "ci" and "secret" not in fetched
    table = account.run("api-keys", "list", "--output", "table")
    assert table.code == 0 and key["id"] in table.out and "prefix" in table.out
    assert account.ok("api-keys", "revoke", key["id"]) is None
    assert account.ok("api-keys", "get", key["id"])["status"] == "revoked"
    # A revoked key no longer authenticates (given through the environment this time).
    with_key = account.run("api-keys", "list", env={"HANGAR_API_KEY": created["secret"]})
    assert with_key.code == 1 and "(401)" in with_key.err


def test_body_flags_and_body_json_merge(account: Account) -> None:
    body = json.dumps({"name": "from-body", "scopes": ["instances:read"]})
    created = account.ok("api-keys", "create", "--body", body, "--name", "from-flag")
    assert created["api_key"]["name"] == "from-flag" and created["api_key"]["scopes"] == ["instances:read"]


def test_an_idempotency_key_replays_the_first_response(account: Account) -> None:
    key = f"cli-test-{uuid.uuid4()}"
    args = ("api-keys", "create", "--name", "once", "--scope", "instances:read", "--idempotency-key", key)
    first, second = account.ok(*args), account.ok(*args)
    assert first["api_key"]["id"] == second["api_key"]["id"]


def test_list_follows_every_page_and_max_items_stops(account: Account) -> None:
    for n in range(3):
        account.ok("api-keys", "create", "--name", f"page-{n}", "--scope", "instances:read")
    everything = account.ok("api-keys", "list")
    assert len(everything["data"]) >= 4
    paged = account.ok("api-keys", "list", "--limit", "1")
    assert [k["id"] for k in paged["data"]] == [k["id"] for k in everything["data"]]
    first_two = account.ok("api-keys", "list", "--limit", "1", "--max-items", "2")
    assert len(first_two["data"]) == 2 and first_two["next_cursor"]
    rest = account.ok("api-keys", "list", "--cursor", first_two["next_cursor"])
    assert [k["id"] for k in first_two["data"] + rest["data"]] == [k["id"] for k in everything["data"]]


# --- members and organizations ------------------------------------------------------------------------


def test_member_lifecycle_uses_the_configured_organization(account: Account) -> None:
    email = f"bob-{uuid.uuid4().hex[:8]}@example.com"
    invitation = account.ok("members", "invite", "--email", email, "--role", "member")
    assert invitation["invitation_token"].startswith("hgi_") and invitation["invitation_expires_at"]
    invited = invitation["member"]
    assert invited["status"] == "invited" and invited["role"] == "member"
    assert email in {m["email"] for m in account.ok("members", "list")["data"]}
    assert account.ok("members", "get", invited["id"])["email"] == email
    assert account.ok("members", "update", invited["id"], "--role", "viewer")["role"] == "viewer"
    assert account.ok("members", "remove", invited["id"]) is None
    assert email not in {m["email"] for m in account.ok("members", "list")["data"]}


def test_an_invited_person_accepts_and_the_cli_keeps_their_key(account: Account, tmp_path: Path) -> None:
    email = f"grace-{uuid.uuid4().hex[:8]}@example.com"
    table = account.run("members", "invite", "--email", email, "--role", "viewer", "--output", "table")
    assert table.code == 0, table
    assert "invitation_token" in table.out and "hgi_" in table.out
    token = next(word for word in table.out.split() if word.startswith("hgi_"))

    theirs = tmp_path / "grace.toml"
    result = hangar(
        "accept-invitation", "--token", token, "--password", PASSWORD, "--name", "Grace", "--output", "json",
        config=theirs, url=account.url,
    )  # fmt: skip
    assert result.code == 0, result
    joined = result.json()
    assert joined["organization"]["id"] == account.signup["organization"]["id"]
    assert joined["user"]["email"] == email and joined["secret"].startswith("hgr_")
    assert "shown only this once" in result.err
    stored = tomllib.loads(theirs.read_text())
    assert stored == {"url": account.url, "api_key": joined["secret"], "organization_id": joined["organization"]["id"]}
    me = hangar("me", "--output", "json", config=theirs)
    assert me.code == 0, me
    assert me.json()["role"] == "viewer" and me.json()["user"]["email"] == email

    again = hangar(
        "accept-invitation", "--token", token, "--password", PASSWORD, config=tmp_path / "x.toml", url=account.url
    )
    assert again.code == 1 and "(404)" in again.err


def test_organization_id_comes_from_me_without_a_config(account: Account, tmp_path: Path) -> None:
    # A key in the environment and no config file: the organization is asked from GET /v1/me.
    result = hangar(
        "organizations", "get", "--output", "json", config=tmp_path / "none.toml", url=account.url,
        env={"HANGAR_API_KEY": account.signup["secret"]},
    )  # fmt: skip
    assert result.code == 0, result
    assert result.json()["id"] == account.signup["organization"]["id"]


def test_organization_get_and_update(account: Account) -> None:
    assert account.ok("organizations", "get")["id"] == account.signup["organization"]["id"]
    updated = account.ok("organizations", "update", "--name", "Acme Robotics")
    assert updated["name"] == "Acme Robotics"
    table = account.run("organizations", "get", "--output", "table")
    assert "Acme Robotics" in table.out and "billing_email" in table.out


# --- errors ------------------------------------------------------------------------------------------


def test_a_bad_key_exits_1_with_the_problem(account: Account) -> None:
    result = account.run("me", env={"HANGAR_API_KEY": "hgr_AAAAAAAAAAAA_notarealsecretatallnotarealsecret"})
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: ") and "(401)" in result.err and "request_id" in result.err
    assert "Traceback" not in result.err


def test_an_unknown_id_is_a_404_message(account: Account) -> None:
    missing = str(uuid.uuid4())
    result = account.run("api-keys", "get", missing)
    assert result.code == 1
    assert "(404)" in result.err and "request_id" in result.err


def test_another_tenants_resource_is_a_404(account: Account, live_server: Any, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    email = f"eve-{uuid.uuid4().hex[:10]}@example.com"
    signup = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Evil", "--output", "json",
        config=other, url=live_server.url,
    )  # fmt: skip
    assert signup.code == 0, signup
    mine = account.signup["api_key"]["id"]
    result = hangar("api-keys", "get", mine, config=other)
    assert result.code == 1 and "(404)" in result.err
    assert mine not in result.out


# --- instances: --wait, `instances wait`, the verbs ------------------------------------------------------


def _launchable(account: Account) -> tuple[str, str, str]:
    """(region, instance type, image) for a CPU instance a host has room for now, from the catalogue."""
    images = [i for i in account.ok("images")["data"] if i["status"] == "active"]
    for kind in account.ok("instance-types")["data"]:
        regions = [a["region"] for a in kind["availability"] if a["available"]]
        fitting = [i for i in images if i["min_disk_gb"] <= kind["disk_gb"]]
        if kind["gpus"] == 0 and regions and fitting:
            return regions[0], kind["slug"], fitting[0]["slug"]
    raise AssertionError("the catalogue offers no CPU instance type with room")


def test_instance_lifecycle_waiting_for_every_action(account: Account, live_server: Any) -> None:
    regions = [r["slug"] for r in account.ok("regions")["data"]]
    load_sim_fleet(live_server.database_url, regions, hosts=3 * len(regions))
    region, kind, image = _launchable(account)
    wait = ("--wait", "--timeout", "60", "--output", "json")

    created = account.run(
        "instances", "create", "--name", "cli-wait", "--region", region, "--instance-type", kind, "--image", image,
        *wait,
    )  # fmt: skip
    assert created.code == 0, created
    launch = created.json()
    assert (launch["type"], launch["status"], launch["progress"]) == ("create", "succeeded", 100)
    instance_id = launch["instance_id"]
    progress = created.err.splitlines()
    assert progress[-1] == f"action {launch['id'][:8]}… succeeded 100%", created.err
    assert len(progress) == len(set(progress)), "one line per change"
    assert account.ok("instances", "get", instance_id)["state"] == "running"

    waited = account.ok("instances", "wait", instance_id, "--state", "running", "--timeout", "30")
    assert waited["id"] == instance_id and waited["state"] == "running"

    for verb, state in (("stop", "stopped"), ("start", "running"), ("reboot", "running")):
        result = account.run("instances", verb, instance_id, *wait)
        assert result.code == 0, result
        done = result.json()
        assert (done["type"], done["status"], done["instance_id"]) == (verb, "succeeded", instance_id)
        assert account.ok("instances", "get", instance_id)["state"] == state, verb

    terminated = account.run("instances", "terminate", instance_id, *wait)
    assert terminated.code == 0, terminated
    assert (terminated.json()["type"], terminated.json()["status"]) == ("terminate", "succeeded")
    assert account.ok("instances", "wait", instance_id, "--state", "terminated")["state"] == "terminated"
    history = account.ok("actions", "list", instance_id)["data"]
    assert [a["type"] for a in history] == ["terminate", "reboot", "start", "stop", "create"]
    assert {a["status"] for a in history} == {"succeeded"}


def test_waiting_for_an_unknown_action_is_a_404(account: Account) -> None:
    result = account.run("actions", "wait", str(uuid.uuid4()), "--timeout", "5")
    assert result.code == 1 and "(404)" in result.err and result.out == ""
