"""Shared fixtures: a migrated database per test, the app, a client, a signed-up tenant, and
a live `hangar-server`.

Databases are built the way production builds them (`alembic upgrade head`), once per
session, then handed out fresh per test:
- SQLite (default): the migrated file is copied for each test (a copy is ~1 ms; migrating
  is ~1 s).
- PostgreSQL: with `--db=postgresql` (127.0.0.1:5432/test) or HANGAR_TEST_DATABASE_URL set to a
  postgresql URL, one schema of its own per session (so parallel runs never share tables);
  every table is truncated before each test. Tests marked `postgres` are the
  database-facing ones; scripts/test.sh runs them again on PostgreSQL with `-m postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PASSWORD = "correct-horse-battery-staple"
# payments: the webhook secret every test app and live server is configured with (the sandbox
# provider signs with it; tests sign their own events with it), and a short sandbox delay.
PAYMENTS_WEBHOOK_SECRET = "whsec_test_suite_0123456789abcdef"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        default=None,
        help="sqlite (default), postgresql (127.0.0.1:5432/test) or a postgresql+psycopg:// URL; "
        "HANGAR_TEST_DATABASE_URL does the same",
    )


def _backend(config: pytest.Config) -> str | None:
    """The PostgreSQL URL to test on, or None for SQLite."""
    choice = config.getoption("--db") or os.environ.get("HANGAR_TEST_DATABASE_URL") or "sqlite"
    if choice.startswith("sqlite"):
        return None
    if choice in ("postgresql", "postgres", "pg"):
        return DEFAULT_PG
    if choice.startswith("postgresql://"):
        choice = "postgresql+psycopg://" + choice[len("postgresql://") :]
    return choice


def migrate(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def _with_search_path(url: str, schema: str) -> str:
    return make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


class _Databases:
    """Hands out fresh, migrated databases for one backend."""

    def __init__(self, tmp: pytest.TempPathFactory, pg_url: str | None) -> None:
        self._tmp = tmp
        self.pg_url = pg_url
        self._template: Path | None = None
        self._schemas: list[str] = []
        self._shared: str | None = None
        self._tables: list[str] = []

    @property
    def is_postgres(self) -> bool:
        return self.pg_url is not None

    def _new_schema(self) -> str:
        """A migrated schema of its own; dropped when the session ends."""
        assert self.pg_url is not None
        admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
        schema = f"hangar_test_{uuid.uuid4().hex[:12]}"
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except OperationalError as exc:
            pytest.skip(
                f"POSTGRESQL NOT REACHABLE at {self.pg_url}: {exc}. Start it with scripts/services.sh "
                "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)."
            )
        finally:
            admin.dispose()
        self._schemas.append(schema)
        url = _with_search_path(self.pg_url, schema)
        migrate(url)
        return url

    def fresh(self) -> str:
        """A URL to an empty, migrated database no other test is using."""
        if self.pg_url is not None:
            if self._shared is None:
                self._shared = self._new_schema()
                engine = create_engine(self._shared)
                with engine.connect() as conn:
                    self._tables = list(
                        conn.scalars(
                            text(
                                "SELECT tablename FROM pg_tables "
                                "WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
                            )
                        )
                    )
                engine.dispose()
            engine = create_engine(self._shared)
            with engine.begin() as conn:
                if self._tables:
                    conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in self._tables) + " CASCADE"))
            engine.dispose()
            return self._shared
        return self.dedicated()

    def dedicated(self) -> str:
        """Like `fresh`, but never reused or truncated by later tests (for servers that
        outlive one test)."""
        if self.pg_url is not None:
            return self._new_schema()
        if self._template is None:
            self._template = self._tmp.mktemp("db-template") / "template.db"
            migrate(f"sqlite:///{self._template}")
        target = self._tmp.mktemp("db") / "hangar.db"
        shutil.copyfile(self._template, target)
        return f"sqlite:///{target}"

    def close(self) -> None:
        if self.pg_url is None or not self._schemas:
            return
        admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for schema in self._schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Databases]:
    dbs = _Databases(tmp_path_factory, _backend(request.config))
    yield dbs
    dbs.close()


@pytest.fixture
def database_url(databases: _Databases) -> str:
    """A fresh, migrated database for this test (SQLite, or PostgreSQL when selected)."""
    return databases.fresh()


@pytest.fixture(autouse=True)
def billing_credit_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read from the environment (Settings.from_env: a context's configuration
    before any app prepared it, a subprocess) give new organizations plenty of credit, like
    make_settings: launches need a billing hold. Billing's own tests pass explicit settings."""
    if "HANGAR_BILLING_SIGNUP_CREDIT" not in os.environ:
        monkeypatch.setenv("HANGAR_BILLING_SIGNUP_CREDIT", "10000000")


@pytest.fixture
def make_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """make_settings(**overrides) → Settings on this test's database. Test defaults:
    response validation on, no relay thread, limits high enough not to get in the way, the
    `sim` host driver with short delays (tests of the `local` driver ask for it)."""
    from hangar.config import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "validate_responses": True,
            "run_relay": False,
            "rate_limit_per_minute": 10_000,
            "public_rate_limit_per_minute": 10_000,
            "driver": "sim",
            "sim_delay_ms": 30,
            "saga_poll_seconds": 0.02,
            "instances_dir": tmp_path_factory.mktemp("instances"),
            # payments: a known webhook secret and a short sandbox delay
            "payments_webhook_secrets": (PAYMENTS_WEBHOOK_SECRET,),
            "payments_sandbox_delay_ms": 50,
            # Launches need credit (a hold per create/start): plenty, so tests that are not
            # about billing never meet a 402. Billing's own tests pass 0 and top up.
            "billing_signup_credit": 10_000_000,
            # storage: the sim volume driver and its runner as quick as the saga
            "storage_sim_delay_ms": 30,
            "storage_poll_seconds": 0.02,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Any]) -> Any:
    return make_settings()


@pytest.fixture
def cheap_passwords() -> Iterator[None]:
    """argon2 at its cheapest parameters (the default costs ~0.1 s per hash)."""
    from argon2 import PasswordHasher, profiles

    from handlers.identity import passwords

    previous = passwords.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))
    yield
    passwords.use_hasher(previous)


@pytest.fixture
def app(settings: Any, cheap_passwords: None) -> Any:
    """The real app (generated routing + handlers) on this test's database."""
    from hangar.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    """A Starlette TestClient with the app's lifespan running."""
    from starlette.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@dataclass(frozen=True)
class Tenant:
    organization_id: str
    user_id: str
    api_key_id: str
    secret: str
    email: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def __iter__(self) -> Iterator[str]:  # `org_id, secret = signup()`
        return iter((self.organization_id, self.secret))


@pytest.fixture
def signup(client: Any) -> Callable[..., Tenant]:
    """signup(email=None, organization="Acme") → a new tenant with its owner's API key."""

    def sign_up(email: str | None = None, organization: str = "Acme") -> Tenant:
        email = email or f"owner-{uuid.uuid4().hex[:10]}@example.com"
        response = client.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": organization})
        assert response.status_code == 201, response.text
        body = response.json()
        return Tenant(body["organization"]["id"], body["user"]["id"], body["api_key"]["id"], body["secret"], email)

    return sign_up


# -- a real server in a subprocess -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command() -> list[str]:
    script = ROOT / ".venv" / "bin" / "hangar-server"
    if script.exists():
        return [str(script)]
    # Not installed as a console script (no `pip install -e .` yet): same entry point.
    return [sys.executable, "-c", "from hangar.app import main; main()"]


class LiveServer(str):
    """The base URL (it is a str: `live_server + "/v1/me"`), plus what a test may need."""

    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def __new__(cls, url: str, database_url: str, process: subprocess.Popen[bytes], log: Path) -> LiveServer:
        server = super().__new__(cls, url)
        server.url, server.database_url, server.process, server.log = url, database_url, process, log
        return server

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(database_url: str, log: Path, **env: str) -> LiveServer:
    port = free_port()
    environment = {
        **os.environ,
        "HANGAR_DATABASE_URL": database_url,
        "HANGAR_HOST": "127.0.0.1",
        "HANGAR_PORT": str(port),
        "HANGAR_VALIDATE_RESPONSES": "1",
        "PYTHONPATH": str(ROOT),
        # The simulated fleet with short delays, like make_settings: a test that wants real
        # local processes passes HANGAR_DRIVER=local (their directories go beside the log).
        "HANGAR_DRIVER": "sim",
        "HANGAR_SIM_DELAY_MS": "50",
        "HANGAR_SAGA_POLL_SECONDS": "0.05",
        "HANGAR_INSTANCES_DIR": str(log.parent / "instances"),
        "HANGAR_PAYMENTS_WEBHOOK_SECRETS": PAYMENTS_WEBHOOK_SECRET,  # payments
        "HANGAR_PAYMENTS_SANDBOX_DELAY_MS": "50",
        "HANGAR_STORAGE_SIM_DELAY_MS": "50",  # storage
        "HANGAR_STORAGE_POLL_SECONDS": "0.05",
        # Credit for launches (billing holds one per create/start), like make_settings.
        "HANGAR_BILLING_SIGNUP_CREDIT": "10000000",
        # A module shares one key and one address across many calls (the SDK round trips poll
        # top-ups, volumes and actions, sign up several tenants and post public webhooks): the
        # limits are not under test here (tests/unit/runtime/test_runtime_ratelimit.py is).
        "HANGAR_RATE_LIMIT_PER_MINUTE": "100000",
        "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
        **env,
    }
    environment.pop("HANGAR_BROKER_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(server_command(), cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hangar-server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/v1/openapi.json", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"hangar-server did not answer within 30 s:\n{server.output()}")


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def hangar_server_command() -> list[str]:
    """The argv that starts `hangar-server` (configure it through HANGAR_* variables)."""
    return server_command()


@pytest.fixture(scope="module")
def live_server(databases: _Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`hangar-server` on a free port with a fresh database of its own (one per test module).
    It is the base URL; `.database_url`, `.output()` and `.process` are there too."""
    server = start_server(databases.dedicated(), tmp_path_factory.mktemp("live") / "server.log")
    try:
        yield server
    finally:
        stop_server(server)
