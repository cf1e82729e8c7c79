"""A production-shaped Hangar on one machine: N API processes and M workers on one database,
optionally over RabbitMQ. Used by the multi-process provisioning test and by
bench/provision_e2e.py, so both exercise the same topology.

API processes run with HANGAR_RUN_RELAY=0 (they only answer requests and write the outbox);
workers (`hangar-worker`) run the outbox relay, the event consumers and the provisioning
saga runner. With a broker the relay publishes to RabbitMQ and each worker consumes the
durable queues; without one each worker relays in-process to its own consumers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(script: str, module: str) -> list[str]:
    installed = ROOT / ".venv" / "bin" / script
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", module]


@dataclass
class Cluster:
    database_url: str
    logs: Path
    apis: int = 2
    workers: int = 2
    broker_url: str | None = None
    # Extra HANGAR_* settings for every process (driver, delays, quotas…).
    env: dict[str, str] = field(default_factory=dict)
    # A private exchange and queue prefix, so runs sharing a broker never see each other's events.
    namespace: str = field(default_factory=lambda: f"hangar.run-{uuid.uuid4().hex[:10]}")
    urls: list[str] = field(default_factory=list)
    _processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def _environment(self, **extra: str) -> dict[str, str]:
        environment = {
            **os.environ,
            "HANGAR_DATABASE_URL": self.database_url,
            "PYTHONPATH": str(ROOT),
            **self.env,
            **extra,
        }
        environment.pop("HANGAR_BROKER_URL", None)
        if self.broker_url:
            environment["HANGAR_BROKER_URL"] = self.broker_url
            environment["HANGAR_AMQP_EXCHANGE"] = self.namespace
            environment["HANGAR_AMQP_QUEUE_PREFIX"] = self.namespace
        return environment

    def _spawn(self, name: str, argv: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
        self._processes.append((name, process, log))
        return process

    def start(self, timeout: float = 60.0) -> Cluster:
        # Workers first: their queues must exist before the first event is published.
        for index in range(self.workers):
            self._spawn(f"worker-{index}", _command("hangar-worker", "hangar.worker"), self._environment())
        for index in range(self.workers):
            self._wait_for_log(f"worker-{index}", "hangar-worker: started", timeout)
        for index in range(self.apis):
            port = _free_port()
            environment = self._environment(
                HANGAR_PORT=str(port), HANGAR_HOST="127.0.0.1", HANGAR_RUN_RELAY="0", HANGAR_VALIDATE_RESPONSES="0"
            )
            self._spawn(f"api-{index}", _command("hangar-server", "hangar.app"), environment)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url in self.urls:
            self._wait_for_http(url, timeout)
        return self

    def _find(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        for found, process, log in self._processes:
            if found == name:
                return process, log
        raise KeyError(name)

    def output(self, name: str) -> str:
        return self._find(name)[1].read_text(errors="replace")

    def _wait_for_log(self, name: str, marker: str, timeout: float) -> None:
        process, log = self._find(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in log.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.output(name)}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not log {marker!r} within {timeout} s:\n{self.output(name)}")

    def _wait_for_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process, _ in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.output(name)}")
            try:
                if httpx.get(url + "/v1/regions", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{url} did not answer within {timeout} s")

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker mid-flight (no clean shutdown), for crash-resume checks."""
        self._find(f"worker-{index}")[0].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        for _, process, _ in self._processes:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in self._processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.broker_url:
            self._delete_broker_objects()

    def _delete_broker_objects(self) -> None:
        """Remove this run's exchange and queues (they are durable by contract)."""
        import asyncio

        import aio_pika

        async def cleanup() -> None:
            connection = await aio_pika.connect(self.broker_url)
            try:
                channel = await connection.channel()
                from hangar.bus import Bus, load_consumers
                from hangar.db import make_engine, make_session_factory

                engine = make_engine(self.database_url)
                bus = Bus(make_session_factory(engine))
                load_consumers(bus)
                engine.dispose()
                names = [f"{self.namespace}.{consumer}" for consumer in bus.consumers()]
                names.append(f"{self.namespace}.dead-letter")
                for name in names:
                    try:
                        await channel.queue_delete(name)
                    except aio_pika.exceptions.AMQPError:
                        channel = await connection.channel()
                for exchange in (self.namespace, f"{self.namespace}.dead-letter"):
                    try:
                        await channel.exchange_delete(exchange)
                    except aio_pika.exceptions.AMQPError:
                        channel = await connection.channel()
            finally:
                await connection.close()

        asyncio.run(cleanup())

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
