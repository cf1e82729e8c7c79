"""Where a server's time goes under load: py-spy samples a running server while wrk (or
bench/loadgen.py) drives it, then the samples are grouped by what they were doing.

    .venv/bin/python -m bench.profile hangar get
    .venv/bin/python -m bench.profile starlette post --duration 10 --py-spy /tmp/pyspy/bin/py-spy

py-spy is not a project dependency. Install it for a run without touching the lock, e.g.
`.venv/bin/pip install --target /tmp/pyspy py-spy` and pass `--py-spy /tmp/pyspy/bin/py-spy`.
It samples every thread that is not idle; a worker thread waiting for the GIL counts as
busy (in the frame that asked for it), so GIL contention shows up inside the database
calls that release and retake it.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.api import SCENARIOS, SEED_KEYS, SERVERS, Database, choose_tool, free_port, load, pinning, running

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")

# Worker-thread buckets, first match wins (a frame name contained in the stack).
BUCKETS = [
    ("connection open/close (pool overflow)", ("_ConnectionRecord.__connect", "DefaultDialect.do_close")),
    ("authentication (published.authenticate)", ("authenticate (handlers/identity/published.py",)),
    ("serialisation (serialize / model_dump)", ("serialize (generated/routing.py", "BaseModel.model_dump")),
    ("handler (services, SQLAlchemy, pydantic models)", ("(handlers/identity/operations.py",)),
    ("commit", ("Session.commit",)),
]


def _package(file: str) -> str:
    file = file.split("site-packages/")[-1]
    for root in ("hangar/", "handlers/", "generated/", "bench/"):
        if root in file:
            return root.rstrip("/")
    top = file.split("/")[0]
    return top.removesuffix(".py") if top else file


def analyse(raw: Path) -> str:
    loop: collections.Counter[str] = collections.Counter()
    workers: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[0].startswith("Thread._bootstrap"):
            if not any("EndpointOperation._run" in f or "(handlers/" in f or "(bench/" in f for f in frames) and any(
                f.startswith(("Queue.get", "Condition.wait")) for f in frames
            ):
                idle += n
                continue
            bucket = next(
                (name for name, marks in BUCKETS if any(m in f for f in frames for m in marks)),
                "other (invoke, adapters, session, response)",
            )
            workers[bucket] += n
        else:
            match = _FRAME.match(frames[-1])
            loop[_package(match["file"]) if match else frames[-1]] += n
        leaf = _FRAME.match(frames[-1])
        leaves[f"{leaf['func']} ({_package(leaf['file'])})" if leaf else frames[-1]] += n
    busy = sum(loop.values()) + sum(workers.values())
    if not busy:
        return "no busy samples"
    out = [f"{busy} busy samples ({idle} idle worker-thread samples left out)", ""]
    out.append(f"{'event loop thread':<52} {sum(loop.values()) / busy:>6.1%}   (by package of the innermost frame)")
    for name, n in loop.most_common(8):
        out.append(f"    {name:<48} {n / busy:>6.1%}")
    out.append(f"{'worker threads (the handler side of the hop)':<52} {sum(workers.values()) / busy:>6.1%}")
    for name, n in workers.most_common():
        out.append(f"    {name:<48} {n / busy:>6.1%}")
    out += ["", "innermost frames (self time):"]
    out += [f"    {n / busy:>6.1%}  {name}" for name, n in leaves.most_common(12)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", choices=[s.name for s in SERVERS])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--duration", type=int, default=10, help="sampled seconds (default 10)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary (default: on PATH)")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    if not args.py_spy:
        parser.error(
            "py-spy not found: `.venv/bin/pip install --target /tmp/pyspy py-spy`, then --py-spy /tmp/pyspy/bin/py-spy"
        )
    server = next(s for s in SERVERS if s.name == args.server)
    scenario = SCENARIOS[args.scenario]
    tool = choose_tool(args.tool)
    server_pin, load_pin = pinning()
    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-profile-"))
    database = Database(workdir, None)
    try:
        token = database.seed(SEED_KEYS)
        port = free_port()
        raw = workdir / "samples.txt"
        with running(server, database.fresh(), port, server_pin, workdir / "server.log", token) as proc:
            load(tool, scenario, port, token, 2, args.connections, load_pin, workdir)  # warm-up
            spy_cmd = [
                args.py_spy,
                "record",
                "--pid",
                str(proc.pid),
                "--duration",
                str(args.duration),
                "--rate",
                str(args.rate),
            ]
            spy_cmd += ["--format", "raw", "--output", str(raw), "--nonblocking"]
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = load(tool, scenario, port, token, args.duration + 1, args.connections, load_pin, workdir)
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0 or not raw.exists():
                raise SystemExit(
                    f"bench: py-spy failed ({spy.returncode}): {err.decode()[-2000:]}\n(py-spy needs ptrace: root, or CAP_SYS_PTRACE)"
                )
        print(
            f"{server.label}, {scenario.label}: {result['rps']:.0f} req/s with {args.connections} connections while sampled"
        )
        print(analyse(raw))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
