"""Fixtures for the event tests: a throw-away database with every table.

SQLite by default (a temp file, `Base.metadata.create_all`); the `pg_session_factory`
fixture gives the same on PostgreSQL (HANGAR_TEST_DATABASE_URL) in a schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from hangar import inbox, outbox
from hangar.db import Base, make_engine, make_session_factory

# Importing the modules registers their tables on Base.metadata; create_all makes them all.
EVENT_TABLES = (outbox.OutboxEvent, inbox.ProcessedEvent)

PG_URL = os.environ.get("HANGAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def pg_session_factory() -> Iterator[sessionmaker[Session]]:
    """The outbox and inbox tables on PostgreSQL, in a schema dropped afterwards."""
    try:
        import psycopg

        psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3).close()
    except Exception as exc:
        pytest.skip(f"PostgreSQL NOT REACHABLE at {PG_URL} ({exc}); start it with scripts/services.sh")
    schema = f"events_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    Base.metadata.create_all(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


BROKER_URL = os.environ.get("HANGAR_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The RabbitMQ on 127.0.0.1:5672, started with `rabbitmq-server -detached` if it is down."""
    parts = urlsplit(BROKER_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if not _port_open(host, port) and shutil.which("rabbitmq-server"):
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, check=False, timeout=60)
        for _ in range(60):
            if _port_open(host, port):
                break
            time.sleep(1)
    if not _port_open(host, port):
        pytest.skip(f"RABBITMQ NOT REACHABLE at {host}:{port} and could not be started — AMQP TESTS SKIPPED")
    return BROKER_URL


@dataclass
class AmqpNames:
    exchange: str
    prefix: str
    queues: list[str] = field(default_factory=list)  # the test adds the queues it creates


@pytest.fixture
def amqp_names(broker_url: str) -> Iterator[AmqpNames]:
    """A throw-away exchange and queue prefix for one test, deleted afterwards together with
    the dead-letter exchange and the queues the test listed."""
    tag = uuid.uuid4().hex[:10]
    names = AmqpNames(exchange=f"hangar.test.{tag}", prefix=f"hangar.test.{tag}")
    yield names

    async def cleanup() -> None:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            for queue in names.queues:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for exchange in (names.exchange, f"{names.exchange}.dead-letter"):
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange)

    asyncio.run(cleanup())
