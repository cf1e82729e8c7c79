"""Waking this process's storage runners right after a commit, so accepted work starts at once
rather than at the next poll (the poll finds it anyway: this is an accelerator only)."""

from __future__ import annotations

import weakref
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session


class _Kickable(Protocol):
    def kick(self) -> None: ...


_LOCAL: weakref.WeakSet[_Kickable] = weakref.WeakSet()  # type: ignore[type-var]


def register(runner: _Kickable) -> None:
    _LOCAL.add(runner)


def unregister(runner: _Kickable) -> None:
    _LOCAL.discard(runner)


def kick_local() -> None:
    for runner in list(_LOCAL):
        runner.kick()


def kick_after_commit(session: Session) -> None:
    """Wake this process's runners once `session` commits (earlier, they would find the old rows)."""
    if not session.info.get("storage.kick"):
        session.info["storage.kick"] = True

        def _kick(committed: Session) -> None:
            committed.info.pop("storage.kick", None)
            kick_local()

        event.listen(session, "after_commit", _kick, once=True)
