"""The issue's journey, end to end, the way a user does it: the real `hangar` console script
against a live `hangar-server` on the `local` drivers (instances are sandboxed processes, a
terminal is a real shell in them, volumes are directories under the storage directory).

    launch two instances → create a volume → attach it to A → write a file to it through the
    terminal (`hangar instances exec A -- sh -c 'echo … > ~/volumes/…'`) → detach → attach
    it to B → read the file back through B's terminal → snapshot → restore into a new volume
    → read it there → clean up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

HANGAR = Path(sys.executable).parent / "hangar"
PASSWORD = "correct-horse-battery-staple"
SCRUBBED = ("HANGAR_API_KEY", "HANGAR_URL", "HANGAR_ORGANIZATION_ID", "HANGAR_CONFIG", "XDG_CONFIG_HOME")


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class User:
    config: Path

    def run(self, *args: str, url: str | None = None) -> Result:
        if not HANGAR.exists():
            raise AssertionError(f"{HANGAR} is missing: run `make install` (it installs generated/cli)")
        environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        environ["HANGAR_CONFIG"] = str(self.config)
        environ["COLUMNS"] = "200"
        if url is not None:
            environ["HANGAR_URL"] = url
        done = subprocess.run(
            [str(HANGAR), *args], capture_output=True, text=True, env=environ, timeout=180, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> Any:
        result = self.run(*args, "--output", "json")
        assert result.code == 0, result
        return json.loads(result.out) if result.out.strip() else None

    def exec(self, instance_id: str, script: str) -> str:
        result = self.run("instances", "exec", instance_id, "--", "sh", "-c", script)
        assert result.code == 0, result
        return result.out


@pytest.fixture(scope="module")
def live_server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hangar-server` on the local drivers (real processes and storage beside its log), with a
    fresh database. Started here rather than through tests/conftest.py's `live_server` to give
    a loaded machine more than its 30 s to import and start the app."""
    log = tmp_path_factory.mktemp("storage-live") / "server.log"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    environment = {
        **{k: v for k, v in os.environ.items() if k != "HANGAR_BROKER_URL"},
        "HANGAR_DATABASE_URL": databases.dedicated(),
        "HANGAR_HOST": "127.0.0.1",
        "HANGAR_PORT": str(port),
        "HANGAR_VALIDATE_RESPONSES": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
        "HANGAR_DRIVER": "local",
        "HANGAR_SAGA_POLL_SECONDS": "0.05",
        "HANGAR_STORAGE_POLL_SECONDS": "0.05",
        "HANGAR_INSTANCES_DIR": str(log.parent / "instances"),
        "HANGAR_STORAGE_DIR": str(log.parent / "volumes"),
        "HANGAR_BILLING_SIGNUP_CREDIT": "10000000",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(HANGAR.parent / "hangar-server")], env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"hangar-server exited with {process.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(url + "/v1/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"hangar-server did not answer within 120 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def user(live_server: str, tmp_path_factory: pytest.TempPathFactory) -> User:
    someone = User(tmp_path_factory.mktemp("hangar-storage") / "config.toml")
    signed = someone.run(
        "signup", "--email", f"vol-{uuid.uuid4().hex[:10]}@example.com", "--password", PASSWORD,
        "--organization", "Volumes", "--output", "json", url=live_server,
    )  # fmt: skip
    assert signed.code == 0, signed
    return someone


def _launchable(user: User) -> tuple[str, str, str]:
    images = [i for i in user.ok("images")["data"] if i["status"] == "active"]
    for kind in user.ok("instance-types")["data"]:
        regions = [a["region"] for a in kind["availability"] if a["available"]]
        fitting = [i for i in images if i["min_disk_gb"] <= kind["disk_gb"]]
        if kind["gpus"] == 0 and regions and fitting:
            return regions[0], kind["slug"], fitting[0]["slug"]
    raise AssertionError("the catalogue offers no CPU instance type with room")


def test_write_in_one_instance_read_in_another_and_from_a_snapshot(user: User) -> None:
    region, kind, image = _launchable(user)
    instances = []
    try:
        for name in ("vol-a", "vol-b"):
            launched = user.ok(
                "instances", "create", "--name", name, "--region", region, "--instance-type", kind,
                "--image", image, "--wait", "--timeout", "120",
            )  # fmt: skip
            instances.append(str(launched["instance_id"]))
        a, b = instances

        created = user.ok("volumes", "create", "--name", "shared", "--region", region, "--size-gib", "1", "--wait")
        assert created["type"] == "create" and created["status"] == "succeeded"
        volume = str(created["volume_id"])
        assert user.ok("volumes", "get", volume)["state"] == "available"

        attached = user.ok("volumes", "attach", volume, "--instance-id", a, "--wait")
        assert (attached["type"], attached["status"], attached["instance_id"]) == ("attach", "succeeded", a)
        user.exec(a, "echo hello-from-a > ~/volumes/shared/f")
        assert user.exec(a, "cat ~/volumes/shared/f") == "hello-from-a\n"

        assert user.ok("volumes", "detach", volume, "--wait")["status"] == "succeeded"
        assert user.exec(a, "test -e ~/volumes/shared && echo still || echo gone") == "gone\n"
        assert user.ok("volumes", "attach", volume, "--instance-id", b, "--wait")["status"] == "succeeded"
        assert user.exec(b, "cat ~/volumes/shared/f") == "hello-from-a\n"

        snapshot = user.ok("snapshots", "create", volume, "--name", "snap-1", "--wait")
        assert snapshot["state"] == "available"
        user.exec(b, "echo changed > ~/volumes/shared/f")
        restored = user.ok(
            "volumes", "create", "--name", "restored", "--region", region, "--size-gib", "1",
            "--snapshot-id", str(snapshot["id"]), "--wait",
        )  # fmt: skip
        assert user.ok("volumes", "attach", str(restored["volume_id"]), "--instance-id", a, "--wait")["status"] == (
            "succeeded"
        )
        assert user.exec(a, "cat ~/volumes/restored/f") == "hello-from-a\n"
        assert user.exec(b, "cat ~/volumes/shared/f") == "changed\n"

        resized = user.ok("volumes", "resize", volume, "--size-gib", "2", "--wait")
        assert resized["status"] == "succeeded" and user.ok("volumes", "get", volume)["size_gib"] == 2
        refused = user.run("volumes", "delete", volume)
        assert refused.code != 0 and "409" in refused.err and "Traceback" not in refused.err, refused
        for v in (volume, str(restored["volume_id"])):
            user.ok("volumes", "detach", v, "--wait")
            assert user.ok("volumes", "delete", v, "--wait")["status"] == "succeeded"
        assert user.ok("volumes", "get", volume)["state"] == "deleted"
    finally:
        for instance in instances:
            user.run("instances", "terminate", instance, "--wait", "--timeout", "60")
