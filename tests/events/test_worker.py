"""`hangar-worker`: clear start-up, clean stop on SIGTERM, non-zero exit without a broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from hangar import worker
from hangar.outbox import OutboxEvent
from pipeline.stages import ROOT

from .helpers import record_event


def test_unreachable_broker_exits_non_zero_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HANGAR_DATABASE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("HANGAR_BROKER_URL", "amqp://guest:hunter2@127.0.0.1:1/")
    assert worker.main([]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1:1/" in err
    assert "hunter2" not in err


def test_worker_relays_in_process_and_stops_on_sigterm(engine: Engine, session_factory: sessionmaker[Session]) -> None:
    database = engine.url.render_as_string(hide_password=False)  # the fixture's SQLite file, tables created
    event_id = record_event(session_factory)
    env = {**os.environ, "HANGAR_DATABASE_URL": database, "PYTHONPATH": str(ROOT)}
    env.pop("HANGAR_BROKER_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hangar.worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "hangar-worker: started — relay → in-process bus" in first, first + proc.stderr.read()  # type: ignore[union-attr]
        for _ in range(300):  # the relay's first pass publishes the row (to no consumer)
            with session_factory() as session:
                if session.scalar(select(OutboxEvent.published_at).where(OutboxEvent.id == event_id)):
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the worker's relay never published the outbox row")
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "SIGTERM received, stopping" in out and "hangar-worker: stopped" in out
