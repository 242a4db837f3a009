"""The chaos soak as an operator runs it: ``python -m regrow.cli chaos`` for 60 s with a
fixed seed, graphs of every kind running while workers, nannies, the scheduler and one
worker's network are killed, frozen and cut. Nothing may be wrong, nothing may hang,
and everything it started must be gone afterwards."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from regrow.chaos import DASK_KINDS, FAULT_KINDS, GRAPH_KINDS
from regrow.cli import main

DURATION = 60
SEED = 1
# Graphs of each kind that must complete correctly (a 60 s soak completes dozens).
MIN_PER_KIND = 5


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


# A minute of chaos: run apart from the suite (pytest -m slow, as .ci/run does), which
# must stay under 10 minutes.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "regrow.cli", "chaos", "--duration", str(DURATION)]
    cmd += ["--seed", str(SEED), "--json", str(path)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL
    )
    output = f"{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    print(output)  # shown by pytest when the test fails
    assert path.exists(), f"no JSON report (exit code {proc.returncode}):\n{_tail(output)}"
    report: dict[str, Any] = json.loads(path.read_text())

    assert report["seed"] == SEED
    assert f"seed {SEED}" in proc.stdout.splitlines()[0]
    assert report["wrong"] == 0, report["failures"]["wrong"]
    assert report["hangs"] == 0, (report["failures"]["hangs"], report["failures"]["recovery"])
    assert not report["failures"]["aborted"], report["failures"]["aborted"]
    assert proc.returncode == 0, _tail(output)
    assert "result          PASS" in proc.stdout

    # Every kind of graph ran, and completed correctly often enough to mean something.
    kinds = [k for k in GRAPH_KINDS if k not in DASK_KINDS]
    if importlib.util.find_spec("dask") is not None and importlib.util.find_spec("numpy"):
        kinds += DASK_KINDS
    else:
        assert "dask" in report["skipped"]
    completed = report["graphs"]["completed"]
    short = {k: completed.get(k, 0) for k in kinds if completed.get(k, 0) < MIN_PER_KIND}
    assert not short, f"too few graphs completed: {short} of {completed}"

    # Every kind of fault was injected (network cuts where namespaces can be made), and
    # the cluster recovered from each.
    injected = report["faults"]["injected"]
    for kind in FAULT_KINDS:
        if kind == "cut-network" and "cut-network" in report["skipped"]:
            assert "unavailable" in report["skipped"]["cut-network"]
            continue
        assert injected.get(kind, 0) >= 1, f"{kind} never injected: {injected}"
        assert report["recovery"][kind]["n"] == injected[kind]
    assert report["recovery"]["all"]["max"] is not None

    # Memory of every role, at the start and at the end.
    for when in ("start", "end"):
        roles = {p["role"] for p in report["memory"][when]["processes"]}
        assert roles == {"scheduler", "worker", "nanny", "client"}, (when, roles)

    # Everything it started is gone: processes, and the namespace with its veth pair.
    assert report["failures"]["leaked_processes"] == []
    ns = report["cluster"].get("netns")
    ip = shutil.which("ip")
    if ns and ip:
        listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
        assert ns not in listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "Invalid value for '--duration'"),
        (["--workers", "1"], "Invalid value for '--workers'"),
        (["--seed", "-3"], "Invalid value for '--seed'"),
        (["--graph-timeout", "x"], "Invalid value for '--graph-timeout'"),
        (["--json", "/nonexistent-dir/r.json"], "does not exist"),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["chaos", *args])
    assert result.exit_code == 2
    assert message in result.output
