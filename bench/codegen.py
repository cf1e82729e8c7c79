"""Codegen benchmark: wall time of a full and of a no-op regeneration.

    .venv/bin/python -m bench.codegen                 # 3 full + 5 no-op runs, in a scratch copy
    .venv/bin/python -m bench.codegen --full 5 --noop 10
    .venv/bin/python -m bench.codegen --in-place      # in this working tree (rewrites generated/)

Each run is what a developer types, timed from outside: a fresh interpreter running
`codegen.py generate --force` (every stage: bundles, models, routing, SDK, CLI, event
bindings) or `codegen.py generate` with nothing changed (every stage's input hashes match
its stamp, so every stage is skipped). By default the runs happen in a scratch copy of the
tree (specs, templates, pipeline, generated/, …; .venv and .tooling shared), so a benchmark
never rewrites the working tree's generated/. The no-op runs must report every stage up to
date, and the full runs must reproduce generated/ byte for byte; both are checked.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SKIP = {
    ".git",
    ".venv",
    ".tooling",
    ".hangar",
    "bench",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".import_linter_cache",
}


def scratch_copy(dest: Path) -> Path:
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP or n.endswith(".egg-info")}

    tree = dest / "tree"
    shutil.copytree(ROOT, tree, ignore=ignore, symlinks=True)
    # The Node tooling (Spectral) is large and read-only here: share it.
    if (ROOT / ".tooling").exists():
        (tree / ".tooling").symlink_to(ROOT / ".tooling")
    return tree


def timed(tree: Path, force: bool) -> tuple[float, str]:
    cmd = [PY, "codegen.py", "generate", *(["--force"] if force else [])]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"bench: `{' '.join(cmd[1:])}` failed ({done.returncode}) in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return elapsed, done.stdout


def same_tree(a: Path, b: Path) -> list[str]:
    differ: list[str] = []
    for path in sorted(a.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts):
            continue
        other = b / path.relative_to(a)
        if not other.is_file() or not filecmp.cmp(path, other, shallow=False):
            differ.append(str(path.relative_to(a)))
    return differ


def summary(label: str, times: list[float]) -> str:
    return f"{label:<36} {len(times):>4} {statistics.median(times):>9.2f} {min(times):>9.2f} {max(times):>9.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", type=int, default=3, help="full regenerations (default 3)")
    parser.add_argument("--noop", type=int, default=5, help="no-op regenerations (default 5)")
    parser.add_argument("--in-place", action="store_true", help="run in this working tree instead of a scratch copy")
    args = parser.parse_args(argv)

    scratch = None if args.in_place else Path(tempfile.mkdtemp(prefix="hangar-bench-codegen-"))
    try:
        tree = ROOT if scratch is None else scratch_copy(scratch)
        reference = None if scratch is None else scratch / "reference"
        if reference is not None:
            shutil.copytree(ROOT / "generated", reference, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        full: list[float] = []
        for i in range(args.full):
            elapsed, out = timed(tree, force=True)
            full.append(elapsed)
            print(f"  full  #{i + 1}: {elapsed:6.2f} s", file=sys.stderr, flush=True)
            if i == 0:
                stages = [ln.strip() for ln in out.splitlines() if "generated in" in ln]
                print("  first full run, per stage: " + "; ".join(stages), file=sys.stderr)
        noop: list[float] = []
        for i in range(args.noop):
            elapsed, out = timed(tree, force=False)
            noop.append(elapsed)
            print(f"  no-op #{i + 1}: {elapsed:6.2f} s", file=sys.stderr, flush=True)
            regenerated = [ln.strip() for ln in out.splitlines() if "generated in" in ln]
            if regenerated:
                raise SystemExit(f"bench: a no-op regeneration ran stages: {regenerated}")
        drift = same_tree(reference, tree / "generated") if reference is not None else []
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(
        f"Codegen benchmark ({'in place' if args.in_place else 'scratch copy of the tree'}; wall time of `python codegen.py generate`, fresh interpreter each run)"
    )
    print(f"{'':<36} {'runs':>4} {'median s':>9} {'min s':>9} {'max s':>9}")
    if full:
        print(summary("full regeneration (generate --force)", full))
    if noop:
        print(summary("no-op regeneration (generate)", noop))
    if reference is not None and full:
        if drift:
            print(
                f"NOTE: a full regeneration differs from the working tree's generated/ in {len(drift)} file(s) (specs changed since the last `make generate`?): {', '.join(drift[:8])}"
            )
        else:
            print("output: byte-identical to the working tree's generated/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
