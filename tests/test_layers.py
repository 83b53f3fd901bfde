"""The layers: study/ (the engine) never imports analysis/ (which reads studies); study/cli.py, the
composition root, is the one place in study/ that names analysis/ modules, in its command table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

ENGINE = sorted((ROOT / "study").rglob("*.py"))
COMPOSITION_ROOT = ROOT / "study" / "cli.py"


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and its classes and functions (prose, not code)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_the_engine_is_found():
    assert COMPOSITION_ROOT in ENGINE and len(ENGINE) > 10


@pytest.mark.parametrize("path", ENGINE, ids=_name)
def test_the_engine_never_imports_analysis(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.append((node.lineno, node.module))
    found = [f"line {line}: {name}" for line, name in imported
             if name == "analysis" or name.startswith("analysis.")]
    assert not found, f"{_name(path)} imports analysis/: {found}"


@pytest.mark.parametrize("path", [p for p in ENGINE if p != COMPOSITION_ROOT], ids=_name)
def test_only_the_composition_root_names_analysis_modules_in_code(path):
    """A module name in a string is an import too (importlib): only study/cli.py may hold one.
    Prose (docstrings, comments) may name analysis's commands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = _docstrings(tree)
    found = [f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and id(node) not in prose and "analysis." in node.value]
    assert not found, f"{_name(path)} names analysis/ in code: {found}"


def test_the_composition_root_names_analysis_only_in_its_command_table():
    from study import cli

    tree = ast.parse(COMPOSITION_ROOT.read_text())
    prose = _docstrings(tree)
    named = {node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and id(node) not in prose and "analysis." in node.value}
    table = {module for module, _ in cli.COMMANDS.values()} | {
        path for given in cli.GIVEN.values() for path in given.values()}
    assert named and named <= table
