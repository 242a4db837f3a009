"""The package as users get it: its type hints are marked for their type checkers
(PEP 561), and ``import regrow`` needs none of the optional integrations."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

OPTIONAL = ("dask", "distributed", "joblib", "sklearn", "asyncssh", "selenium", "pyspark", "ray")

_BLOCKED_IMPORT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, Block())
import regrow
from regrow import Client, LocalCluster, progress
print("imported", regrow.__version__)
"""


def test_the_type_hints_are_marked_for_type_checkers() -> None:
    assert resources.files("regrow").joinpath("py.typed").is_file()


def test_import_regrow_needs_no_optional_integration() -> None:
    code = _BLOCKED_IMPORT.format(blocked=set(OPTIONAL))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")


def test_import_regrow_imports_no_numpy() -> None:
    """numpy is optional, and slow to import: regrow imports it only when a value needs
    it (a worker's fresh interpreter, ``regrow --help``, start faster without)."""
    code = (
        "import sys, regrow\n"
        "from regrow import Client, LocalCluster\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
