"""The x-cli.stream extension at generation time, on the fixture in fixtures/stream/ (a spec
whose createSession opens a websocket session, and its AsyncAPI document asyncapi/shell.yaml):
the commands it adds, the protocol module generated from the AsyncAPI document, the runner
copied beside it, and the generation error each bad value is, naming the operation.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import cli
from pipeline.stages import HEADER

FIXTURES = Path(__file__).parent / "fixtures" / "stream"
ASYNCAPI = FIXTURES / "asyncapi"
SPEC: dict[str, Any] = yaml.safe_load((FIXTURES / "spec.yaml").read_text(encoding="utf-8"))
DOC: dict[str, Any] = yaml.safe_load((ASYNCAPI / "shell.yaml").read_text(encoding="utf-8"))
ROOT = Path(__file__).resolve().parents[2]


def stream_of(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["paths"]["/v1/machines/{machineId}/sessions"]["post"]["x-cli"]["stream"]


def broken_spec(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    change(spec)
    return spec


def with_document(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    doc = copy.deepcopy(DOC)
    change(doc)
    (tmp_path / "shell.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return tmp_path


# --- what it generates -----------------------------------------------------------------------


def test_stream_commands_join_their_group_beside_the_plain_call() -> None:
    commands = {c.words: c for c in cli.build_commands(SPEC, ASYNCAPI)}
    assert sorted(" ".join(w) for w in commands) == [
        "machines get", "machines run", "machines shell", "sessions create", "sessions list",
    ]  # fmt: skip
    shell, run = commands[("machines", "shell")], commands[("machines", "run")]
    assert (shell.kind, shell.operation_id, run.kind, run.operation_id) == (
        "stream", "createSession", "stream", "createSession",
    )  # fmt: skip
    assert shell.stream == cli.Stream("shell_protocol", "/url", "/ticket", True, None, ("cols", "rows"))
    assert run.stream == cli.Stream("shell_protocol", "/url", "/ticket", False, "command", ("cols", "rows"))
    # Only the resource's id: the body is the runner's (argv, size), the Idempotency-Key the SDK's.
    assert [f.option for f in shell.flags] == [f.option for f in run.flags] == ["--machine-id"]
    assert not shell.body_option and not run.body_option
    assert commands[("sessions", "create")].kind == "call", "the plain call stays"
    assert cli.command_map(list(commands.values()))["createSession"] == (
        "hangar sessions create, hangar machines run, hangar machines shell"
    )


def test_the_protocol_is_read_from_the_asyncapi_document() -> None:
    (protocol,) = cli.protocols(SPEC, ASYNCAPI)
    assert (protocol.module, protocol.subprotocol, protocol.channel) == ("shell_protocol", "fixture.shell.v1", "stream")
    assert dict(protocol.channels) == {"stdin": 0, "stdout": 1, "exit": 3, "resize": 4, "auth": 5}
    assert protocol.close_codes == (
        (1000, "exited", "the program exited"),  # the protocol note "; after the exit frame" is dropped
        (4401, "unauthorized", "missing or wrong ticket; no auth frame in time"),
        (4408, "idle_timeout", "idle timeout"),
        (4409, "instance_not_running", "the machine is not running"),
    )
    schemas = dict(protocol.schemas)
    assert schemas["resize"]["required"] == ["cols", "rows"], "a $ref'd payload is inlined"
    assert set(schemas) == {"auth", "exit", "resize"}


def test_a_spec_without_streams_has_no_protocol() -> None:
    spec = broken_spec(lambda s: stream_of(s).clear() or s["paths"]["/v1/machines/{machineId}/sessions"]["post"][
        "x-cli"].pop("stream"))  # fmt: skip
    assert cli.protocols(spec, ASYNCAPI) == []
    assert not any(c.kind == "stream" for c in cli.build_commands(spec, ASYNCAPI))


def test_epilogs_explain_the_session_and_the_exit_status() -> None:
    commands = {c.words: c for c in cli.build_commands(SPEC, ASYNCAPI)}
    run = commands[("machines", "run")].epilog
    assert "hangar machines run 7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6 -- uname -a" in run
    assert "255 when the session could not be opened" in run and "exit code" in run
    shell = commands[("machines", "shell")].epilog
    assert "raw mode" in shell and "restored" in shell


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream-cli") / "cli"
    cli.render_cli(copy.deepcopy(SPEC), out, ASYNCAPI)
    return out


def test_rendering_writes_the_protocol_module_and_copies_the_runner(tree: Path) -> None:
    package = tree / "hangar_cli"
    protocol = (package / "shell_protocol.py").read_text(encoding="utf-8")
    assert protocol.startswith(f"# {HEADER}\n")
    namespace: dict[str, Any] = {}
    exec(compile(protocol, "shell_protocol.py", "exec"), namespace)
    assert namespace["SUBPROTOCOL"] == "fixture.shell.v1"
    assert namespace["CHANNELS"] == {"stdin": 0, "stdout": 1, "exit": 3, "resize": 4, "auth": 5}
    assert namespace["CLOSE_CODES"][4409] == "the machine is not running"
    assert namespace["CLOSE_REASONS"][4408] == "idle_timeout"
    runner = (package / "stream.py").read_text(encoding="utf-8")
    template = (ROOT / "templates" / "cli" / "hangar_cli" / "stream.py").read_text(encoding="utf-8")
    assert runner == f"# {HEADER}\n" + template, "the runner is copied as written (plus the header)"
    assert "websockets>=" in (tree / "pyproject.toml").read_text(encoding="utf-8")


def _run_tree(tree: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the fixture's hangar_cli before the installed one
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_exec_takes_everything_after_the_first_double_dash(tree: Path) -> None:
    code = (
        "import json, sys\nfrom hangar_cli.stream import split_argv\n"
        "print(json.dumps([split_argv(a) for a in json.loads(sys.argv[1] if len(sys.argv) > 1 else '[]')]))"
    )
    cases = [
        ["machines", "run", "ID", "--", "ls", "--", "-l"],
        ["--url", "http://x", "-o", "json", "machines", "run", "ID", "--", "sh", "-c", "exit 3"],
        ["machines", "shell", "ID", "--", "bash"],  # not an exec command: left whole (argparse refuses it)
        ["sessions", "create", "ID"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        [["machines", "run", "ID"], ["ls", "--", "-l"]],
        [["--url", "http://x", "-o", "json", "machines", "run", "ID"], ["sh", "-c", "exit 3"]],
        [["machines", "shell", "ID", "--", "bash"], []],
        [["sessions", "create", "ID"], []],
    ]


def test_exec_help_shows_the_remote_command(tree: Path) -> None:
    done = _run_tree(tree, "from hangar_cli.app import main; main(['machines', 'run', '--help'])")
    usage = " ".join(done.stdout.split("\n\n")[0].split())
    assert usage.startswith("usage: hangar machines run") and usage.endswith("MACHINE_ID -- COMMAND [ARG ...]"), usage
    assert "exit code" in done.stdout


def test_exec_without_a_command_is_a_usage_error(tree: Path) -> None:
    code = (
        "import sys\nfrom hangar_cli import stream\nfrom hangar_cli.commands import COMMANDS\n"
        "run = next(c for c in COMMANDS if c.words == ('machines', 'run'))\n"
        "try:\n    stream.request_body(run, [])\nexcept stream.CliError as e:\n    print(e.code, e.message)\n"
    )
    done = _run_tree(tree, code)
    assert done.stdout.startswith("2 hangar machines run: give the command to run after `--`"), done


# --- generation errors -----------------------------------------------------------------------


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        stream = stream_of(spec)
        for key, value in changes.items():
            if value is None:
                stream.pop(key)
            else:
                stream[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(asyncapi="missing.yaml"), "asyncapi names missing.yaml, which is not in"),
        (_set(asyncapi="../shell.yaml"), "asyncapi must name a YAML document in specs/asyncapi/"),
        (_set(url="$request.body#/url"), "url: '$request.body#/url' is not a `$response.body#/<JSON pointer>`"),
        (_set(url="$response.body#/nested/count"), "url: $response.body#/nested/count is not a string"),
        (_set(ticket="$response.body#/nope"), "ticket: $response.body#/nope is not a string of the response"),
        (_set(ticket=None), "x-cli.stream must be {asyncapi"),
        (_set(colour="red"), "x-cli.stream must be {asyncapi"),
        (_set(shell=None, exec=None), "declares no command"),
        (_set(shell="Shell!"), "shell must be a command name"),
        (_set(group="Machines"), "group must be a command group name"),
        (_set(exec={"command": "run"}), "exec must be {command: <command name>, argv: <request body field>}"),
        (_set(exec={"command": "run", "argv": "cols"}), "exec.argv `cols` is not an array of strings"),
        (_set(exec={"command": "run", "argv": "args"}), "exec.argv `args` is not an array of strings"),
        (_set(shell="get"), "createSession (x-cli.stream get) and getMachine are both `hangar machines get`"),
        (_set(channel="other"), "channel 'other' is not in shell.yaml"),
    ],
)
def test_bad_x_cli_stream_fails_generation(change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(cli.CliSpecError) as raised:
        cli.build_commands(broken_spec(change), ASYNCAPI)
    assert str(raised.value).startswith("createSession") or "createSession" in str(raised.value)
    assert message in str(raised.value)


def test_a_required_body_field_rules_out_a_login_shell() -> None:
    spec = broken_spec(lambda s: s["components"]["schemas"]["SessionCreate"].update(required=["command"]))
    with pytest.raises(
        cli.CliSpecError, match=r"^createSession: x-cli\.stream shell: the request body requires command"
    ):
        cli.build_commands(spec, ASYNCAPI)


def _message(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        message = doc["components"]["messages"][name]
        for key, value in changes.items():
            if value is None:
                message.pop(key)
            else:
                message[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _message("Stdout", **{"x-channel-byte": None}),
            "message stdout of shell.yaml has no channel byte (x-channel-byte: 0..255)",
        ),
        (_message("Stdout", **{"x-channel-byte": 300}), "message stdout of shell.yaml has no channel byte"),
        (_message("Exit", **{"x-channel-byte": 1}), "two messages of shell.yaml share a channel byte"),
        (
            _message("Stdin", **{"x-direction": "server-to-client"}),
            "message stdin of shell.yaml goes server-to-client; the runner needs client-to-server",
        ),
        (
            _message("Exit", payload={"type": "object", "properties": {"code": {"type": "integer"}}}),
            "message exit of shell.yaml: its JSON payload lacks exit_code",
        ),
        (lambda d: d["channels"]["stream"]["messages"].pop("resize"), "has no message named resize"),
        (lambda d: d.pop("x-close-codes"), "the AsyncAPI document declares no x-close-codes"),
        (
            lambda d: d.update({"x-close-codes": {"99": {"reason": "x", "description": "x"}}}),
            "close code '99' needs a code in 1000..4999 and a description",
        ),
        (lambda d: d.update({"x-close-codes": {"4400": {"reason": "x"}}}), "close code '4400' needs a code"),
        (lambda d: d.pop("x-subprotocol"), "declares no x-subprotocol"),
        (lambda d: d.update(asyncapi="2.6.0"), "shell.yaml is not an AsyncAPI 3 document"),
        (lambda d: d["channels"].update(extra={"address": "/x"}), "shell.yaml has 2 channels; name one with `channel`"),
    ],
)
def test_a_bad_asyncapi_document_fails_generation(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(cli.CliSpecError) as raised:
        cli.build_commands(SPEC, with_document(tmp_path, change))
    assert str(raised.value).startswith("createSession: x-cli.stream ")
    assert message in str(raised.value)
