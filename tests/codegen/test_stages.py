"""Stamps decide whether a stage reruns; they must depend on inputs only, never on caches
that exist on one machine and not in a fresh clone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import stages
from pipeline.stages import Stage, stamp


def _stage(pattern: str) -> Stage:
    return Stage(name="probe", inputs=(pattern,), outputs=(), run=lambda out: None, salt="v1")


def test_stamp_ignores_tool_caches_and_install_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "ROOT", tmp_path)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "a.j2").write_text("hello")
    before = stamp(_stage("templates/**/*"), tmp_path / "out")
    for cache in (".ruff_cache/0.17.5/x", "__pycache__/a.pyc", "pkg.egg-info/PKG-INFO"):
        path = tmp_path / "templates" / cache
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("noise")
    assert stamp(_stage("templates/**/*"), tmp_path / "out") == before


def test_stamp_changes_with_an_input_and_with_the_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "ROOT", tmp_path)
    (tmp_path / "templates").mkdir()
    source = tmp_path / "templates" / "a.j2"
    source.write_text("hello")
    first = stamp(_stage("templates/*"), tmp_path / "out")
    source.write_text("hello!")
    assert stamp(_stage("templates/*"), tmp_path / "out") != first
    salted = Stage(name="probe", inputs=("templates/*",), outputs=(), run=lambda out: None, salt="v2")
    assert stamp(salted, tmp_path / "out") != stamp(_stage("templates/*"), tmp_path / "out")


def test_stamp_is_the_same_in_a_temporary_output_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `codegen.py check` regenerates under /tmp/...; the names hashed must not depend on
    # where the output tree lives, nor sort differently because of it.
    monkeypatch.setattr(stages, "ROOT", tmp_path / "repo")
    (tmp_path / "repo" / "pipeline").mkdir(parents=True)
    (tmp_path / "repo" / "pipeline" / "gen.py").write_text("x = 1")
    stage = Stage(name="probe", inputs=("generated/openapi.json", "pipeline/gen.py"), outputs=(), run=lambda out: None)
    stamps = []
    for out in (
        tmp_path / "repo" / "generated",
        tmp_path / "zzz-elsewhere" / "generated",
        tmp_path / "aaa" / "generated",
    ):
        out.mkdir(parents=True)
        (out / "openapi.json").write_text("{}")
        stamps.append(stamp(stage, out))
    assert len(set(stamps)) == 1


def test_every_committed_generated_file_is_headed() -> None:
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "generated"], cwd=stages.ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "generated/ is tracked"
    for rel in tracked:
        path = stages.ROOT / rel
        if path.suffix in (".typed",) or path.stat().st_size == 0:
            continue  # empty marker files (py.typed) have nothing to head
        head = path.read_text(encoding="utf-8").splitlines()[:2]
        assert any(stages.HEADER in line for line in head), f"{rel} does not start with the header: {head!r}"


def test_json_text_puts_the_header_first_and_sorts_the_rest() -> None:
    import json

    text = stages.json_text({"b": 1, "a": {"d": 2, "c": 3}})
    assert text.splitlines()[1] == f'  "x-generated": "{stages.HEADER}",'
    assert list(json.loads(text)) == ["x-generated", "a", "b"]
    assert stages.json_text({}) == '{\n  "x-generated": "' + stages.HEADER + '"\n}\n'
    with pytest.raises(ValueError, match="reserved"):
        stages.json_text({"x-generated": "forged"})
