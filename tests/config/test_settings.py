"""Settings in layers: defaults < config files < REGROW_* variables < flags and keyword
arguments; a bad value or name in any layer is one line naming the setting, where it came
from and what it takes, never a default."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from regrow.config import _RANGES as RANGES
from regrow.config import (
    CONFIG_VARIABLE,
    NOT_SETTINGS,
    SettingError,
    Settings,
    UnknownSetting,
    accepts,
    config_files,
    resolve,
    setting_names,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory and a working directory of the test's own, with no config file."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home"


def env_of(home: Path, **variables: str) -> dict[str, str]:
    return {"HOME": str(home), **variables}


def user_file(home: Path, text: str) -> Path:
    path = home / ".config" / "regrow" / "regrow.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# Precedence and sources


def test_defaults_without_files_or_variables(home: Path) -> None:
    resolved = resolve(env_of(home))
    assert resolved.settings == Settings()
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.files == ()


def test_each_layer_over_the_one_before(home: Path) -> None:
    path = user_file(home, "heartbeat_timeout: 7\nallowed_failures: 5\nsteal_interval: 0.5\n")
    env = env_of(home, REGROW_ALLOWED_FAILURES="4", REGROW_STEAL_INTERVAL="0.25")
    resolved = resolve(
        env, {"steal_interval": 0.125, "heartbeat_interval": None}, flags={"steal_interval": "--x"}
    )
    s = resolved.settings
    assert (s.heartbeat_timeout, s.allowed_failures, s.steal_interval) == (7.0, 4, 0.125)
    assert s.heartbeat_interval == Settings().heartbeat_interval  # None: not given
    assert resolved.sources["heartbeat_timeout"] == f"file {path}"
    assert resolved.sources["allowed_failures"] == "env REGROW_ALLOWED_FAILURES"
    assert resolved.sources["steal_interval"] == "flag --x"
    assert resolved.sources["heartbeat_interval"] == "default"
    assert resolved.files == (str(path),)


def test_keyword_overrides_are_arguments(home: Path) -> None:
    env = env_of(home, REGROW_HEARTBEAT_TIMEOUT="5")
    resolved = resolve(env, {"heartbeat_timeout": 2})
    assert resolved.settings.heartbeat_timeout == 2.0
    assert resolved.sources["heartbeat_timeout"] == "argument"
    assert Settings.from_env(env, heartbeat_timeout=2).heartbeat_timeout == 2.0
    assert Settings.from_env(env).heartbeat_timeout == 5.0


def test_project_file_over_user_file(home: Path) -> None:
    user = user_file(home, "heartbeat_timeout: 7\nallowed_failures: 5\n")
    project = Path.cwd() / "regrow.yaml"
    project.write_text("allowed_failures: 1\n")
    resolved = resolve(env_of(home))
    assert resolved.files == (str(user), str(project))
    assert resolved.settings.heartbeat_timeout == 7.0
    assert resolved.settings.allowed_failures == 1
    assert resolved.sources["allowed_failures"] == f"file {project}"


def test_xdg_config_home(home: Path, tmp_path: Path) -> None:
    user_file(home, "allowed_failures: 5\n")
    xdg = tmp_path / "xdg"
    (xdg / "regrow").mkdir(parents=True)
    (xdg / "regrow" / "regrow.yaml").write_text("allowed_failures: 6\n")
    env = env_of(home, XDG_CONFIG_HOME=str(xdg))
    assert config_files(env)[0] == xdg / "regrow" / "regrow.yaml"
    assert resolve(env).settings.allowed_failures == 6


def test_regrow_config_names_the_only_file(home: Path, tmp_path: Path) -> None:
    user_file(home, "allowed_failures: 5\n")
    (Path.cwd() / "regrow.yaml").write_text("heartbeat_timeout: 9\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("steal_interval: 0.5\n")
    resolved = resolve(env_of(home, REGROW_CONFIG=str(mine)))
    assert resolved.files == (str(mine),)
    assert resolved.settings == Settings(steal_interval=0.5)
    # Empty: no file at all.
    none = resolve(env_of(home, REGROW_CONFIG=""))
    assert none.files == () and none.settings == Settings()
    assert config_files(env_of(home, REGROW_CONFIG="")) == []


def test_regrow_config_naming_no_file_is_an_error(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home, REGROW_CONFIG=str(missing)))
    assert one_line(exc) == f"config file {missing} named by REGROW_CONFIG does not exist"


@pytest.mark.parametrize(
    "text",
    [
        "heartbeat-timeout: 7\nstandby-worker: off\n",
        "regrow:\n  heartbeat_timeout: 7\n  standby_worker: no\n",
        "regrow:\n  heartbeat-timeout: '7'\n  standby-worker: 'False'\n",
    ],
)
def test_file_forms(home: Path, text: str) -> None:
    user_file(home, text)
    s = resolve(env_of(home)).settings
    assert (s.heartbeat_timeout, s.standby_worker) == (7.0, False)


@pytest.mark.parametrize("text", ["", "# nothing\n", "regrow:\n", "{}\n"])
def test_empty_files(home: Path, text: str) -> None:
    user_file(home, text)
    assert resolve(env_of(home)).settings == Settings()


def test_sizes_in_bytes_settings(home: Path) -> None:
    user_file(home, "max_frame_bytes: 2GiB\nstripe_bytes: 1e6\nreceive_pool_bytes: 1024\n")
    env = env_of(home, REGROW_INLINE_RESULT_BYTES="4 KiB")
    s = resolve(env).settings
    assert (s.max_frame_bytes, s.stripe_bytes, s.receive_pool_bytes) == (2 << 30, 10**6, 1024)
    assert s.inline_result_bytes == 4096


@pytest.mark.parametrize(
    ("word", "value"),
    [(w, True) for w in ["1", "true", "True", "YES", "on", " On "]]
    + [(w, False) for w in ["0", "false", "FALSE", "no", "Off"]],
)
def test_bool_words(home: Path, word: str, value: bool) -> None:
    assert resolve(env_of(home, REGROW_STANDBY_WORKER=word)).settings.standby_worker is value


def test_variables_that_are_not_settings_are_left_alone(home: Path) -> None:
    env = env_of(home, **dict.fromkeys(NOT_SETTINGS - {CONFIG_VARIABLE}, "x"))
    # Kubernetes' service links for a Service named regrow-scheduler.
    env["REGROW_SCHEDULER_SERVICE_HOST"] = "10.0.0.1"
    env["REGROW_SCHEDULER_SERVICE_PORT"] = "8786"
    env["REGROW_SCHEDULER_PORT"] = "tcp://10.0.0.1:8786"
    env["REGROW_SCHEDULER_PORT_8786_TCP_ADDR"] = "10.0.0.1"
    env["OTHER_THING"] = "nope"
    assert resolve(env).settings == Settings()


def test_to_env_hands_over_exactly_these_settings(home: Path) -> None:
    """What a parent hands a child wins over any file the child would read."""
    user_file(home, "allowed_failures: 5\nheartbeat_timeout: 7\n")
    parent = Settings.from_env(env_of(home), allowed_failures=3, steal_interval=0.5)
    assert parent.allowed_failures == 3  # the default again, over the file
    child_env = env_of(home, **parent.to_env())
    assert child_env[CONFIG_VARIABLE] == ""
    assert Settings.from_env(child_env) == parent


def test_every_number_has_a_range_and_every_setting_says_what_it_takes() -> None:
    numeric = {f.name for f in fields(Settings) if f.type in ("int", "float")}
    assert numeric == set(RANGES)
    assert {f.type for f in fields(Settings)} <= {"int", "float", "bool", "str"}
    for name in setting_names():
        assert accepts(name)
    Settings()  # the defaults are valid


# Bad values: one line, naming the setting, the source and what it takes


BAD_VARIABLES = [
    ("REGROW_STANDBY_WORKER", "nope", "true or false (or 1/0, yes/no, on/off)"),
    ("REGROW_STANDBY_WORKER", "", "true or false"),
    ("REGROW_HEARTBEAT_TIMEOUT", "abc", "a number > 0"),
    ("REGROW_HEARTBEAT_TIMEOUT", "-1", "a number > 0"),
    ("REGROW_HEARTBEAT_TIMEOUT", "0", "a number > 0"),
    ("REGROW_HEARTBEAT_TIMEOUT", "nan", "a number > 0"),
    ("REGROW_CONNECT_TIMEOUT", "inf", "a number > 0"),
    ("REGROW_ALLOWED_FAILURES", "-1", "a whole number >= 0"),
    ("REGROW_ALLOWED_FAILURES", "2.5", "a whole number >= 0"),
    ("REGROW_MAX_CONNECTIONS", "0", "a whole number >= 1"),
    ("REGROW_TRANSFER_STREAMS", "0", "a whole number >= 1"),
    ("REGROW_MEMORY_KILL_FRACTION", "1.5", "a number from 0 to 1"),
    ("REGROW_MEMORY_TARGET_FRACTION", "-0.1", "a number from 0 to 1"),
    ("REGROW_MAX_FRAME_BYTES", "lots", "a size in bytes >= 1"),
    ("REGROW_MAX_FRAME_BYTES", "1.5", "a size in bytes >= 1"),
    ("REGROW_INLINE_RESULT_BYTES", "-1KiB", "a size in bytes >= 0"),
    ("REGROW_STRIPE_BYTES", "inf", "a size in bytes >= 1"),
]


@pytest.mark.parametrize(("var", "raw", "takes"), BAD_VARIABLES)
def test_bad_variable(home: Path, var: str, raw: str, takes: str) -> None:
    name = var.removeprefix("REGROW_").lower()
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home, **{var: raw}))
    message = one_line(exc)
    assert message.startswith(f"bad setting {name}={raw!r} (from env {var}): expected {takes}")
    assert exc.value.name == name and exc.value.source == f"env {var}"


@pytest.mark.parametrize(
    ("text", "name", "takes"),
    [
        ("heartbeat_timeout: -3\n", "heartbeat_timeout", "a number > 0"),
        ("heartbeat_timeout: [1, 2]\n", "heartbeat_timeout", "a number > 0"),
        ("heartbeat_timeout:\n", "heartbeat_timeout", "a number > 0"),  # null: no default
        ("standby_worker: maybe\n", "standby_worker", "true or false"),
        ("standby_worker: 2\n", "standby_worker", "true or false"),
        ("allowed_failures: true\n", "allowed_failures", "a whole number >= 0"),
        ("dashboard_address: 8787\n", "dashboard_address", "a string"),
        ("memory_pause_fraction: 80%\n", "memory_pause_fraction", "a number from 0 to 1"),
    ],
)
def test_bad_value_in_a_file(home: Path, text: str, name: str, takes: str) -> None:
    path = user_file(home, text)
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home))
    message = one_line(exc)
    assert message.startswith(f"bad setting {name}=")
    assert f"(from file {path}): expected {takes}" in message


def test_bad_value_overridden_by_a_later_layer_is_still_an_error(home: Path) -> None:
    path = user_file(home, "heartbeat_timeout: -3\n")
    with pytest.raises(SettingError, match="from file"):
        resolve(env_of(home, REGROW_HEARTBEAT_TIMEOUT="5"), {"heartbeat_timeout": 2})
    path.unlink()
    with pytest.raises(SettingError, match="from env REGROW_STANDBY_WORKER"):
        resolve(env_of(home, REGROW_STANDBY_WORKER="nope"), {"standby_worker": True})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"heartbeat_timeout": -1}, "bad setting heartbeat_timeout=-1 (from flag --h)"),
        ({"heartbeat_timeout": "soon"}, "bad setting heartbeat_timeout='soon' (from flag --h)"),
        ({"allowed_failures": 1.5}, "bad setting allowed_failures=1.5 (from a keyword argument)"),
        ({"standby_worker": "nope"}, "bad setting standby_worker='nope' (from a keyword"),
        ({"shared_memory": 2}, "bad setting shared_memory=2 (from a keyword argument)"),
        ({"dashboard_address": 8787}, "bad setting dashboard_address=8787 (from a keyword"),
    ],
)
def test_bad_override(home: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home), overrides, flags={"heartbeat_timeout": "--h"})
    assert one_line(exc).startswith(message)


def test_overrides_are_converted(home: Path) -> None:
    s = Settings.from_env(
        env_of(home), standby_worker="off", allowed_failures=2.0, heartbeat_timeout="4"
    )
    assert (s.standby_worker, s.allowed_failures, s.heartbeat_timeout) == (False, 2, 4.0)


def test_bad_value_given_to_settings_itself() -> None:
    with pytest.raises(SettingError) as exc:
        Settings(heartbeat_timeout=-1)
    assert one_line(exc) == (
        "bad setting heartbeat_timeout=-1 (from a keyword argument): expected a number > 0"
    )
    with pytest.raises(SettingError, match="memory_kill_fraction=2"):
        Settings().replace(memory_kill_fraction=2)
    with pytest.raises(SettingError, match="standby_worker='no'"):
        Settings(standby_worker="no")  # type: ignore[arg-type]


# Unknown names: an error naming the closest setting


@pytest.mark.parametrize(
    ("var", "guess"),
    [
        ("REGROW_HEARTBEAT_TIMOUT", "REGROW_HEARTBEAT_TIMEOUT"),
        ("REGROW_heartbeat_timeout", "REGROW_HEARTBEAT_TIMEOUT"),
        ("REGROW_STANDBY", "REGROW_STANDBY_WORKER"),
        ("REGROW_TOKN", "REGROW_TOKEN"),
    ],
)
def test_unknown_variable(home: Path, var: str, guess: str) -> None:
    with pytest.raises(UnknownSetting) as exc:
        resolve(env_of(home, **{var: "1"}))
    assert one_line(exc) == f"unknown setting {var} in the environment; did you mean {guess}?"


def test_unknown_variable_like_no_setting(home: Path) -> None:
    with pytest.raises(UnknownSetting) as exc:
        resolve(env_of(home, REGROW_QQQ="1"))
    assert one_line(exc) == (
        "unknown setting REGROW_QQQ in the environment; `regrow config show` lists the settings"
    )


def test_unknown_key_in_a_file(home: Path) -> None:
    path = user_file(home, "regrow:\n  heartbeat-timout: 3\n")
    with pytest.raises(UnknownSetting) as exc:
        resolve(env_of(home))
    assert one_line(exc) == (
        f"unknown setting 'heartbeat-timout' in file {path}; did you mean 'heartbeat_timeout'?"
    )


def test_unknown_keyword_is_also_a_type_error(home: Path) -> None:
    with pytest.raises(TypeError) as exc:
        Settings.from_env(env_of(home), heartbeat_timout=3)
    assert isinstance(exc.value, SettingError)
    assert one_line(exc) == (
        "unknown setting 'heartbeat_timout' (from a keyword argument); "
        "did you mean 'heartbeat_timeout'?"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heartbeat_timeout: [1\n", "is not valid YAML: "),
        ("a: b: c\n", "is not valid YAML: mapping values are not allowed here (line 1, column 5)"),
        ("- heartbeat_timeout\n", "must map setting names to values (name: value), not hold a"),
        ("just text\n", "must map setting names to values"),
        ("regrow: 3\n", "must map setting names to values (name: value) under 'regrow:'"),
        ("regrow:\n  allowed_failures: 1\nheartbeat_timeout: 2\n", "not beside it"),
        ("heartbeat_timeout: 2\nheartbeat-timeout: 3\n", "heartbeat_timeout is given twice"),
    ],
)
def test_bad_file(home: Path, text: str, message: str) -> None:
    path = user_file(home, text)
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home))
    assert str(path) in one_line(exc)
    assert message in str(exc.value)


def test_unreadable_file(home: Path) -> None:
    path = user_file(home, "")
    path.unlink()
    path.mkdir()  # a directory where the file should be
    with pytest.raises(SettingError) as exc:
        resolve(env_of(home))
    assert one_line(exc).startswith(f"cannot read config file {path}: ")
