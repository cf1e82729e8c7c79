"""Fixtures for the multi-process tests: a PostgreSQL database of their own and the RabbitMQ
they run over. Both are required — several processes sharing work through SKIP LOCKED and a
broker is the point — so each skips LOUDLY, naming the service, when it is missing.

The PostgreSQL server is the suite's (`--db=postgresql`, a postgresql URL in `--db` or
HANGAR_TEST_DATABASE_URL), else the default one at 127.0.0.1:5432, whichever backend the
rest of the run uses: on SQLite these tests could not run at all. The database is a fresh
one, migrated with alembic and dropped afterwards (bench.cluster.fresh_database), because
the cluster's processes outlive any one transaction and must not share tables with other
tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench.cluster import ServiceUnavailableError, fresh_database, require_broker

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BROKER_URL = os.environ.get("HANGAR_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def cluster_database(databases: Any) -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own (dropped afterwards)."""
    server = databases.pg_url or DEFAULT_PG
    try:
        with fresh_database(server, prefix="hangar_scale") as url:
            yield url
    except ServiceUnavailableError as exc:
        pytest.skip(f"{exc} — MULTI-PROCESS TEST SKIPPED (start it with scripts/services.sh)")


@pytest.fixture
def broker_url() -> str:
    """The RabbitMQ at HANGAR_TEST_BROKER_URL (default guest:guest@127.0.0.1:5672)."""
    try:
        require_broker(BROKER_URL)
    except ServiceUnavailableError as exc:
        pytest.skip(f"{exc} — MULTI-PROCESS TEST SKIPPED (start it with scripts/services.sh)")
    return BROKER_URL
