"""The init program of a `local` instance: process 1 of its sandbox, in spirit.

`LocalDriver` runs it as `sys.executable -I -S <this file>` (isolated: no site-packages, no
PYTHON* variables, no user site), so it must stay standard-library only and must not import
`hangar` — the instance does not get the platform's packages on its path. It also works as
`python -m hangar.drivers.local_init`.

What it does, and why:
- blocks SIGTERM/SIGINT/SIGHUP/SIGCHLD first, so a stop that arrives right after boot is
  not lost to the default action (which would end it "killed by signal" instead of cleanly);
- writes `$HANGAR_RUN_DIR/booted` (atomically: write, then rename) with its pid, its start
  time in clock ticks (/proc/self/stat field 22) and the boot time. The driver reports a
  create/start/reboot done only when the marker's pid *and* start time match the live
  process, so a marker left by an earlier boot never counts;
- then waits in `sigwait` — it costs no CPU while the instance idles;
- reaps any child that exits (SIGCHLD), as an init should, so its own children never linger
  as zombies;
- on SIGTERM (or SIGINT/SIGHUP) says so on the console and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_WAITED = _STOP_SIGNALS | {signal.SIGCHLD}


def own_start_ticks() -> int:
    """This process's start time since boot, in clock ticks: field 22 of /proc/self/stat.

    The command name (field 2) may contain spaces and parentheses, so the fields are counted
    from after the last ')'; the first one there is field 3.
    """
    raw = Path("/proc/self/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def write_booted(run_dir: Path) -> None:
    """The booted marker, written so that a reader sees either nothing or the whole file."""
    marker = {
        "pid": os.getpid(),
        "start_ticks": own_start_ticks(),
        "booted_at": datetime.now(UTC).isoformat(),
    }
    tmp = run_dir / f".booted.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, run_dir / "booted")


def reap_children() -> None:
    """Collect every child that has exited; returns when none is left to collect."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    run_dir = Path(os.environ.get("HANGAR_RUN_DIR", "."))
    instance = os.environ.get("HANGAR_INSTANCE_NAME", "?")
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    write_booted(run_dir)
    started = time.monotonic()
    print(f"hangar-init: instance {instance} booted, pid {os.getpid()}", flush=True)
    while True:
        received = signal.sigwait(_WAITED)
        if received == signal.SIGCHLD:
            reap_children()
            continue
        name = signal.Signals(received).name
        print(f"hangar-init: {name} after {time.monotonic() - started:.1f}s, shutting down", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
