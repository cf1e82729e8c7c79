"""Waiting without a server: `hangar actions wait`, `hangar instances wait`, `--wait` and the
instance verbs against a scripted fake API (tests/cli/fake_api.py).

The CLI runs in-process (`hangar_cli.app.main`) with its pauses recorded instead of slept,
so a ten-poll wait takes milliseconds; one test runs the real `hangar` console script.
stderr is not a terminal here, so progress comes as plain lines, one per change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hangar_cli import app, waiting  # generated/cli, installed by `make install`

from .fake_api import ACTION_ID, INSTANCE_ID, FakeApi, action, instance, serve
from .helpers import Result, hangar

ACTION = f"/v1/actions/{ACTION_ID}"
INSTANCE = f"/v1/instances/{INSTANCE_ID}"
SHORT_ACTION, SHORT_INSTANCE = "action 1a2b3c4d…", "instance 7d1f0e2a…"
PLACEMENT = {"code": "placement_error", "message": "no host in fra1 has room for gpu-h100x8"}


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]
    sleeps: list[float] = field(default_factory=list)

    def run(self, *args: str) -> Result:
        try:
            code = app.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        return Result(code, out, err)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with serve() as fake:
        yield fake


@pytest.fixture
def cli(api: FakeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("HANGAR_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("HANGAR_URL", api.url)
    monkeypatch.setenv("HANGAR_API_KEY", "hgr_test_key")
    monkeypatch.delenv("HANGAR_ORGANIZATION_ID", raising=False)
    runner = Cli(capsys)
    monkeypatch.setattr(waiting, "sleep", runner.sleeps.append)
    return runner


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


# --- hangar actions wait ------------------------------------------------------------------------


def test_action_wait_shows_each_change_once_and_prints_the_action(cli: Cli, api: FakeApi) -> None:
    api.on("GET", ACTION, action("queued", 0), action("running", 40), action("running", 40),
           action("running", 80), action("succeeded", 100))  # fmt: skip
    result = cli.run("actions", "wait", ACTION_ID)
    assert result.code == 0, result
    assert lines(result.err) == [
        f"{SHORT_ACTION} queued 0%",
        f"{SHORT_ACTION} running 40%",
        f"{SHORT_ACTION} running 80%",
        f"{SHORT_ACTION} succeeded 100%",
    ]
    assert json.loads(result.out) == action("succeeded", 100), "printed like `hangar actions get`"
    assert api.polls(ACTION) == 5
    assert cli.sleeps == [1.0, 1.25, 1.5625, 1.953125], "the pause grows by a quarter"
    assert all(r.headers.get("Authorization") == "Bearer hgr_test_key" for r in api.requests)


def test_action_wait_in_a_table(cli: Cli, api: FakeApi) -> None:
    api.on("GET", ACTION, action("succeeded", 100))
    result = cli.run("actions", "wait", ACTION_ID, "--output", "table")
    assert result.code == 0
    assert "status" in result.out and "succeeded" in result.out and ACTION_ID in result.out


def test_a_failed_action_exits_1_with_its_error_code_and_message(cli: Cli, api: FakeApi) -> None:
    api.on("GET", ACTION, action("running", 20), action("failed", 20, error=PLACEMENT))
    result = cli.run("actions", "wait", ACTION_ID)
    assert result.code == 1
    assert lines(result.err) == [
        f"{SHORT_ACTION} running 20%",
        f"{SHORT_ACTION} failed 20%",
        f"error: action {ACTION_ID} status is failed: placement_error: no host in fra1 has room for gpu-h100x8",
    ]
    assert json.loads(result.out)["error"] == PLACEMENT, "the resource the wait ended on is still printed"


def test_a_wait_that_runs_out_of_time_exits_1(cli: Cli, api: FakeApi) -> None:
    api.on("GET", ACTION, action("running", 10))
    result = cli.run("actions", "wait", ACTION_ID, "--timeout", "4")
    assert result.code == 1 and result.out == ""
    assert lines(result.err) == [
        f"{SHORT_ACTION} running 10%",
        f"error: timed out after 4 s waiting for action {ACTION_ID}: its status is running, not succeeded",
    ]
    assert cli.sleeps == [1.0, 1.25, 1.5625, 0.1875], "the last pause ends at the deadline"
    assert api.polls(ACTION) == 5


def test_timeout_zero_polls_once(cli: Cli, api: FakeApi) -> None:
    api.on("GET", ACTION, action("running", 10))
    result = cli.run("actions", "wait", ACTION_ID, "--timeout", "0")
    assert result.code == 1 and "timed out after 0 s" in result.err and cli.sleeps == []


def test_an_api_error_while_waiting_is_reported_like_any_call(cli: Cli, api: FakeApi) -> None:
    result = cli.run("--retries", "0", "actions", "wait", ACTION_ID)  # nothing scripted: 404
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: Not Found (404): No such thing. [request_id req_fake]")


def test_usage_errors_of_wait_commands_exit_2(cli: Cli) -> None:
    assert cli.run("actions", "wait", "not-a-uuid").code == 2
    assert cli.run("actions", "wait", ACTION_ID, "--timeout", "soon").code == 2
    missing = cli.run("instances", "wait", INSTANCE_ID)
    assert missing.code == 2 and "--state" in missing.err, "several targets: --state is required"
    wrong = cli.run("instances", "wait", INSTANCE_ID, "--state", "pending")
    assert wrong.code == 2 and "invalid choice" in wrong.err


# --- hangar instances wait -------------------------------------------------------------------------


def test_instance_wait_for_the_state_asked_for(cli: Cli, api: FakeApi) -> None:
    api.on("GET", INSTANCE, instance("running", locked=True), instance("stopping"), instance("stopping"),
           instance("stopped"))  # fmt: skip
    result = cli.run("instances", "wait", INSTANCE_ID, "--state", "stopped")
    assert result.code == 0, result
    assert lines(result.err) == [f"{SHORT_INSTANCE} running", f"{SHORT_INSTANCE} stopping", f"{SHORT_INSTANCE} stopped"]
    assert json.loads(result.out)["state"] == "stopped"


def test_instance_wait_fails_on_a_failed_instance(cli: Cli, api: FakeApi) -> None:
    api.on("GET", INSTANCE, instance("provisioning"), instance("failed"))
    result = cli.run("instances", "wait", INSTANCE_ID, "--state", "running")
    assert result.code == 1
    assert lines(result.err)[-1] == f"error: instance {INSTANCE_ID} state is failed"


def test_instance_wait_fails_at_once_when_nothing_will_get_it_there(cli: Cli, api: FakeApi) -> None:
    # Stopped with no action running (`locked` false): it will never become running by waiting.
    api.on("GET", INSTANCE, instance("stopped"))
    result = cli.run("instances", "wait", INSTANCE_ID, "--state", "running")
    assert result.code == 1
    assert api.polls(INSTANCE) == 1 and cli.sleeps == []
    assert "nothing is changing it (locked is false): it will not become running" in result.err
    assert json.loads(result.out)["state"] == "stopped", "the instance is still printed"


# --- --wait and the verbs ------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["stop", "start", "reboot"])
def test_a_verb_sends_its_type_and_waits_for_the_action(cli: Cli, api: FakeApi, verb: str) -> None:
    api.on("POST", f"{INSTANCE}/actions", action("queued", 0, kind=verb), status=202)
    api.on("GET", ACTION, action("running", 50, kind=verb), action("succeeded", 100, kind=verb))
    result = cli.run("instances", verb, INSTANCE_ID, "--wait")
    assert result.code == 0, result
    post = next(r for r in api.requests if r.method == "POST")
    assert post.body == {"type": verb} and post.headers.get("Idempotency-Key")
    assert lines(result.err) == [f"{SHORT_ACTION} running 50%", f"{SHORT_ACTION} succeeded 100%"]
    assert json.loads(result.out) == action("succeeded", 100, kind=verb)


def test_a_verb_without_wait_prints_the_action_at_once(cli: Cli, api: FakeApi) -> None:
    api.on("POST", f"{INSTANCE}/actions", action("queued", 0, kind="stop"), status=202)
    result = cli.run("instances", "stop", INSTANCE_ID)
    assert result.code == 0 and result.err == ""
    assert json.loads(result.out)["status"] == "queued" and api.polls(ACTION) == 0


def test_create_wait_reads_the_action_id_from_the_launch_and_fails_with_its_error(cli: Cli, api: FakeApi) -> None:
    launch = {"instance": instance("pending"), "action": action("queued", 0)}
    api.on("POST", "/v1/instances", launch, status=202)
    api.on("GET", ACTION, action("running", 30), action("failed", 30, error=PLACEMENT))
    result = cli.run(
        "instances", "create", "--name", "web-1", "--region", "fra1", "--instance-type", "cpu-2",
        "--image", "ubuntu-24.04", "--wait",
    )  # fmt: skip
    assert result.code == 1
    assert "error: action" in result.err and "placement_error: no host in fra1" in result.err
    assert json.loads(result.out)["status"] == "failed", "the awaited action is printed"
    post = next(r for r in api.requests if r.method == "POST")
    assert post.body == {"name": "web-1", "region": "fra1", "instance_type": "cpu-2", "image": "ubuntu-24.04"}


def test_terminate_wait(cli: Cli, api: FakeApi) -> None:
    api.on("DELETE", INSTANCE, action("queued", 0, kind="terminate"), status=202)
    api.on("GET", ACTION, action("succeeded", 100, kind="terminate"))
    result = cli.run("instances", "terminate", INSTANCE_ID, "--wait", "--timeout", "30")
    assert result.code == 0, result
    assert json.loads(result.out)["type"] == "terminate"


def test_timeout_without_wait_is_a_usage_error(cli: Cli, api: FakeApi) -> None:
    result = cli.run("instances", "stop", INSTANCE_ID, "--timeout", "5")
    assert result.code == 2 and "--timeout goes with --wait" in result.err
    assert api.requests == [], "nothing was sent"


# --- a terminal, and the real console script -----------------------------------------------------------


def test_on_a_terminal_progress_is_a_live_line_that_ends_on_the_last_state(
    cli: Cli, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.on("GET", ACTION, action("queued", 0), action("running", 60), action("succeeded", 100))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = cli.run("actions", "wait", ACTION_ID)
    assert result.code == 0, result
    assert f"{SHORT_ACTION} queued 0%\n" not in result.err, "no plain line per change on a terminal"
    assert result.err.endswith(f"{SHORT_ACTION} succeeded 100%\n"), "the last state stays on screen"


def test_the_console_script_waits_with_plain_progress_lines(api: FakeApi, tmp_path: Path) -> None:
    api.on("GET", ACTION, action("running", 50), action("succeeded", 100))
    result = hangar(
        "actions", "wait", ACTION_ID, config=tmp_path / "c.toml", url=api.url, env={"HANGAR_API_KEY": "hgr_test_key"}
    )
    assert result.code == 0, result
    assert lines(result.err) == [f"{SHORT_ACTION} running 50%", f"{SHORT_ACTION} succeeded 100%"]
    assert json.loads(result.out)["status"] == "succeeded"
