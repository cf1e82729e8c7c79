"""Terminal Gateway benchmark: keystroke latency, output throughput, concurrent sessions.

    .venv/bin/python -m bench.terminal                         # defaults below
    .venv/bin/python -m bench.terminal --keystrokes 1000 --megabytes 50 --sessions 10,50,100,200

One `hangar-server` (uvicorn, one process, the `local` driver: real processes in real PTYs)
on a fresh SQLite database in a temporary directory; one instance launched through the API;
every session's ticket asked for through the API like a client would. Measured, with the
same programs on a bare local PTY (os.openpty + the same argv, no sandbox, no websocket) as
the baseline in the same run:

- keystroke round trip: `cat` in a PTY (cooked mode, so the kernel's line discipline echoes
  each byte); one byte sent, the time until its echo is back; sequential, p50/p99;
- output throughput: `sh -c 'yes | head -c <N>'`, MB/s from the first byte sent to the exit
  (the gateway run includes the websocket framing, the exit frame and the close);
- concurrency: S sessions at once on that one API process, each typing one byte every
  `--interval` seconds (a fast typist is ~0.1 s) for `--seconds`, every echo timed; the p99
  over all of them, per S; the largest S whose p99 stays under 50 ms is reported. The load
  generator is this one asyncio process, so at large S it measures itself too (its own
  latency is part of the figure, never subtracted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"
TARGET_P99_MS = 50.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- the server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    db = f"sqlite:///{workdir / 'hangar.db'}"
    env = {
        **os.environ,
        "HANGAR_DATABASE_URL": db,
        "PYTHONPATH": str(ROOT),
        "HANGAR_DRIVER": "local",
        "HANGAR_INSTANCES_DIR": str(workdir / "instances"),
        "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
        "HANGAR_RATE_LIMIT_PER_MINUTE": "1000000",
        "HANGAR_BILLING_SIGNUP_CREDIT": "10000000",
        "HANGAR_TERMINAL_MAX_SESSIONS_PER_ORG": "100000",
        "HANGAR_TERMINAL_IDLE_TIMEOUT_SECONDS": "3600",
        "HANGAR_SAGA_POLL_SECONDS": "0.05",
        "HANGAR_LOG_JSON": "0",
    }
    env.pop("HANGAR_BROKER_URL", None)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    port = _free_port()
    env.update({"HANGAR_HOST": "127.0.0.1", "HANGAR_PORT": str(port)})
    server = ROOT / ".venv" / "bin" / "hangar-server"
    argv = [str(server)] if server.exists() else [sys.executable, "-c", "from hangar.app import main; main()"]
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a busy machine can take a while to import and seed
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/v1/openapi.json", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"hangar-server did not start:\n{(workdir / 'server.log').read_text(errors='replace')[-3000:]}")


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        body = self.http.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": "Bench"}).json()
        self.headers = {"Authorization": f"Bearer {body['secret']}"}

    def launch(self) -> str:
        body = {"name": "bench", "region": "fra1", "instance_type": "cpu-1", "image": "ubuntu-24.04"}
        response = self.http.post("/v1/instances", json=body, headers=self.headers)
        response.raise_for_status()
        instance = str(response.json()["instance"]["id"])
        deadline = time.monotonic() + 60
        while self.http.get(f"/v1/instances/{instance}", headers=self.headers).json()["state"] != "running":
            if time.monotonic() > deadline:
                raise SystemExit("the bench instance did not start")
            time.sleep(0.1)
        return instance

    def session(self, instance: str, command: list[str]) -> dict[str, Any]:
        response = self.http.post(
            f"/v1/instances/{instance}/terminal-sessions", json={"command": command}, headers=self.headers
        )
        response.raise_for_status()
        created: dict[str, Any] = response.json()
        return created


async def attach(created: dict[str, Any]) -> ClientConnection:
    ws = await connect(created["url"], subprotocols=["hangar.terminal.v1"], max_size=None)  # type: ignore[list-item]
    await ws.send(b"\x05" + json.dumps({"ticket": created["ticket"]}).encode())
    return ws


# --- keystrokes -------------------------------------------------------------------------------


async def keystrokes_gateway(api: Api, instance: str, count: int) -> list[float]:
    ws = await attach(api.session(instance, ["cat"]))
    samples = []
    await asyncio.sleep(0.3)  # let cat start
    for i in range(count):
        key = bytes([ord("a") + i % 26])
        started = time.perf_counter()
        await ws.send(b"\x00" + key)
        while True:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            if frame[0] == 1 and key in frame[1:]:
                break
        samples.append((time.perf_counter() - started) * 1000)
    await ws.close()
    return samples


def _bare_pty(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    return proc, master


def keystrokes_bare(count: int) -> list[float]:
    proc, master = _bare_pty(["cat"])
    samples = []
    time.sleep(0.2)
    for i in range(count):
        key = bytes([ord("a") + i % 26])
        started = time.perf_counter()
        os.write(master, key)
        while key not in os.read(master, 4096):
            pass
        samples.append((time.perf_counter() - started) * 1000)
    proc.kill()
    proc.wait()
    os.close(master)
    return samples


# --- throughput -------------------------------------------------------------------------------


def _yes(nbytes: int) -> list[str]:
    return ["sh", "-c", f"yes | head -c {nbytes}"]


async def throughput_gateway(api: Api, instance: str, nbytes: int) -> tuple[float, int]:
    created = api.session(instance, _yes(nbytes))
    started = time.perf_counter()
    ws = await attach(created)
    received = 0
    async for frame in ws:
        assert isinstance(frame, bytes)
        if frame[0] == 1:
            received += len(frame) - 1
        elif frame[0] == 3:
            break
    elapsed = time.perf_counter() - started
    await ws.close()
    return elapsed, received


def throughput_bare(nbytes: int) -> tuple[float, int]:
    started = time.perf_counter()
    proc, master = _bare_pty(_yes(nbytes))
    received = 0
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        received += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - started
    os.close(master)
    return elapsed, received


# --- concurrency ------------------------------------------------------------------------------


async def concurrent(api: Api, instance: str, sessions: int, seconds: float, interval: float) -> list[float]:
    created = [api.session(instance, ["cat"]) for _ in range(sessions)]
    sockets = await asyncio.gather(*(attach(c) for c in created))

    async def ready(ws: ClientConnection) -> None:
        # Attaching spawns `cat` in the instance (serialised per instance by the driver's
        # lock); time only sessions that are up: one untimed round trip each first.
        await ws.send(b"\x00.")
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes) and frame[0] == 1 and b"." in frame[1:]:
                return

    started = time.perf_counter()
    await asyncio.gather(*(ready(ws) for ws in sockets))
    print(f"  ({sessions} sessions attached and echoing after {time.perf_counter() - started:.2f} s)")
    samples: list[float] = []

    async def typist(ws: ClientConnection, offset: float) -> None:
        await asyncio.sleep(offset)
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            key = bytes([ord("a") + i % 26])
            i += 1
            started = time.perf_counter()
            await ws.send(b"\x00" + key)
            while True:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                if frame[0] == 1 and key in frame[1:]:
                    break
            samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))

    await asyncio.gather(*(typist(ws, interval * k / sessions) for k, ws in enumerate(sockets)))
    await asyncio.gather(*(ws.close() for ws in sockets))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keystrokes", type=int, default=500)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--sessions", default="10,50,100,200,400")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    if shutil.which("yes") is None or shutil.which("cat") is None:
        raise SystemExit("needs yes and cat on PATH")
    nbytes = args.megabytes * 1_000_000
    with tempfile.TemporaryDirectory(prefix="hangar-bench-terminal-") as tmp:
        proc, url = start_server(Path(tmp))
        try:
            api = Api(url)
            instance = api.launch()
            print(f"server {url} (one uvicorn process, local driver), instance {instance}")

            bare = keystrokes_bare(args.keystrokes)
            gw = asyncio.run(keystrokes_gateway(api, instance, args.keystrokes))
            print(f"\nkeystroke round trip ({args.keystrokes} sequential keystrokes, `cat` in a PTY, ms)")
            print(f"  {'':<10} {'p50':>8} {'p99':>8} {'mean':>8}")
            for label, s in (("bare pty", bare), ("gateway", gw)):
                print(f"  {label:<10} {percentile(s, 50):8.3f} {percentile(s, 99):8.3f} {statistics.fmean(s):8.3f}")

            b_elapsed, b_bytes = throughput_bare(nbytes)
            g_elapsed, g_bytes = asyncio.run(throughput_gateway(api, instance, nbytes))
            print(f"\noutput throughput (`yes | head -c {nbytes}`; MB/s of the program's output — the PTY's")
            print("  onlcr turns each \\n into \\r\\n, so 1.5x as many bytes reach the reader)")
            for label, elapsed, got in (("bare pty", b_elapsed, b_bytes), ("gateway", g_elapsed, g_bytes)):
                print(f"  {label:<10} {nbytes / elapsed / 1e6:8.1f} MB/s  ({got} bytes read in {elapsed:.2f} s)")

            print(f"\nconcurrent sessions (one keystroke per {args.interval:g} s each, {args.seconds:g} s, ms)")
            print(f"  {'sessions':>8} {'samples':>8} {'p50':>8} {'p99':>8} {'max':>8}")
            reached = 0
            for n in (int(x) for x in args.sessions.split(",")):
                samples = asyncio.run(concurrent(api, instance, n, args.seconds, args.interval))
                p99 = percentile(samples, 99)
                print(f"  {n:8d} {len(samples):8d} {percentile(samples, 50):8.2f} {p99:8.2f} {max(samples):8.2f}")
                if p99 < TARGET_P99_MS:
                    reached = max(reached, n)
            print(f"\nlargest tried N with p99 keystroke latency < {TARGET_P99_MS:g} ms: {reached}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
