"""The stream runner against a scripted gateway: the real `hangar` console script, a fake API
(tests/cli/fake_api.py) answering createTerminalSession with a URL to a fake websocket server
speaking hangar.terminal.v1. Here are the endings a live server makes hard to provoke on cue
(every close code, a dropped connection, a text frame, no subprotocol) and what the client
sends, frame by frame, checked against the AsyncAPI document's schemas."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from websockets.sync.server import ServerConnection, serve

from .fake_api import INSTANCE_ID, FakeApi
from .fake_api import serve as serve_api
from .helpers import HANGAR, Result, hangar

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = yaml.safe_load((ROOT / "specs" / "asyncapi" / "terminal.yaml").read_text(encoding="utf-8"))
MESSAGES = {m["name"]: m for m in CONTRACT["components"]["messages"].values()}
SCHEMAS = CONTRACT["components"]["schemas"]
BYTE = {name: m["x-channel-byte"] for name, m in MESSAGES.items()}
SESSION_ID = "3c9a5e1b-2d4f-4a6b-8c7d-9e0f1a2b3c4d"


def payload_schema(name: str) -> dict[str, Any]:
    """The message's payload schema with its refs into components/schemas inlined."""
    text = json.dumps(MESSAGES[name]["payload"])
    for _ in range(4):
        node = json.loads(text)
        text = json.dumps(_inline(node))
    return dict(json.loads(text))


def _inline(node: Any) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return SCHEMAS[ref.rsplit("/", 1)[1]]
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


@dataclass
class Gateway:
    """A websocket server whose behaviour is picked by the ticket presented in the auth frame."""

    url: str = ""
    received: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    subprotocols: list[str | None] = field(default_factory=list)
    scripts: dict[str, Callable[[ServerConnection], None]] = field(default_factory=dict)

    def handle(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        self.subprotocols.append(ws.subprotocol)
        first = ws.recv(timeout=10)
        assert isinstance(first, bytes)
        self.received.append(first)
        ticket = json.loads(first[1:])["ticket"]
        self.scripts[ticket](ws)


def frame(name: str, payload: bytes | dict[str, Any]) -> bytes:
    if isinstance(payload, dict):
        jsonschema.validate(payload, payload_schema(name))
        payload = json.dumps(payload).encode()
    return bytes([BYTE[name]]) + payload


def exit_with(code: int | None, reason: str, close: int) -> Callable[[ServerConnection], None]:
    def script(ws: ServerConnection) -> None:
        ws.send(frame("stdout", b"working\r\n"))
        ws.send(frame("exit", {"exit_code": code, "reason": reason}))
        ws.close(close)

    return script


def refuse(close: int) -> Callable[[ServerConnection], None]:
    return lambda ws: ws.close(close, "refused")


def echo_until_eof(gateway: Gateway) -> Callable[[ServerConnection], None]:
    """Echo stdin back as stdout until an end of file (^D) comes, then exit 0."""

    def script(ws: ServerConnection) -> None:
        while True:
            message = ws.recv(timeout=10)
            assert isinstance(message, bytes)
            gateway.received.append(message)
            if message[0] == BYTE["stdin"]:
                data = message[1:]
                if b"\x04" in data:
                    ws.send(frame("stdout", data.split(b"\x04")[0].replace(b"\n", b"\r\n")))
                    ws.send(frame("exit", {"exit_code": 0, "reason": "exited"}))
                    ws.close(1000)
                    return
                ws.send(frame("stdout", data.replace(b"\n", b"\r\n")))

    return script


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    with serve(gw.handle, "127.0.0.1", 0, subprotocols=["hangar.terminal.v1"], compression=None) as server:
        gw.url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield gw
        server.shutdown()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with serve_api() as fake:
        yield fake


def created(gateway: Gateway, ticket: str, command: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": SESSION_ID, "instance_id": INSTANCE_ID, "api_key_id": str(uuid.uuid4()), "status": "pending",
        "command": command, "cols": 80, "rows": 24, "created_at": "2026-11-28T10:00:00Z",
        "expires_at": "2026-11-28T10:01:00Z", "started_at": None, "ended_at": None, "end_reason": None,
        "exit_code": None, "bytes_in": 0, "bytes_out": 0,
        "url": f"{gateway.url}/v1/terminal-sessions/{SESSION_ID}/stream", "ticket": ticket,
    }  # fmt: skip


def run(api: FakeApi, tmp_path: Path, *args: str, stdin: str | None = "") -> Result:
    return hangar(*args, config=tmp_path / "c.toml", url=api.url, env={"HANGAR_API_KEY": "hgr_test"}, stdin=stdin)


def arrange(api: FakeApi, gateway: Gateway, ticket: str, script: Callable[[ServerConnection], None]) -> None:
    gateway.scripts[ticket] = script
    api.on("POST", f"/v1/instances/{INSTANCE_ID}/terminal-sessions", created(gateway, ticket), status=201)


# --- a session that ends with the program ------------------------------------------------------


def test_exec_sends_the_argv_and_the_ticket_only_in_the_auth_frame(
    api: FakeApi, gateway: Gateway, tmp_path: Path
) -> None:
    arrange(api, gateway, "hgt_exit3", exit_with(3, "exited", 1000))
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "sh", "-c", "exit 3")
    assert (result.code, result.out, result.err) == (3, "working\n", ""), result
    (request,) = api.requests
    assert request.body == {"command": ["sh", "-c", "exit 3"]}, "off a terminal: no size"
    assert request.headers.get("Idempotency-Key")
    assert gateway.paths == [f"/v1/terminal-sessions/{SESSION_ID}/stream"], "no ticket in the URL"
    assert gateway.subprotocols == ["hangar.terminal.v1"]
    auth = gateway.received[0]
    assert auth[0] == BYTE["auth"]
    body = json.loads(auth[1:])
    jsonschema.validate(body, payload_schema("auth"))
    assert body == {"ticket": "hgt_exit3"}


def test_stdin_is_forwarded_then_an_end_of_file(api: FakeApi, gateway: Gateway, tmp_path: Path) -> None:
    arrange(api, gateway, "hgt_echo", echo_until_eof(gateway))
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "cat", stdin="one\ntwo\n")
    assert (result.code, result.out) == (0, "one\ntwo\n"), result
    stdin = b"".join(m[1:] for m in gateway.received[1:] if m[0] == BYTE["stdin"])
    assert stdin == b"one\ntwo\n\x04"


def test_an_unfinished_last_line_gets_two_end_of_files(api: FakeApi, gateway: Gateway, tmp_path: Path) -> None:
    arrange(api, gateway, "hgt_echo2", echo_until_eof(gateway))
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "cat", stdin="partial")
    assert result.code == 0, result
    stdin = b"".join(m[1:] for m in gateway.received[1:] if m[0] == BYTE["stdin"])
    assert stdin == b"partial\x04\x04", "the first ^D ends the line, the second is the end of file"


def test_crlf_split_across_frames_becomes_lf(api: FakeApi, gateway: Gateway, tmp_path: Path) -> None:
    def script(ws: ServerConnection) -> None:
        for chunk in (b"a\r\nb\r", b"\nc\r", b"\r\n", b"bare\rcr\r\n", b"end\r"):
            ws.send(frame("stdout", chunk))
        ws.send(frame("exit", {"exit_code": 0, "reason": "exited"}))
        ws.close(1000)

    arrange(api, gateway, "hgt_crlf", script)
    env = {**os.environ, "HANGAR_CONFIG": str(tmp_path / "c.toml"), "HANGAR_URL": api.url, "HANGAR_API_KEY": "hgr_t"}
    done = subprocess.run(
        [str(HANGAR), "instances", "exec", INSTANCE_ID, "--", "x"],
        env=env, input=b"", capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    # Bytes, not text: text mode would turn every \r into \n by itself.
    assert (done.returncode, done.stdout) == (0, b"a\nb\nc\r\nbare\rcr\nend\r"), done


# --- sessions that end otherwise: the close code's message, exit 255 ------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (refuse(4401), "the terminal session ended: missing, unknown, expired or used ticket"),
        (refuse(4404), "no such session"),
        (refuse(4409), "the instance is not running (refused) [close code 4409]"),
        (refuse(4429), "too many attached sessions in the organization (refused) [close code 4429]"),
        (exit_with(None, "idle_timeout", 4408), "the terminal session ended: idle timeout [close code 4408]"),
        (exit_with(None, "max_duration", 4410), "maximum duration reached [close code 4410]"),
        (exit_with(None, "instance_stopped", 4499), "the instance stopped while attached [close code 4499]"),
        (exit_with(None, "key_revoked", 4401), "(key_revoked) [close code 4401]"),
        (exit_with(None, "closed", 1000), "the program exited or the session was closed (closed) [close code 1000]"),
        (refuse(4999), "the terminal gateway closed the session (code 4999)"),
    ],
)
def test_a_session_without_an_exit_code_exits_255_with_the_reason(
    api: FakeApi, gateway: Gateway, tmp_path: Path, script: Callable[[ServerConnection], None], message: str
) -> None:
    arrange(api, gateway, "hgt_end", script)
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "true")
    assert result.code == 255, result
    assert result.err.startswith("error: ") and message in result.err, result.err
    assert "Traceback" not in result.err


def test_a_dropped_connection_is_reported(api: FakeApi, gateway: Gateway, tmp_path: Path) -> None:
    def drop(ws: ServerConnection) -> None:
        ws.send(frame("stdout", b"half"))
        ws.socket.close()  # no close frame

    arrange(api, gateway, "hgt_drop", drop)
    result = run(api, tmp_path, "instances", "terminal", INSTANCE_ID)
    assert result.code == 255 and result.out == "half"
    assert "the connection to the terminal gateway was lost" in result.err


def test_a_text_frame_is_a_protocol_error(api: FakeApi, gateway: Gateway, tmp_path: Path) -> None:
    def text(ws: ServerConnection) -> None:
        ws.send("not binary")
        ws.recv(timeout=5)  # the client's close

    arrange(api, gateway, "hgt_text", text)
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "true")
    assert result.code == 255 and "not binary" in result.err, result


def test_a_gateway_without_the_subprotocol_is_refused(api: FakeApi, tmp_path: Path) -> None:
    with serve(lambda ws: ws.recv(timeout=5), "127.0.0.1", 0) as server:  # selects no subprotocol
        threading.Thread(target=server.serve_forever, daemon=True).start()
        gw = Gateway(url=f"ws://127.0.0.1:{server.socket.getsockname()[1]}")
        api.on("POST", f"/v1/instances/{INSTANCE_ID}/terminal-sessions", created(gw, "hgt_x"), status=201)
        result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "true")
        server.shutdown()
    assert result.code == 255, result
    assert "does not speak hangar.terminal.v1" in result.err or "refused" in result.err


def test_an_unreachable_gateway_is_reported(api: FakeApi, tmp_path: Path) -> None:
    gw = Gateway(url="ws://127.0.0.1:9")  # discard port: nothing listens
    api.on("POST", f"/v1/instances/{INSTANCE_ID}/terminal-sessions", created(gw, "hgt_x"), status=201)
    result = run(api, tmp_path, "instances", "exec", INSTANCE_ID, "--", "true")
    assert result.code == 255 and "cannot connect to the terminal gateway at ws://127.0.0.1:9" in result.err


def test_an_api_refusal_is_the_problem_and_exit_255(api: FakeApi, tmp_path: Path) -> None:
    problem = {"type": "https://docs.hangar.dev/problems/instance-not-running", "title": "Conflict", "status": 409,
               "detail": "The instance is stopped.", "request_id": "req_x"}  # fmt: skip
    api.on("POST", f"/v1/instances/{INSTANCE_ID}/terminal-sessions", (409, problem))
    result = run(api, tmp_path, "instances", "terminal", INSTANCE_ID)
    assert result.code == 255
    assert result.err.startswith("error: Conflict (409): The instance is stopped.")
