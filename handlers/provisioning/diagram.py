"""`python -m handlers.provisioning.diagram [--check]`: write docs/instance-states.md from the
state machine's table (states.py), or, with --check, fail when the file is stale.
`make diagram` runs the first."""

from __future__ import annotations

import sys
from pathlib import Path

from handlers.provisioning import states

TARGET = Path(__file__).resolve().parents[2] / "docs" / "instance-states.md"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    wanted = states.document()
    if "--check" in args:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != wanted:
            print(f"{TARGET} is stale; run `make diagram`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
