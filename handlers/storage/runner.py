"""The storage runner: a background thread that runs every due volume and snapshot step
(steps.py), each in a transaction of its own — a smaller copy of provisioning's SagaRunner.

Any number of runners in any number of processes share the work through the database: on
PostgreSQL the due-work query and the per-row lock use `FOR UPDATE SKIP LOCKED` (a row another
runner is stepping is skipped, not waited for); on SQLite the per-row compare-and-set
(locks.py) makes the second of two runners find the step already done. All progress is on the
rows, so a runner that dies loses at most one uncommitted step, which the next pass repeats.

A step that raises is logged and rolled back, and its row is retried after a backoff — the
loop itself never dies.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from handlers.storage import steps, wake
from handlers.storage.tables import Snapshot, Volume
from hangar.config import Settings
from hangar.db import utcnow
from hangar.drivers.volumes import VolumeDriver

log = logging.getLogger(__name__)


class StorageRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        driver: VolumeDriver,
        *,
        batch_size: int = 20,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.driver = driver
        self.batch_size = batch_size
        self._sessions = sessions
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pass_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="hangar-storage", daemon=True)
        self._thread.start()
        wake.register(self)
        log.info("storage runner started (driver %s, poll %.2fs)", self.driver.name, self.settings.storage_poll_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        wake.unregister(self)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("storage runner did not stop within %.0fs", timeout)
            self._thread = None
        self.driver.close()

    def kick(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                stepped = self.run_once()
            except Exception:
                log.exception("storage runner pass failed; retrying in %.2fs", self.settings.storage_poll_seconds)
                stepped = 0
            if stepped == 0:
                self._wake.wait(self.settings.storage_poll_seconds)

    def run_once(self) -> int:
        """One pass: every due volume and snapshot advanced by one step; the steps run."""
        with self._pass_lock:
            now = self._clock()
            stepped = 0
            for model, row_id in self.due(now):
                if self._stopping.is_set():
                    break
                if self.step(model, row_id) is not None:
                    stepped += 1
            return stepped

    def due(self, now: datetime) -> list[tuple[type[Volume] | type[Snapshot], uuid.UUID]]:
        with self._sessions() as session, session.begin():
            postgres = _postgres(session)
            volumes = (
                select(Volume.id)
                .where(Volume.next_run_at <= now, Volume.action_id.is_not(None))
                .order_by(Volume.next_run_at)
                .limit(self.batch_size)
            )
            snapshots = (
                select(Snapshot.id)
                .where(Snapshot.next_run_at <= now, Snapshot.step.is_not(None))
                .order_by(Snapshot.next_run_at)
                .limit(self.batch_size)
            )
            if postgres:
                volumes = volumes.with_for_update(skip_locked=True)
                snapshots = snapshots.with_for_update(skip_locked=True)
            due: list[tuple[type[Volume] | type[Snapshot], uuid.UUID]] = [(Volume, i) for i in session.scalars(volumes)]
            due += [(Snapshot, i) for i in session.scalars(snapshots)]
            return due

    def step(self, model: type[Volume] | type[Snapshot], row_id: uuid.UUID) -> str | None:
        now = self._clock()
        try:
            with self._sessions() as session, session.begin():
                if _postgres(session):
                    held = session.scalar(select(model.id).where(model.id == row_id).with_for_update(skip_locked=True))
                    if held is None:
                        return None
                if model is Volume:
                    return steps.advance_volume(session, row_id, now, self.driver, self.settings)
                return steps.advance_snapshot(session, row_id, now, self.driver, self.settings)
        except Exception as exc:
            self._back_off(model, row_id, exc, now)
            return None

    def _back_off(
        self, model: type[Volume] | type[Snapshot], row_id: uuid.UUID, exc: BaseException, now: datetime
    ) -> None:
        try:
            with self._sessions() as session, session.begin():
                errors = session.scalar(select(model.step_errors).where(model.id == row_id))
                if errors is None:
                    return
                delay = steps.backoff_seconds(self.settings, errors + 1)
                session.execute(
                    update(model)
                    .where(model.id == row_id, model.next_run_at.is_not(None))
                    .values(
                        step_errors=model.step_errors + 1,
                        last_error=f"{type(exc).__name__}: {exc}"[:4000],
                        next_run_at=now + timedelta(seconds=delay),
                        revision=model.revision + 1,
                    )
                )
            log.error(
                "storage step for %s %s failed; retrying in %.2fs", model.__tablename__, row_id, delay, exc_info=exc
            )
        except Exception:
            log.exception(
                "storage step for %s %s failed, and recording the failure failed too", model.__tablename__, row_id
            )


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
