"""A production-shaped Hangar on one machine: N API processes and M workers on one database,
optionally over RabbitMQ. Used by the multi-process provisioning test
(tests/scale/test_multiprocess_launch.py) and by bench/provision_e2e.py, so both exercise
the same topology and drive it the same way.

API processes run with HANGAR_RUN_RELAY=0 (they only answer requests and write the outbox);
workers (`hangar-worker`) run the outbox relay, the event consumers and the provisioning
saga runner. With a broker the relay publishes to RabbitMQ and each worker consumes the
durable queues; without one each worker relays in-process to its own consumers.

Besides `Cluster`, the pieces both callers need and nothing else provides:
- `fresh_database(server_url)`: a PostgreSQL database of its own, migrated with alembic the
  way production is, dropped afterwards (a multi-process run cannot use SQLite: the saga's
  runners share work through SKIP LOCKED);
- `require_broker(url)`: RabbitMQ reachable, else `ServiceUnavailableError` naming it;
- `Cluster.admin(...)` (`hangar-admin` on the cluster's database) and
  `Cluster.queue_depths()` (what waits in this run's queues, the dead-letter queue included);
- `sign_up`, `launch_many` (concurrent creates, each with an Idempotency-Key, spread over
  every API process) and `wait_until_settled` (no instance left in a transitional state).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.exc import OperationalError

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


class ServiceUnavailableError(RuntimeError):
    """PostgreSQL or RabbitMQ cannot be reached; the message names which and where (tests
    skip with it, benchmarks exit with it)."""


def postgres_url(url: str) -> str:
    """`url` with the psycopg 3 driver SQLAlchemy needs (`postgresql://` is accepted too)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if not url.startswith("postgresql+psycopg://"):
        raise ValueError(f"expected a postgresql:// URL, got {url!r}")
    return url


@contextmanager
def fresh_database(server_url: str, prefix: str = "hangar_run") -> Iterator[str]:
    """A new PostgreSQL database on `server_url`'s server, migrated to head with alembic
    (what `make migrate` does), dropped on exit even if processes still hold connections.
    A database rather than a schema: every process of a cluster then needs nothing but the
    URL, and dropping it cannot touch anything else on the server."""
    from alembic import command
    from alembic.config import Config

    server = make_url(postgres_url(server_url))
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        label = server.render_as_string(hide_password=True)
        raise ServiceUnavailableError(f"POSTGRESQL NOT REACHABLE at {label}: {exc}") from exc
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        config = Config(str(ROOT / "alembic.ini"))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(config, "head")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def require_broker(url: str) -> None:
    """Raise ServiceUnavailableError unless RabbitMQ accepts a TCP connection at `url`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        raise ServiceUnavailableError(f"RABBITMQ NOT REACHABLE at {host}:{port}: {exc}") from exc


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
        process = self._find(f"worker-{index}")[0]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def exited(self) -> dict[str, int]:
        """{process name: exit status} of every process that has ended (killed ones too)."""
        return {name: code for name, process, _ in self._processes if (code := process.poll()) is not None}

    def cpu_seconds(self) -> dict[str, float]:
        """{process name: user + system CPU seconds so far} of every live process, from
        /proc/PID/stat (Linux; {} elsewhere). Per-request CPU is the steadier figure on a
        machine shared with other jobs, where wall-clock throughput is not."""
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        used: dict[str, float] = {}
        for name, process, _ in self._processes:
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
        return used

    def admin(self, *argv: str) -> str:
        """Run `hangar-admin ARGV…` on the cluster's database and return what it printed;
        RuntimeError with its output if it fails."""
        result = subprocess.run(
            [*_command("hangar-admin", "hangar.admin"), *argv],
            cwd=ROOT,
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"hangar-admin {' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def queue_names(self) -> list[str]:
        """This run's durable queues: one per bus consumer, then the dead-letter queue."""
        from hangar.bus import Bus, load_consumers
        from hangar.db import make_engine, make_session_factory

        engine = make_engine(self.database_url)
        bus = Bus(make_session_factory(engine))
        load_consumers(bus)
        engine.dispose()
        return [f"{self.namespace}.{consumer}" for consumer in sorted(bus.consumers())] + [
            f"{self.namespace}.dead-letter"
        ]

    def queue_depths(self) -> dict[str, int]:
        """{queue: messages ready in it} for this run's queues (passive declares: a queue is
        never created by looking). Needs the broker; -1 for a queue that does not exist."""
        import aio_pika

        if not self.broker_url:
            raise RuntimeError("this cluster runs without a broker")
        broker_url = self.broker_url

        async def depths() -> dict[str, int]:
            found: dict[str, int] = {}
            connection = await aio_pika.connect(broker_url)
            try:
                for name in self.queue_names():
                    channel = await connection.channel()
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                        found[name] = int(queue.declaration_result.message_count or 0)
                    except aio_pika.exceptions.ChannelClosed:
                        found[name] = -1
            finally:
                await connection.close()
            return found

        return asyncio.run(depths())

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
        import aio_pika

        names = self.queue_names()

        async def cleanup() -> None:
            connection = await aio_pika.connect(self.broker_url)
            try:
                channel = await connection.channel()
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


# ---------------------------------------------------------------------- driving a cluster


@dataclass(frozen=True)
class Tenant:
    """An organization's owner, signed up through the API."""

    organization_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def sign_up(url: str, organization: str) -> Tenant:
    """A new organization through `POST /v1/signup` (the public path a tenant takes)."""
    email = f"owner-{uuid.uuid4().hex[:12]}@example.com"
    response = httpx.post(
        url + "/v1/signup",
        json={"email": email, "password": PASSWORD, "organization": organization},
        timeout=60,
    )
    if response.status_code != 201:
        raise RuntimeError(f"signup at {url} answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    return Tenant(body["organization"]["id"], body["secret"])


@dataclass(frozen=True)
class Launch:
    """One `POST /v1/instances` as the client saw it (monotonic seconds)."""

    index: int
    url: str
    idempotency_key: str
    status: int  # the final answer's status; 0 when no answer came at all
    instance_id: str | None
    detail: str  # the body of a refusal, or the transport error
    sent: float
    answered: float
    tries: int


def launch_many(
    urls: Sequence[str],
    tenants: Sequence[Tenant],
    count: int,
    body_for: Callable[[int], dict[str, Any]],
    *,
    threads: int = 32,
    tries: int = 4,
    timeout: float = 120.0,
) -> list[Launch]:
    """`count` creates, `threads` at a time: create i goes to urls[i % len(urls)] as
    tenants[i % len(tenants)] with body `body_for(i)` and an Idempotency-Key of its own.
    A transport error, a 5xx or a 409 `idempotency-key-in-flight` is retried with the SAME
    key (what the key is for: a retry can never launch twice), up to `tries` times."""
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=timeout)
        made: httpx.Client = local.client
        return made

    def one(index: int) -> Launch:
        url = urls[index % len(urls)]
        tenant = tenants[index % len(tenants)]
        key = str(uuid.uuid4())
        headers = {**tenant.headers, "Idempotency-Key": key}
        body = body_for(index)
        sent = time.monotonic()
        status, instance_id, detail = 0, None, ""
        attempt = 0
        while attempt < tries:
            attempt += 1
            try:
                response = client().post(url + "/v1/instances", json=body, headers=headers)
            except httpx.TransportError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
                continue
            status = response.status_code
            if status == 202:
                instance_id, detail = response.json()["instance"]["id"], ""
                break
            detail = response.text[:500]
            if status < 500 and "idempotency-key-in-flight" not in detail:
                break
            time.sleep(0.05 * attempt)  # back off before retrying the same key
        return Launch(index, url, key, status, instance_id, detail, sent, time.monotonic(), attempt)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="launch") as pool:
        return list(pool.map(one, range(count)))


def instance_states(database_url: str) -> dict[str, int]:
    """{state: how many instances} straight from the database."""
    from handlers.provisioning.tables import Instance

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Instance.state, func.count()).group_by(Instance.state)).all()
    finally:
        engine.dispose()
    return {str(state): int(n) for state, n in rows}


def wait_until_settled(database_url: str, expected: int, timeout: float, interval: float = 0.25) -> dict[str, int]:
    """Poll until `expected` instances exist and none is in a transitional state (the saga
    has nothing left to do); the final {state: count}. TimeoutError with the counts seen
    last if that does not happen within `timeout` seconds."""
    from handlers.provisioning import states

    deadline = time.monotonic() + timeout
    while True:
        counts = instance_states(database_url)
        busy = sum(n for state, n in counts.items() if state in states.TRANSITIONAL)
        if busy == 0 and sum(counts.values()) >= expected:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"instances not settled within {timeout:.0f} s: {counts}")
        time.sleep(interval)
