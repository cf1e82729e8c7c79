"""A websocket client for the terminal protocol that checks every frame, both ways, against
specs/asyncapi/terminal.yaml (the channel byte must be a message of the document travelling
in the right direction; JSON payloads must validate against the message's schema), plus the
REST helpers the terminal tests share (tenants, running instances, sessions).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[3]
DOCUMENT = yaml.safe_load((ROOT / "specs" / "asyncapi" / "terminal.yaml").read_text())
PASSWORD = "correct-horse-battery-staple"
SUBPROTOCOL = DOCUMENT["x-subprotocol"]


def _inline(node: Any) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = DOCUMENT
            for part in ref[2:].split("/"):
                target = target[part]
            return _inline(target)
        return {key: _inline(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item) for item in node]
    return node


@dataclass(frozen=True)
class MessageSpec:
    name: str
    channel: int
    direction: str
    encoding: str
    validator: jsonschema.Draft202012Validator


MESSAGES: dict[int, MessageSpec] = {}
for _name, _message in DOCUMENT["components"]["messages"].items():
    _payload = _inline(_message["payload"])
    MESSAGES[_message["x-channel-byte"]] = MessageSpec(
        name=_message["name"],
        channel=_message["x-channel-byte"],
        direction=_message["x-direction"],
        encoding=_message["x-encoding"],
        validator=jsonschema.Draft202012Validator(_payload),
    )
CHANNEL = {spec.name: spec.channel for spec in MESSAGES.values()}
CLOSE_CODES = {int(code) for code in DOCUMENT["x-close-codes"]}


def check_frame(frame: bytes, direction: str) -> tuple[str, Any]:
    """(message name, payload: bytes for raw channels, the parsed JSON otherwise); raises
    AssertionError when the frame is not one the contract allows in `direction`."""
    assert isinstance(frame, bytes) and frame, f"not a binary frame with a channel byte: {frame!r}"
    spec = MESSAGES.get(frame[0])
    assert spec is not None, f"channel {frame[0]} is no message of the contract"
    assert spec.direction == direction, f"{spec.name} travels {spec.direction}, seen {direction}"
    if spec.encoding == "raw":
        return spec.name, frame[1:]
    payload = json.loads(frame[1:].decode("utf-8"))
    spec.validator.validate(payload)
    return spec.name, payload


def frame(name: str, payload: bytes | dict[str, Any]) -> bytes:
    """A client frame, checked against the contract before it is sent."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    data = bytes([CHANNEL[name]]) + body
    check_frame(data, "client-to-server")
    return data


@dataclass
class Outcome:
    output: bytes = b""
    exit: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""
    frames: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class Terminal:
    """One websocket connection; every frame is checked against the contract."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.outcome = Outcome()

    @classmethod
    async def open(
        cls,
        url: str,
        ticket: str | None,
        *,
        cols: int | None = None,
        rows: int | None = None,
        subprotocols: list[str] | None = None,
    ) -> Terminal:
        ws = await connect(url, subprotocols=subprotocols if subprotocols is not None else [SUBPROTOCOL])  # type: ignore[arg-type]
        term = cls(ws)
        if ticket is not None:
            auth: dict[str, Any] = {"ticket": ticket}
            if cols is not None:
                auth["cols"] = cols
            if rows is not None:
                auth["rows"] = rows
            await ws.send(frame("auth", auth))
        return term

    async def send(self, name: str, payload: bytes | dict[str, Any]) -> None:
        await self.ws.send(frame(name, payload))

    async def type(self, text: str) -> None:
        await self.send("stdin", text.encode())

    async def _next(self, timeout: float) -> bool:
        """Receive one frame into the outcome; False once the server has closed."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as closed:
            self.outcome.close_code = closed.rcvd.code if closed.rcvd else None
            self.outcome.close_reason = closed.rcvd.reason if closed.rcvd else ""
            return False
        assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
        name, payload = check_frame(data, "server-to-client")
        self.outcome.frames.append(name)
        assert self.outcome.exit is None, f"a {name} frame after the exit frame"
        if name == "stdout":
            self.outcome.output += payload
        elif name == "exit":
            self.outcome.exit = payload
        return True

    async def expect(self, text: str, timeout: float = 10.0) -> str:
        """Read until `text` has been output (after what was already read)."""
        start = len(self.outcome.output)
        deadline = time.monotonic() + timeout
        while text.encode() not in self.outcome.output[start:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen within {timeout}s; got {self.outcome.output[start:]!r}"
            if not await self._next(left):
                raise AssertionError(
                    f"closed ({self.outcome.close_code}) before {text!r}; got {self.outcome.output[start:]!r}"
                )
        return self.outcome.output[start:].decode("utf-8", "replace")

    async def finish(self, timeout: float = 15.0) -> Outcome:
        """Read until the server closes."""
        deadline = time.monotonic() + timeout
        while await self._next(max(0.01, deadline - time.monotonic())):
            assert time.monotonic() < deadline, "the server did not close in time"
        if self.outcome.close_code is not None:
            assert self.outcome.close_code in CLOSE_CODES, (
                f"close code {self.outcome.close_code} is not in the contract"
            )
        return self.outcome


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- REST -----------------------------------------------------------------------------------


@dataclass
class Tenant:
    http: httpx.Client
    organization_id: str
    secret: str
    api_key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def get(self, path: str) -> Any:
        response = self.http.get(path, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def launch(self, *, wait: bool = True) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        body = {"name": name, "region": "fra1", "instance_type": "cpu-1", "image": "ubuntu-24.04"}
        response = self.http.post("/v1/instances", json=body, headers=self.headers)
        assert response.status_code == 202, response.text
        instance_id = str(response.json()["instance"]["id"])
        if wait:
            self.wait_instance(instance_id, "running")
        return instance_id

    def wait_instance(self, instance_id: str, state: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.get(f"/v1/instances/{instance_id}")
            if got["state"] == state and not got["locked"]:
                return
            assert time.monotonic() < deadline, f"instance {instance_id} is {got['state']}, wanted {state}"
            time.sleep(0.05)

    def act(self, instance_id: str, action: str) -> None:
        response = self.http.post(f"/v1/instances/{instance_id}/actions", json={"type": action}, headers=self.headers)
        assert response.status_code == 202, response.text

    def open_session(self, instance_id: str, **body: Any) -> dict[str, Any]:
        response = self.http.post(f"/v1/instances/{instance_id}/terminal-sessions", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def session(self, session_id: str) -> dict[str, Any]:
        got: dict[str, Any] = self.get(f"/v1/terminal-sessions/{session_id}")
        return got

    def wait_session(
        self, session_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.session(session_id)
            if check(got):
                return got
            assert time.monotonic() < deadline, f"session {session_id}: {got}"
            time.sleep(0.05)

    def create_key(self, scopes: list[str]) -> tuple[str, str]:
        response = self.http.post("/v1/api-keys", json={"name": "t", "scopes": scopes}, headers=self.headers)
        assert response.status_code == 201, response.text
        body = response.json()
        return str(body["api_key"]["id"]), str(body["secret"])


def sign_up(http: httpx.Client, organization: str = "Acme") -> Tenant:
    email = f"t-{uuid.uuid4().hex[:10]}@example.com"
    response = http.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": organization})
    assert response.status_code == 201, response.text
    body = response.json()
    return Tenant(http, body["organization"]["id"], body["secret"], body["api_key"]["id"])
