"""The CLI without a server: config file handling, usage errors, help, and a refused connection."""

from __future__ import annotations

import socket
import stat
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hangar_cli import config as hangar_cli_config  # generated/cli, installed by `make install`

from .helpers import hangar


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- where the config lives ----------------------------------------------------------------------


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HANGAR_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hangar_cli_config.config_path() == tmp_path / "home" / ".config" / "hangar" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert hangar_cli_config.config_path() == tmp_path / "xdg" / "hangar" / "config.toml"
    monkeypatch.setenv("HANGAR_CONFIG", str(tmp_path / "explicit.toml"))
    assert hangar_cli_config.config_path() == tmp_path / "explicit.toml"


def test_save_writes_0600_and_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "config.toml"
    path.parent.mkdir()
    path.write_text('profile_note = "keep me"\napi_key = "old"\n')
    path.chmod(0o644)
    hangar_cli_config.save(path, {"api_key": "hgr_new_secret", "url": "http://x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text()) == {
        "profile_note": "keep me",
        "api_key": "hgr_new_secret",
        "url": "http://x",
    }
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"], "the temporary file was left behind"


def test_environment_overrides_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = "http://from-file:1/"\napi_key = "hgr_file"\norganization_id = "org-file"\n')
    monkeypatch.setenv("HANGAR_CONFIG", str(path))
    for name in ("HANGAR_URL", "HANGAR_API_KEY", "HANGAR_ORGANIZATION_ID"):
        monkeypatch.delenv(name, raising=False)
    settings = hangar_cli_config.settings()
    assert (settings.url, settings.api_key, settings.organization_id) == ("http://from-file:1", "hgr_file", "org-file")
    monkeypatch.setenv("HANGAR_URL", "http://from-env:2")
    monkeypatch.setenv("HANGAR_API_KEY", "hgr_env")
    settings = hangar_cli_config.settings()
    assert (settings.url, settings.api_key) == ("http://from-env:2", "hgr_env")
    assert hangar_cli_config.settings(url="http://flag:3").url == "http://flag:3"


def test_default_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HANGAR_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv("HANGAR_URL", raising=False)
    assert hangar_cli_config.settings().url == "http://127.0.0.1:8080"


# --- the real command, no server -------------------------------------------------------------------


def test_help_has_an_example_body(tmp_path: Path) -> None:
    result = hangar("api-keys", "create", "--help", config=tmp_path / "c.toml")
    assert result.code == 0
    assert "example body" in result.out and '"scopes"' in result.out
    assert "hangar api-keys create --name ci --scope instances:read" in result.out


def test_verb_help_shows_the_positional_id_and_wait(tmp_path: Path) -> None:
    result = hangar("instances", "stop", "--help", config=tmp_path / "c.toml")
    assert result.code == 0, result
    usage = " ".join(result.out.split("\n\n", 1)[0].split())
    assert usage == (
        "usage: hangar instances stop [-h] [--idempotency-key IDEMPOTENCY_KEY] [--wait] [--timeout SECONDS] "
        "[--url URL] [-o {table,json}] [--retries N] INSTANCE_ID"
    )
    assert "--type" not in result.out and "--body" not in result.out, "the verb is the type, the whole body"
    assert "hangar instances stop 7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6 --wait" in result.out
    assert 'Sends createInstanceAction with type "stop".' in result.out


def test_wait_help_shows_the_targets_and_the_timeout(tmp_path: Path) -> None:
    result = hangar("instances", "wait", "--help", config=tmp_path / "c.toml")
    assert result.code == 0, result
    usage = " ".join(result.out.split("\n\n", 1)[0].split())
    assert usage == (
        "usage: hangar instances wait [-h] --state STATE [--timeout SECONDS] [--url URL] [-o {table,json}] "
        "[--retries N] INSTANCE_ID"
    )
    assert "One of: running, stopped, terminated." in " ".join(result.out.split())
    assert "hangar instances wait 7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6 --state running" in result.out
    action = hangar("actions", "wait", "--help", config=tmp_path / "c.toml")
    assert action.code == 0 and "[--status STATUS]" in action.out and "(default: succeeded)" in action.out


def test_instances_group_lists_verbs_and_wait(tmp_path: Path) -> None:
    result = hangar("instances", "--help", config=tmp_path / "c.toml")
    assert result.code == 0
    for name in ("create", "get", "list", "reboot", "start", "stop", "terminate", "wait"):
        assert f"    {name}" in result.out
    assert "    act" not in result.out, "x-cli.verbs replaces the operation's own command"


def test_top_level_help_lists_groups_and_single_commands(tmp_path: Path) -> None:
    result = hangar("--help", config=tmp_path / "c.toml")
    assert result.code == 0
    for name in ("api-keys", "members", "organizations", "signup", "me"):
        assert f"    {name}" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("api-keys", "get", "not-a-uuid"), "not a UUID"),
        (("api-keys", "create", "--name", "ci", "--scope", "nope"), "invalid choice"),
        (("api-keys", "create", "--name", "ci"), "--scope"),
        (("api-keys", "create", "--body", "{not json"), "not valid JSON"),
        (("api-keys", "create", "--body", "[1]"), "JSON object"),
        (("members", "invite", "--email", "a@b.co", "--role", "emperor"), "invalid choice"),
        (("api-keys", "frobnicate"), "invalid choice"),
        (("api-keys",), "usage"),
        (("instances", "wait", "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6"), "--state"),
        (("instances", "stop", "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6", "--timeout", "5"), "--timeout goes with --wait"),
        (("actions", "wait", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "--timeout", "-1"), "not a number of seconds"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = hangar(*args, config=tmp_path / "c.toml", env={"HANGAR_API_KEY": "hgr_x_y"})
    assert result.code == 2, result
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_secured_command_without_a_key_says_how_to_get_one(tmp_path: Path) -> None:
    result = hangar("me", config=tmp_path / "c.toml", url=f"http://127.0.0.1:{free_port()}")
    assert result.code == 1
    assert "no API key" in result.err and "hangar signup" in result.err


def test_connection_refused_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = hangar("--retries", "0", "me", config=tmp_path / "c.toml", url=url, env={"HANGAR_API_KEY": "hgr_x_y"})
    assert result.code == 1
    assert result.err.startswith("error: cannot connect") and url in result.err
    assert "Traceback" not in result.err
    assert "hgr_x_y" not in result.err + result.out


def test_body_from_a_file_is_read(tmp_path: Path) -> None:
    # The body is complete (read from the file), so the command goes as far as the network.
    body = tmp_path / "body.json"
    body.write_text('{"name": "ci", "scopes": ["instances:read"]}')
    url = f"http://127.0.0.1:{free_port()}"
    result = hangar(
        "api-keys",
        "create",
        "--body",
        f"@{body}",
        "--retries",
        "0",
        config=tmp_path / "c.toml",
        url=url,
        env={"HANGAR_API_KEY": "hgr_x_y"},
    )
    assert result.code == 1 and "cannot connect" in result.err


class _Gateway(BaseHTTPRequestHandler):
    """A proxy in trouble: 502 with an HTML body, not a problem document."""

    def do_GET(self) -> None:
        body = b"<html>Bad gateway</html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_that_is_not_a_problem_document_is_still_reported(tmp_path: Path, bad_gateway: str) -> None:
    result = hangar(
        "--retries", "0", "me", config=tmp_path / "c.toml", url=bad_gateway, env={"HANGAR_API_KEY": "hgr_x_y"}
    )
    assert result.code == 1
    assert result.err.startswith(f"error: HTTP 502 from {bad_gateway}") and "Bad gateway" in result.err
    assert "Traceback" not in result.err
