"""docs/method.md's code references resolve: each `path::symbol` names a file of the repository and a function,
class, class member or module-level name defined in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`([\w./-]+\.py)(?:(::|:)([\w.]*))?`")


def defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names a module or class body defines: functions, classes, assignments (fields included)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names |= {target.id: node for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def resolves(path: Path, symbol: str) -> bool:
    body = ast.parse(path.read_text()).body
    for part in symbol.split("."):
        node = defined_names(body).get(part)
        if node is None:
            return False
        body = getattr(node, "body", [])
    return True


def references(doc: Path) -> list[tuple[str, str, str]]:
    return [match.groups("") for match in REFERENCE.finditer(doc.read_text())]


def test_every_code_reference_in_method_md_resolves():
    found = references(ROOT / "docs" / "method.md")
    assert len(found) >= 30, f"only {len(found)} references parsed: has the reference format changed?"
    broken = []
    for path, separator, symbol in found:
        file = ROOT / path
        if separator == ":":
            broken.append(f"{path}:{symbol}: cite a symbol (path::name), not a line number")
        elif not file.is_file():
            broken.append(f"{path}: no such file")
        elif separator == "::" and not resolves(file, symbol):
            broken.append(f"{path}::{symbol}: not defined there")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("`masklam/models/lam.py::masked_mse`", True),
        ("`masklam/models/lam.py::LAOM.update_target`", True),
        ("`masklam/models/lam.py::LAOMConfig.tau`", True),
        ("`masklam/models/lam.py::no_such_function`", False),
        ("`masklam/models/lam.py::LAOM.no_such_method`", False),
        ("`masklam/models/nowhere.py::masked_mse`", False),
    ],
)
def test_the_checker_tells_a_good_reference_from_a_broken_one(text, ok):
    [(path, _, symbol)] = [match.groups("") for match in REFERENCE.finditer(text)]
    assert ((ROOT / path).is_file() and resolves(ROOT / path, symbol)) == ok
