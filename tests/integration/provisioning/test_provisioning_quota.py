"""The API's quota check against claims committing at the same moment.

createInstance counts the organization's pending instances (provisioning's rows) and then
reads its usage (inventory's quota row). A claim that committed between those two reads used
to be counted twice — once as pending, once as in use — and the tenant got a spurious 409.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from handlers.provisioning import configuration, saga, services
from handlers.provisioning.tables import Instance
from hangar.context import Principal, RequestContext
from hangar.db import make_session_factory, utcnow
from hangar.drivers.sim import SimDriver

pytestmark = pytest.mark.postgres


def _ctx(session: Session, organization_id: uuid.UUID) -> RequestContext:
    principal = Principal(organization_id, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"instances:write"}))
    return RequestContext(request_id="req_test", session=session, principal=principal)


def _create(sessions: sessionmaker[Session], organization_id: uuid.UUID) -> Instance:
    with sessions() as session, session.begin():
        return services.create_instance(
            _ctx(session, organization_id), name="web", region="fra1", instance_type="cpu-2", image="ubuntu-24.04"
        )[0]


def _someone_waits_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())


def test_a_claim_committing_during_the_check_is_counted_once(
    engine: Engine, make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("on SQLite the create's first write holds the database lock: no claim can commit meanwhile")
    settings = make_settings(quota_vcpus=4)
    monkeypatch.setattr(configuration._holder, "_current", settings)
    sessions = make_session_factory(engine)
    org = uuid.uuid4()
    first = _create(sessions, org)  # 2 of 4 vCPUs, pending

    # A saga step claims `first` and holds its transaction open …
    claimed, reading_usage, committed = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def claim_step() -> None:
        try:
            with sessions() as session, session.begin():
                saga.advance(session, first.id, utcnow(), SimDriver(seed=1, delay_ms=0, failure_rate=0), settings)
                claimed.set()
                # … until the create either blocks on it (fixed) or reaches the usage read.
                deadline = time.monotonic() + 10
                while not reading_usage.is_set() and not _someone_waits_for_a_lock(engine):
                    assert time.monotonic() < deadline, "the create neither blocked nor read"
                    time.sleep(0.01)
        except BaseException as exc:
            failures.append(exc)
        finally:
            committed.set()

    worker = threading.Thread(target=claim_step)
    worker.start()
    assert claimed.wait(10)
    with sessions() as session:

        @event.listens_for(session, "do_orm_execute")
        def before_usage_read(state: Any) -> None:
            if state.is_select and "org_quotas" in str(state.statement):
                reading_usage.set()
                assert committed.wait(10)

        with session.begin():
            second, _ = services.create_instance(
                _ctx(session, org), name="web-2", region="fra1", instance_type="cpu-2", image="ubuntu-24.04"
            )
    worker.join(10)
    assert failures == []
    assert second.state == "pending"  # 2 in use + 2 now = 4 of 4: allowed, not a 409
