"""The core stays pure: no module under regrow/core may do IO, read clocks or spawn."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import regrow.core

FORBIDDEN = {"asyncio", "socket", "threading", "subprocess", "ssl", "time", "select"}
CORE = Path(regrow.core.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))


def imported_modules(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def forbidden_in(source: str) -> set[str]:
    return {m for m in imported_modules(source) if m.split(".")[0] in FORBIDDEN}


def test_core_modules_found() -> None:
    names = {p.name for p in MODULES}
    assert {"scheduler_state.py", "events.py", "commands.py", "placement.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(path: Path) -> None:
    assert forbidden_in(path.read_text()) == set()


def test_the_checker_catches_every_form() -> None:
    assert forbidden_in("import time") == {"time"}
    assert forbidden_in("import os, asyncio.events") == {"asyncio.events"}
    assert forbidden_in("from socket import socket") == {"socket"}
    assert forbidden_in("from concurrent import futures\nfrom threading import Lock") == {
        "threading"
    }
    assert forbidden_in("def f():\n    import subprocess\n") == {"subprocess"}
    assert forbidden_in("if x:\n    from select import select\n") == {"select"}
    assert forbidden_in("ssl = __import__('ssl')") == {"ssl"}
    assert forbidden_in("importlib.import_module('time')") == {"time"}
    assert forbidden_in("from . import timeit\nimport timeit") == set()
