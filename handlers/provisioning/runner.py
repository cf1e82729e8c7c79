"""The saga runner: a background thread that runs every due saga step (saga.advance).

Each pass selects a small batch of due instances (transitional state, `next_run_at` ≤ now)
and advances each one in a transaction of its own, so one slow or broken instance never
holds up the others, and a lock is held for one step only. Any number of runners, in any
number of processes, share the work through the database:

- PostgreSQL: the batch query and the per-instance lock use `FOR UPDATE SKIP LOCKED`: an
  instance another runner is stepping right now is skipped, not waited for.
- SQLite: no SKIP LOCKED; the per-instance compare-and-set (locks.py) makes the second of
  two runners that picked the same instance find it already stepped (and do the next
  step, if one is due, or nothing).

A step that raises is logged, rolled back, and its instance is retried after a backoff
(`step_errors`, `last_error`, `next_run_at` pushed out) — the loop itself never dies.
`kick()` wakes the runner at once; `kick_local()` wakes every runner of this process (the
`instance.requested` consumer and the API operations call it after their commit).
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from handlers.provisioning import saga, states
from handlers.provisioning.tables import Instance
from hangar.config import Settings
from hangar.db import utcnow
from hangar.drivers import HostDriver

log = logging.getLogger(__name__)

_LOCAL: weakref.WeakSet[SagaRunner] = weakref.WeakSet()  # started runners of this process
_TRANSITIONAL = sorted(states.TRANSITIONAL)


class SagaRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        driver: HostDriver,
        *,
        batch_size: int = 20,
        clock: Callable[[], datetime] = utcnow,
        close_driver: bool = True,
    ) -> None:
        self.settings = settings
        self.driver = driver
        self.batch_size = batch_size
        self._sessions = sessions
        self._clock = clock
        self._close_driver = close_driver
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pass_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="hangar-saga", daemon=True)
        self._thread.start()
        _LOCAL.add(self)
        log.info("saga runner started (driver %s, poll %.2fs)", self.driver.name, self.settings.saga_poll_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the step in hand, stop, and close the driver (instances keep running)."""
        _LOCAL.discard(self)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("saga runner did not stop within %.0fs", timeout)
            self._thread = None
        if self._close_driver:
            self.driver.close()

    def kick(self) -> None:
        """Look for due steps now rather than at the next poll."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                stepped = self.run_once()
            except Exception:  # the database is down, …: log and look again at the next poll
                log.exception("saga runner pass failed; retrying in %.2fs", self.settings.saga_poll_seconds)
                stepped = 0
            if stepped == 0:
                self._wake.wait(self.settings.saga_poll_seconds)

    # ------------------------------------------------------------------ work

    def run_once(self) -> int:
        """One pass: advance every instance due now by one step; the number of steps run.
        (A step that makes the next one due at once is picked up by the following pass.)"""
        with self._pass_lock:
            stepped = 0
            for instance_id in self.due(self._clock()):
                if self._stopping.is_set():
                    break
                if self.step(instance_id) is not None:
                    stepped += 1
            return stepped

    def due(self, now: datetime) -> list[uuid.UUID]:
        """Up to `batch_size` due instances, oldest due first, skipping any another runner
        is stepping at this moment (PostgreSQL)."""
        with self._sessions() as session, session.begin():
            query = (
                select(Instance.id)
                .where(Instance.next_run_at <= now, Instance.state.in_(_TRANSITIONAL))
                .order_by(Instance.next_run_at)
                .limit(self.batch_size)
            )
            if _postgres(session):
                query = query.with_for_update(skip_locked=True)
            return list(session.scalars(query))

    def step(self, instance_id: uuid.UUID) -> str | None:
        """Advance one instance by one step in a transaction of its own; the step's name, or
        None (not due any more, taken by another runner, or the step failed and will be
        retried after a backoff)."""
        now = self._clock()
        try:
            with self._sessions() as session, session.begin():
                if _postgres(session):
                    # Skip it if another runner holds it; advance() then locks it again (a no-op).
                    held = session.scalar(
                        select(Instance.id).where(Instance.id == instance_id).with_for_update(skip_locked=True)
                    )
                    if held is None:
                        return None
                return saga.advance(session, instance_id, now, self.driver, self.settings)
        except Exception as exc:
            self._back_off(instance_id, exc, now)
            return None

    def _back_off(self, instance_id: uuid.UUID, exc: BaseException, now: datetime) -> None:
        try:
            with self._sessions() as session, session.begin():
                errors = session.scalar(select(Instance.step_errors).where(Instance.id == instance_id))
                if errors is None:
                    return
                delay = saga.backoff_seconds(self.settings, errors + 1)
                session.execute(
                    update(Instance)
                    .where(Instance.id == instance_id, Instance.state.in_(_TRANSITIONAL))
                    .values(
                        step_errors=Instance.step_errors + 1,
                        last_error=f"{type(exc).__name__}: {exc}"[:4000],
                        next_run_at=now + timedelta(seconds=delay),
                        revision=Instance.revision + 1,
                    )
                )
            log.error(
                "saga step for instance %s failed (%d in a row); retrying in %.2fs",
                instance_id,
                errors + 1,
                delay,
                exc_info=exc,
            )
        except Exception:
            log.exception("saga step for instance %s failed, and recording the failure failed too", instance_id)


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def local() -> SagaRunner | None:
    """A started runner of this process, if any (the consumer borrows its driver)."""
    for runner in list(_LOCAL):
        if runner.running:
            return runner
    return None


def kick_local() -> None:
    """Wake every runner of this process."""
    for runner in list(_LOCAL):
        runner.kick()


def kick_after_commit(session: Session) -> None:
    """Wake this process's runners once `session` commits (waking them earlier would only
    let them find the old row)."""
    if not session.info.get("provisioning.kick"):
        session.info["provisioning.kick"] = True

        def _kick(committed: Session) -> None:
            committed.info.pop("provisioning.kick", None)
            kick_local()

        event.listen(session, "after_commit", _kick, once=True)
