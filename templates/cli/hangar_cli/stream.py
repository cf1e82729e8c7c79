"""The stream runner: `hangar instances terminal ID` and `hangar instances exec ID -- ARGV…`.

Hand-written (templates/cli/hangar_cli/stream.py, copied into the CLI as it is); what it
speaks comes from the spec: the command (commands.py) says which operation opens the session,
which body field takes the argv and where the answer holds the websocket URL and the ticket
(x-cli.stream), and the protocol module (`<document>_protocol.py`, generated from the
AsyncAPI document) gives the subprotocol, the channel bytes and the close codes.

One session, start to end:
1. the operation is called (POST …/terminal-sessions) with the argv (exec) and the terminal's
   size; its answer holds the websocket URL and a single-use ticket;
2. the websocket is opened offering the subprotocol; the first frame is the auth frame
   (ticket, size) — the ticket is never in the URL;
3. stdin is forwarded as stdin frames (raw mode when stdin is a terminal: every key goes to
   the remote, ^C included; SIGWINCH sends a resize frame), stdout frames are written out;
   at the end of a piped stdin an end-of-file (^D, the PTY's VEOF) is sent;
4. the exit frame carries the remote exit code, which becomes this command's exit status.

The terminal's settings are restored on every way out (the exit frame, a close, an error,
SIGTERM, SIGHUP, ^C off raw mode). Exit status: the remote command's; 255 when the session
could not be opened or ended without one (a close code: the message says why), as ssh does,
so a script can tell the gateway's failures from the command's; 130/143/129 for SIGINT/SIGTERM/
SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from hangar_cli import __version__
from hangar_cli.model import Command
from hangar_cli.problems import CliError

FAILED = 255  # the session failed (not the remote command): ssh's convention
MAX_FRAME = 1 << 24  # the largest frame accepted from the server
CHUNK = 1 << 16  # stdin is read and sent in pieces of at most this many bytes
EOT = b"\x04"  # ^D: end of file for a PTY in canonical mode
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class SessionFailed(CliError):
    """The session could not be opened, or ended without the remote command's exit code."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=FAILED)


# Global options that take a value (parser.py), skipped when looking for the command's words.
VALUE_OPTIONS = frozenset({"--url", "-o", "--output", "--retries"})


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the CLI's own arguments, the remote command): split at the first `--` of an exec
    command (`hangar instances exec ID -- ls -- -l`); any other command line is left whole."""
    from hangar_cli.commands import COMMANDS

    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    found: list[str] = []
    skip = False
    for token in argv[:cut]:
        if skip:
            skip = False
        elif token in VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            found.append(token)
    execs = {c.words for c in COMMANDS if c.stream is not None and not c.stream.interactive}
    if any(tuple(found[: len(words)]) == words for words in execs):
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def protocol(command: Command) -> ModuleType:
    """The generated protocol module of the command's AsyncAPI document."""
    return importlib.import_module(f"hangar_cli.{command.stream.protocol if command.stream else ''}")


def terminal_size() -> tuple[int, int] | None:
    """(cols, rows) of the terminal on stdin, else stdout; None off a terminal."""
    for stream in (sys.stdin, sys.stdout):
        try:
            if stream.isatty():
                size = os.get_terminal_size(stream.fileno())
                if size.columns > 0 and size.lines > 0:
                    return size.columns, size.lines
        except (OSError, ValueError):
            continue
    return None


def request_body(command: Command, argv: list[str]) -> dict[str, Any]:
    """The session request: the argv (exec) and the terminal's size when there is one."""
    stream = command.stream
    assert stream is not None
    body: dict[str, Any] = {}
    if stream.argv_field:
        if not argv:
            from hangar_cli.problems import UsageError

            raise UsageError(f"{command.line}: give the command to run after `--`, e.g. `-- uname -a`")
        body[stream.argv_field] = list(argv)
    size = terminal_size()
    if size is not None and stream.size_fields:
        cols_field, rows_field = stream.size_fields
        body[cols_field], body[rows_field] = size
    return body


def pointer_get(data: Any, pointer: str) -> Any:
    for raw in pointer.split("/")[1:]:
        if not isinstance(data, dict):
            return None
        data = data.get(raw.replace("~1", "/").replace("~0", "~"))
    return data


def execute(session: Any, command: Command, kwargs: dict[str, Any], argv: list[str]) -> int:
    """Open the session (one call of the operation), then attach to it; the exit status."""
    from hangar_client import models

    stream = command.stream
    assert stream is not None
    body = request_body(command, argv)
    if command.body_class:
        try:
            kwargs["body"] = getattr(models, command.body_class).from_dict(body)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise CliError(f"invalid request body: {error}", code=2) from None
    data = session.call(command, kwargs)
    url, ticket = pointer_get(data, stream.url), pointer_get(data, stream.ticket)
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise SessionFailed(f"the answer of {command.operation_id} has no websocket URL at {stream.url}: {url!r}")
    if not isinstance(ticket, str) or not ticket:
        raise SessionFailed(f"the answer of {command.operation_id} has no ticket at {stream.ticket}")
    runner = Runner(protocol(command), url, ticket, translate=not stream.interactive and not _isatty(sys.stdout))
    return asyncio.run(runner.run())


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on `fd` in raw mode for the block; its settings restored however it ends."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class CrlfToLf:
    """The remote is a PTY, which writes `\\r\\n` for every newline; off a terminal (exec into a
    file or a pipe) the output gets its `\\n` back. A `\\r` at the end of a chunk waits for the next."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        data = self.held + data
        self.held = b""
        if data.endswith(b"\r"):
            data, self.held = data[:-1], b"\r"
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return held


class Runner:
    """One attached session: the websocket, stdin, stdout, signals and the terminal's mode."""

    def __init__(self, proto: ModuleType, url: str, ticket: str, *, translate: bool) -> None:
        self.proto = proto
        self.url = url
        self.ticket = ticket
        self.channel = proto.CHANNELS
        self.translate = CrlfToLf() if translate else None
        self.stdin_fd = sys.stdin.fileno() if sys.stdin is not None else -1
        self.stdout_fd = sys.stdout.fileno()
        self.tty = self.stdin_fd >= 0 and os.isatty(self.stdin_fd)
        self.exit: dict[str, Any] | None = None
        self.signalled: int | None = None
        self.last_byte = b"\n"
        self.ws: Any = None

    # --- frames -----------------------------------------------------------------------------

    def frame(self, role: str, payload: bytes | dict[str, Any]) -> bytes:
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":")).encode()
        return bytes([self.channel[role]]) + payload

    def size_payload(self) -> dict[str, int]:
        size = terminal_size()
        return {"cols": size[0], "rows": size[1]} if size else {}

    async def send(self, role: str, payload: bytes | dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.frame(role, payload))

    def write(self, data: bytes, *, translated: bool = True) -> None:
        if self.translate is not None and translated:
            data = self.translate.feed(data)
        view = memoryview(data)
        while view:
            written = os.write(self.stdout_fd, view)
            view = view[written:]

    # --- the session ------------------------------------------------------------------------

    async def connect(self) -> Any:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

        try:
            ws = await connect(
                self.url,
                subprotocols=[self.proto.SUBPROTOCOL],
                user_agent_header=f"hangar-cli/{__version__}",
                max_size=MAX_FRAME,
                compression=None,  # terminal traffic is small and latency-bound
                proxy=None,
                open_timeout=15,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            raise SessionFailed(f"the terminal gateway at {self.url} refused the connection (HTTP {status})") from None
        except InvalidURI:
            raise SessionFailed(f"the terminal URL {self.url!r} is not a websocket URL") from None
        except (OSError, InvalidHandshake, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise SessionFailed(f"cannot connect to the terminal gateway at {self.url}: {reason}") from None
        if ws.subprotocol != self.proto.SUBPROTOCOL:
            await ws.close()
            raise SessionFailed(f"the terminal gateway at {self.url} does not speak {self.proto.SUBPROTOCOL}")
        return ws

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.ws = await self.connect()
        cleanups: list[Callable[[], object]] = []
        main = asyncio.current_task()
        try:
            for signum in (signal.SIGTERM, signal.SIGHUP) + (() if self.tty else (signal.SIGINT,)):
                loop.add_signal_handler(signum, self._on_signal, signum, main)
                cleanups.append(functools.partial(loop.remove_signal_handler, signum))
            with raw_mode(self.stdin_fd) if self.tty else contextlib.nullcontext():
                await self.send("auth", {"ticket": self.ticket, **self.size_payload()})
                if self.tty:
                    loop.add_signal_handler(signal.SIGWINCH, self._on_resize)
                    cleanups.append(lambda: loop.remove_signal_handler(signal.SIGWINCH))
                if self.stdin_fd >= 0:
                    cleanups.append(self._pump_stdin(loop))
                await self._receive()
        except asyncio.CancelledError:
            if self.signalled is None:
                raise
        finally:
            for cleanup in reversed(cleanups):
                cleanup()
            if self.ws is not None:
                await self.ws.close()
        if self.signalled is not None:
            print(f"\nhangar: session closed ({signal.Signals(self.signalled).name})", file=sys.stderr)
            return SIGNAL_EXIT[signal.Signals(self.signalled)]
        return self.outcome(self.ws.close_code, self.ws.close_reason)

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        stdout, exit_channel = self.channel["stdout"], self.channel["exit"]
        try:
            async for message in self.ws:
                if isinstance(message, str) or not message:
                    await self.ws.close(1002, "frames are binary with a channel byte")
                    raise SessionFailed("the terminal gateway sent a frame that is not binary or is empty")
                channel, payload = message[0], message[1:]
                if channel == stdout:
                    self.write(payload)
                elif channel == exit_channel:
                    try:
                        found = json.loads(payload)
                    except ValueError:
                        found = None
                    if not isinstance(found, dict):
                        raise SessionFailed("the terminal gateway sent an exit frame that is not a JSON object")
                    self.exit = found
                # Other channels (added by a later version of the protocol) are skipped.
        except ConnectionClosed:
            pass
        if self.translate is not None:
            self.write(self.translate.flush(), translated=False)  # a last, lone \r

    def outcome(self, code: int | None, reason: str) -> int:
        """The exit status, from the exit frame, else from the close code (with a message)."""
        exit_code = (self.exit or {}).get("exit_code")
        if isinstance(exit_code, int) and not isinstance(exit_code, bool):
            return exit_code
        known = self.proto.CLOSE_CODES.get(code) if code is not None else None
        if known:
            message = f"the terminal session ended: {known}"
        elif code in (None, 1006):
            message = "the connection to the terminal gateway was lost"
        elif code == 1000:
            message = "the terminal session ended without an exit code"
        else:
            message = f"the terminal gateway closed the session (code {code})"
        detail = (self.exit or {}).get("reason") or reason
        if detail and detail != self.proto.CLOSE_REASONS.get(code):
            message += f" ({detail})"
        if code is not None and code != 1006:
            message += f" [close code {code}]"
        raise SessionFailed(message)

    # --- stdin, signals ---------------------------------------------------------------------

    def _pump_stdin(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Forward stdin as stdin frames; at its end, send ^D. Returns how to stop."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        fd = self.stdin_fd
        paused = False

        def readable() -> None:
            nonlocal paused
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            queue.put_nowait(data)  # an empty read is the end of stdin
            if not data or queue.full():
                loop.remove_reader(fd)
                paused = bool(data)  # resumed by the sender once the queue drains

        stop = threading.Event()
        try:
            loop.add_reader(fd, readable)
            watched = True
        except (PermissionError, OSError, ValueError):  # a regular file: epoll cannot watch it
            watched = False

            def reader() -> None:
                while not stop.is_set():
                    try:
                        data = os.read(fd, CHUNK)
                    except OSError:
                        data = b""
                    asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
                    if not data:
                        return

            threading.Thread(target=reader, name="hangar-stdin", daemon=True).start()

        async def sender() -> None:
            nonlocal paused
            while True:
                data = await queue.get()
                if not data:
                    if not self.tty:  # the end of a piped stdin: end of file for the remote
                        await self.send("stdin", EOT if self.last_byte in (b"\n", b"\r") else EOT + EOT)
                    return
                self.last_byte = data[-1:]
                await self.send("stdin", data)
                if paused and not queue.full():
                    paused = False
                    loop.add_reader(fd, readable)

        task = loop.create_task(sender())

        def stop_all() -> None:
            task.cancel()
            if watched:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
            stop.set()

        return stop_all

    def _on_resize(self) -> None:
        size = self.size_payload()
        if size:
            asyncio.ensure_future(self.send("resize", size))

    def _on_signal(self, signum: int, task: asyncio.Task[Any] | None) -> None:
        self.signalled = signum
        if task is not None:
            task.cancel()
