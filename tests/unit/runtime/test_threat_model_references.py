"""The threat model's control matrix names the tests that enforce each control
(`path::test` or `path::Class::test`); every one of them must exist, so the document cannot
quietly point at tests that were renamed or deleted."""

from __future__ import annotations

import ast
import re

from hangar.config import ROOT

REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)")


def _defined(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)}
    return names


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) > 20
    missing = [
        f"{path}::{name}" for path, name in references if not (ROOT / path).exists() or name not in _defined(path)
    ]
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"
