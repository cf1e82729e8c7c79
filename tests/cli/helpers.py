"""Running the real `hangar` console script as a subprocess, with an isolated config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HANGAR = Path(sys.executable).parent / "hangar"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery-staple"
# Settings from the developer's own shell must not leak into a test.
SCRUBBED = ("HANGAR_API_KEY", "HANGAR_URL", "HANGAR_ORGANIZATION_ID", "HANGAR_CONFIG", "XDG_CONFIG_HOME")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def hangar(
    *args: str, config: Path, url: str | None = None, env: dict[str, str] | None = None, stdin: str | None = None
) -> Result:
    """Run `hangar ARGS` with HANGAR_CONFIG=config (and HANGAR_URL=url when given)."""
    if not HANGAR.exists():
        raise AssertionError(f"{HANGAR} is missing: run `make install` (it installs generated/cli)")
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    environ["HANGAR_CONFIG"] = str(config)
    environ["COLUMNS"] = "200"
    if url is not None:
        environ["HANGAR_URL"] = url
    environ.update(env or {})
    done = subprocess.run(
        [str(HANGAR), *args], capture_output=True, text=True, env=environ, input=stdin, timeout=60, check=False
    )
    return Result(done.returncode, done.stdout, done.stderr)


def load_sim_fleet(database_url: str, regions: list[str], *, hosts: int) -> None:
    """The sim driver's hosts are not seeded: an operator loads them into the database
    (`hangar-admin load-sim-fleet`, seed 1: the same fleet every time)."""
    done = subprocess.run(
        [sys.executable, "-m", "hangar.admin", "load-sim-fleet", "--hosts", str(hosts), "--regions", ",".join(regions)],
        cwd=ROOT,
        env={**os.environ, "HANGAR_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
