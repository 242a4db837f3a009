"""``regrow config show``, and the command line's settings: a config file, a REGROW_*
variable and a flag, each where the precedence puts it; a bad one anywhere is one line
(``Error: ...``) and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import regrow.cli
import regrow.scheduler
from regrow.cli import main
from regrow.config import Settings


class Place:
    """A home directory (``~/.config/regrow/regrow.yaml``) and a working directory
    (``./regrow.yaml``) of the test's own, and an environment without REGROW_*."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.work = root / "work"
        self.home.mkdir()
        self.work.mkdir()
        self.user_file = self.home / ".config" / "regrow" / "regrow.yaml"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("REGROW_") and k != "XDG_CONFIG_HOME"
        }
        self.env["HOME"] = str(self.home)

    def write_user_file(self, text: str) -> Path:
        self.user_file.parent.mkdir(parents=True, exist_ok=True)
        self.user_file.write_text(text)
        return self.user_file

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "regrow.cli", *args],
            env={**self.env, **env},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def show(self, *args: str, **env: str) -> dict[str, Any]:
        proc = self.run("config", "show", "--json", *args, **env)
        assert proc.returncode == 0, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout)
        return out


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0].removeprefix("Error: ")


def test_config_show_with_a_file_a_variable_and_a_flag(place: Place) -> None:
    path = place.write_user_file(
        "regrow:\n"
        "  heartbeat-timeout: 7\n"  # the file alone
        "  allowed_failures: 5\n"  # under a variable
        "  steal_interval: 0.5\n"  # under a variable and a flag
        "  max_frame_bytes: 2GiB\n"
    )
    env = {"REGROW_ALLOWED_FAILURES": "4", "REGROW_STEAL_INTERVAL": "0.25"}
    shown = place.show("--set", "steal-interval=0.125", "--set", "standby_worker=off", **env)
    assert shown["files"] == [str(path)]
    settings = shown["settings"]
    assert settings["heartbeat_timeout"] == {"value": 7.0, "source": f"file {path}"}
    assert settings["max_frame_bytes"] == {"value": 2 << 30, "source": f"file {path}"}
    assert settings["allowed_failures"] == {"value": 4, "source": "env REGROW_ALLOWED_FAILURES"}
    assert settings["steal_interval"] == {"value": 0.125, "source": "flag --set"}
    assert settings["standby_worker"] == {"value": False, "source": "flag --set"}
    assert settings["connect_timeout"] == {"value": 10.0, "source": "default"}
    assert set(settings) == {f for f in Settings.__dataclass_fields__}

    # The table says the same.
    proc = place.run("config", "show", "--set", "steal_interval=0.125", **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"config files read: {path}"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["setting"] == ["value", "source"]
    assert rows["heartbeat_timeout"] == ["7.0", f"file {path}"]
    assert rows["allowed_failures"] == ["4", "env REGROW_ALLOWED_FAILURES"]
    assert rows["steal_interval"] == ["0.125", "flag --set"]
    assert rows["standby_worker"] == ["true", "default"]
    assert rows["dashboard_address"] == ['"127.0.0.1:8787"', "default"]
    assert len(rows) == 1 + len(Settings.__dataclass_fields__)


def test_config_show_files(place: Place, tmp_path: Path) -> None:
    user = place.write_user_file("allowed_failures: 5\nheartbeat_timeout: 7\n")
    project = place.work / "regrow.yaml"
    project.write_text("allowed_failures: 6\n")
    shown = place.show()
    assert shown["files"] == [str(user), str(project)]
    assert shown["settings"]["allowed_failures"]["source"] == f"file {project}"
    assert shown["settings"]["heartbeat_timeout"]["source"] == f"file {user}"

    mine = tmp_path / "mine.yaml"
    mine.write_text("steal_interval: 1\n")
    shown = place.show(REGROW_CONFIG=str(mine))
    assert shown["files"] == [str(mine)]
    assert shown["settings"]["allowed_failures"]["source"] == "default"

    proc = place.run("config", "show", REGROW_CONFIG="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "config files read: none (looked for none: REGROW_CONFIG is empty)"
    )
    project.unlink()
    user.unlink()
    proc = place.run("config", "show")
    assert proc.stdout.splitlines()[0] == (
        f"config files read: none (looked for {user}, {project})"
    )


@pytest.mark.parametrize(
    ("file", "env", "args", "message"),
    [
        (
            "",
            {"REGROW_STANDBY_WORKER": "nope"},
            [],
            "bad setting standby_worker='nope' (from env REGROW_STANDBY_WORKER): "
            "expected true or false (or 1/0, yes/no, on/off)",
        ),
        (
            "",
            {"REGROW_HEARTBEAT_TIMOUT": "3"},
            [],
            "unknown setting REGROW_HEARTBEAT_TIMOUT in the environment; "
            "did you mean REGROW_HEARTBEAT_TIMEOUT?",
        ),
        (
            "heartbeat_timout: 3\n",
            {},
            [],
            "unknown setting 'heartbeat_timout' in file {path}; did you mean 'heartbeat_timeout'?",
        ),
        (
            "memory_kill_fraction: 1.5\n",
            {},
            [],
            "bad setting memory_kill_fraction=1.5 (from file {path}): "
            "expected a number from 0 to 1",
        ),
        ("a: b: c\n", {}, [], "config file {path} is not valid YAML: mapping values"),
        (
            "",
            {},
            ["--set", "allowed_failures=-1"],
            "bad setting allowed_failures='-1' (from flag --set): expected a whole number >= 0",
        ),
        (
            "",
            {},
            ["--set", "alowed_failures=1"],
            "unknown setting 'alowed_failures' (from flag --set); did you mean 'allowed_failures'?",
        ),
    ],
)
def test_config_show_with_a_bad_setting(
    place: Place, file: str, env: dict[str, str], args: list[str], message: str
) -> None:
    if file:
        place.write_user_file(file)
    for form in ([], ["--json"]):
        proc = place.run("config", "show", *form, *args, **env)
        line = one_error_line(proc)
        assert line.startswith(message.format(path=place.user_file)), line
        assert proc.stdout == ""


def test_a_bad_setting_stops_every_command(place: Place) -> None:
    bad = {"REGROW_STANDBY_WORKER": "nope"}
    for args in (
        ["scheduler", "--port", "0"],
        ["worker", "tcp://127.0.0.1:1", "--timeout", "30"],  # not after trying 30 s
        ["worker", "--scheduler-file", str(place.work / "nowhere.json"), "--timeout", "30"],
        ["status", "tcp://127.0.0.1:1"],
        ["demo"],
        ["chaos", "--duration", "1"],
    ):
        line = one_error_line(place.run(*args, **bad))
        assert line.startswith("bad setting standby_worker='nope' (from env"), (args, line)


def test_a_flag_over_a_variable_over_a_file_in_a_real_command(place: Place) -> None:
    """``regrow scheduler --heartbeat-timeout``: the flag is the layer a bad value is
    blamed on, though the variable and the file give good ones."""
    place.write_user_file("heartbeat_timeout: 9\n")
    env = {"REGROW_HEARTBEAT_TIMEOUT": "5"}
    line = one_error_line(place.run("scheduler", "--port", "0", "--heartbeat-timeout", "-1", **env))
    assert line == (
        "bad setting heartbeat_timeout=-1.0 (from flag --heartbeat-timeout): expected a number > 0"
    )
    line = one_error_line(place.run("scheduler", "--port", "0", "--allowed-failures", "-2", **env))
    assert "(from flag --allowed-failures)" in line


def test_the_scheduler_runs_with_the_settings_of_every_layer(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the Settings ``regrow scheduler`` hands its Scheduler."""
    place.write_user_file(
        "heartbeat_timeout: 9\nallowed_failures: 7\nworker_saturation: 2\nsteal_interval: 0.5\n"
    )
    monkeypatch.chdir(place.work)
    monkeypatch.setenv("HOME", str(place.home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("REGROW_CONFIG", raising=False)
    monkeypatch.setenv("REGROW_HEARTBEAT_TIMEOUT", "5")
    monkeypatch.setenv("REGROW_ALLOWED_FAILURES", "6")
    made: list[dict[str, Any]] = []

    class FakeScheduler:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

    def run_service(make: Any, *args: Any, **kwargs: Any) -> None:
        make()

    monkeypatch.setattr(regrow.scheduler, "Scheduler", FakeScheduler)
    monkeypatch.setattr(regrow.cli, "_run_service", run_service)
    monkeypatch.setattr(regrow.cli, "_logging", lambda *args: None)
    result = CliRunner().invoke(
        main, ["scheduler", "--port", "0", "--no-dashboard", "--heartbeat-timeout", "2"]
    )
    assert result.exit_code == 0, result.output
    (kwargs,) = made
    settings: Settings = kwargs["settings"]
    assert settings.heartbeat_timeout == 2.0  # flag over variable over file
    assert settings.allowed_failures == 6  # variable over file
    assert settings.worker_saturation == 2.0  # file over default
    assert settings.steal_interval == 0.5  # file over default
    assert settings.connect_timeout == Settings().connect_timeout  # default
