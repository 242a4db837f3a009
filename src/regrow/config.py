"""Settings: one frozen dataclass, built in layers, each over the ones before it:

1. the defaults below;
2. config files (YAML, ``name: value`` lines, optionally under a top-level ``regrow:``
   key): ``$XDG_CONFIG_HOME/regrow/regrow.yaml`` (``~/.config/regrow/regrow.yaml``),
   then ``./regrow.yaml``, the second over the first; or, when ``REGROW_CONFIG`` is set,
   only the file it names (empty: no file at all);
3. ``REGROW_<FIELD>`` environment variables;
4. explicit arguments: command-line flags, or keywords (``LocalCluster(...)``).

A bad value in any layer, even one a later layer overrides, is a :class:`SettingError`:
one line naming the setting, where the value came from and what the setting takes. It
never becomes a default. :func:`resolve` also says where each value in force came from
(``regrow config show``).

Nothing in regrow reads the environment after this point; settings are passed in.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    # How many tasks a worker may hold per thread before the scheduler queues
    # the rest centrally. >1 hides the scheduler round trip for short tasks;
    # work stealing rebalances the surplus when a worker falls behind. With trivial
    # tasks on 2 workers x 1 thread: 4 gave ~5,000 tasks/s, 8 gives ~6,000-6,500.
    worker_saturation: float = 8.0
    # Where tasks are short, a worker may hold more per thread: about this many seconds
    # of work by the mean task duration (at most 64 tasks per thread; 0: never more than
    # worker_saturation). Each message then carries several tasks each way: trivial
    # tasks on 2 workers x 1 thread went from 186 to ~130 us of CPU per task.
    worker_queue_seconds: float = 0.002
    # Initial guess of a task's duration (s) before any has been measured.
    default_task_duration: float = 0.001
    # Bytes per second assumed for moving data between workers, for placement.
    bandwidth: float = 500e6
    # A connection must finish its handshake (TLS, then the token) within this many
    # seconds of opening, whatever it sends meanwhile; else it is dropped.
    handshake_timeout: float = 10.0
    # Connecting to a peer gives up after this many seconds.
    connect_timeout: float = 10.0
    # Largest frame accepted after authentication (bytes), by workers and clients...
    max_frame_bytes: int = 1 << 36
    # ...and by the scheduler, which never receives data, only task specs and results
    # of at most inline_result_bytes: a peer announcing more is dropped, not served.
    scheduler_max_frame_bytes: int = 1 << 30
    # A packet's message header (its frame 0, the msgpack list of messages) at most this
    # large (bytes): 100,000 tasks in one submit take ~10 MB.
    max_header_bytes: int = 256 * 2**20
    # Connections a server keeps open at once, in all and from any one host; a peer
    # past either is closed at once, before it costs anything but its socket.
    max_connections: int = 4096
    max_connections_per_host: int = 1024
    # A peer whose outgoing data waiting in our memory passes this many bytes is not
    # reading (stalled, or too slow): it is disconnected with that reason, rather than
    # left to grow a scheduler or worker without bound.
    max_send_buffer_bytes: int = 256 * 2**20
    # A client may have at most this many keys on the scheduler (those its futures hold,
    # finished or not, plus those of a submission): a submission past it errs for that
    # client with the reason, and the scheduler's memory stays bounded.
    max_client_tasks: int = 1_000_000
    # The scheduler keeps the story of the last this many task transitions (what
    # ``story(key)`` and errors tell), ~200 bytes each: up to ~20 MB of its memory.
    transition_log_length: int = 100_000
    # Seconds between work-stealing passes (and other periodic scheduler duties).
    steal_interval: float = 0.05
    # Workers send a heartbeat this often (s)...
    heartbeat_interval: float = 0.5
    # ...and one silent for longer than this (s) is removed: the seed's "roughly three seconds".
    heartbeat_timeout: float = 3.0
    # A task running on this many workers that died errs with KilledWorker.
    allowed_failures: int = 3
    # When a worker's connection closes, wait this long (s) for its nanny to say why it
    # died, so errors name the real cause (signal, exit code, memory limit).
    death_report_wait: float = 1.0
    # Above this fraction of its memory limit a worker spills results to disk...
    memory_target_fraction: float = 0.6
    # ...above this one it takes no new tasks until memory falls...
    memory_pause_fraction: float = 0.8
    # ...and above this one its nanny kills and replaces it.
    memory_kill_fraction: float = 0.95
    # How often (s) the nanny and the worker look at the worker's memory.
    memory_monitor_interval: float = 0.1
    # A client that loses its scheduler tries to reconnect for this long (s); then its
    # pending futures fail with SchedulerLostError.
    reconnect_timeout: float = 20.0
    # A client whose connection drops without a goodbye keeps its futures' results on the
    # cluster this long (s), so it can reconnect and carry on.
    client_grace: float = 10.0
    # The journal is written at most this often (s): one transaction per flush.
    journal_interval: float = 0.02
    # After a restart from its journal, the scheduler waits up to this long (s) for the
    # workers it knew to come back before recomputing what they held.
    recovery_wait: float = 5.0
    # A force-cancelled task that has not stopped after this many seconds gets its
    # worker restarted by the nanny.
    cancel_grace: float = 2.0
    # Large results (>= 1 MiB of out-of-band buffers, e.g. numpy arrays) copied once into
    # sealed shared memory when their task ends, so that workers and clients on the same
    # host map them instead of copying (memory shared, copy-on-write). Off by default:
    # the copy costs about 50-100 ms per 100 MB at every such task's end, while a
    # same-host transfer without it (protocol.lend: one process_vm_readv) costs ~17 ms.
    # Worth it when many processes on a host read the same large values.
    seal_results: bool = False
    # Large values between processes of one host go through shared memory (/dev/shm,
    # memfd). Turn off where processes share a host name and boot id but not /dev/shm
    # and /proc (some container setups): everything then goes by socket.
    shared_memory: bool = True
    # A result that pickles to at most this many bytes goes to the scheduler with the
    # news that its task finished, and on to the clients that want it (as Ray keeps small
    # results with their owner). Losing its worker then loses nothing, gathering it takes
    # no fetch, and a dependent's worker gets it with its task. 0 turns this off.
    inline_result_bytes: int = 16384
    # The scheduler keeps at most this many bytes of such results in all; past it, new
    # ones live on their workers only.
    inline_total_bytes: int = 256 * 2**20
    # A worker keeps up to this many bytes (and at most 1/8 of its memory limit) of
    # large receive buffers whose values are gone, to receive into again: memory written
    # before takes data ~1.9x as fast as fresh memory, which the kernel must fault in
    # and zero (framing.ReceivePool). As much again of memory malloc freed is kept for
    # the next large bytes or str it makes (protocol.heap). Both are given back first
    # when memory runs high. A client keeps such receive buffers too, and gives them
    # back once it has received nothing large for 5 s. 0 turns both off.
    receive_pool_bytes: int = 256 * 2**20
    # A large value fetched from a worker on another host comes over this many TCP
    # connections at once, each frame of at least ``stripe_bytes`` cut into one range
    # per connection (protocol.stripe): one connection leaves both ends waiting on each
    # other most of the time. 1 turns this off.
    transfer_streams: int = 4
    stripe_bytes: int = 8 * 2**20
    # Serving a get-data request, a worker makes at most this many bytes of new memory
    # (pickle streams, views of spill files) before the reply goes; the requester asks
    # again for the rest. At least one value always goes, whatever its size. With a
    # memory limit, at most an eighth of it.
    transfer_copy_bytes: int = 64 * 2**20
    # A nanny keeps a second worker process started, its imports done, idle, to take
    # over the moment its worker dies: a fresh worker registers ~20 ms after a SIGKILL
    # instead of ~200 ms. Costs one idle process per nanny (~30 MB resident, 18 MB of it its own).
    standby_worker: bool = True
    # Where a scheduler serves its dashboard (and /health, /metrics) unless told: HOST:PORT
    # or :PORT (every interface); '' for nowhere. Loopback by default: off loopback it
    # asks for the cluster token. Taken, the port moves to the next free one.
    dashboard_address: str = "127.0.0.1:8787"

    def __post_init__(self) -> None:
        # Settings(...) and .replace(...) given a bad value: the same one line as a bad
        # REGROW_* variable (resolve() has converted text, and named its source, by now).
        for name in _KINDS:
            value = getattr(self, name)
            if not _valid(name, value):
                raise SettingError(_bad(name, value, "argument"), name=name, source="argument")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then config files, then REGROW_<FIELD> variables, then the keyword
        overrides (None: not given); see :func:`resolve`."""
        return resolve(environ, overrides).settings

    def to_env(self) -> dict[str, str]:
        """How a process hands its settings to those it starts (``from_env`` reads them):
        the REGROW_<FIELD> variables of the settings that differ from the defaults, and
        REGROW_CONFIG empty, so that they read no config file (the parent's settings
        already hold what its files said; a file of their own, on another host perhaps,
        would make them differ)."""
        default = type(self)()
        env = {CONFIG_VARIABLE: ""}
        env.update(
            (_variable(f.name), str(getattr(self, f.name)))
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        )
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# How each field is written: "int", "float", "bool" or "str" (annotations are text here).
_KINDS: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}

# What each number may be: (lowest, whether the lowest itself is allowed, highest or None).
# Every int and float field has an entry (tests/config/test_settings.py checks).
_POSITIVE = (0.0, False, None)
_ZERO_UP = (0.0, True, None)
_ONE_UP = (1.0, True, None)
_FRACTION = (0.0, True, 1.0)
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "worker_saturation": _POSITIVE,
    "worker_queue_seconds": _ZERO_UP,
    "default_task_duration": _POSITIVE,
    "bandwidth": _POSITIVE,
    "handshake_timeout": _POSITIVE,
    "connect_timeout": _POSITIVE,
    "max_frame_bytes": _ONE_UP,
    "scheduler_max_frame_bytes": _ONE_UP,
    "max_header_bytes": _ONE_UP,
    "max_connections": _ONE_UP,
    "max_connections_per_host": _ONE_UP,
    "max_send_buffer_bytes": _ONE_UP,
    "max_client_tasks": _ONE_UP,
    "transition_log_length": _ZERO_UP,
    "steal_interval": _POSITIVE,
    "heartbeat_interval": _POSITIVE,
    "heartbeat_timeout": _POSITIVE,
    "allowed_failures": _ZERO_UP,
    "death_report_wait": _ZERO_UP,
    "memory_target_fraction": _FRACTION,
    "memory_pause_fraction": _FRACTION,
    "memory_kill_fraction": _FRACTION,
    "memory_monitor_interval": _POSITIVE,
    "reconnect_timeout": _ZERO_UP,
    "client_grace": _ZERO_UP,
    "journal_interval": _POSITIVE,
    "recovery_wait": _ZERO_UP,
    "cancel_grace": _ZERO_UP,
    "inline_result_bytes": _ZERO_UP,
    "inline_total_bytes": _ZERO_UP,
    "receive_pool_bytes": _ZERO_UP,
    "transfer_streams": _ONE_UP,
    "stripe_bytes": _ONE_UP,
    "transfer_copy_bytes": _ZERO_UP,
}

# The variable that names the config file (empty: read none), and the file's name.
CONFIG_VARIABLE = "REGROW_CONFIG"
CONFIG_FILE_NAME = "regrow.yaml"

# REGROW_* variables that are not settings (read elsewhere), so never "unknown settings".
NOT_SETTINGS = frozenset(
    {
        CONFIG_VARIABLE,
        "REGROW_TOKEN",  # the cluster token: cli, client, deploy
        "REGROW_TLS_CA_FILE",  # TLS material: security.Security.from_env
        "REGROW_TLS_CERT",
        "REGROW_TLS_KEY",
        "REGROW_REQUIRE_ENCRYPTION",
        "REGROW_FUZZ_SEED",  # the test suite's: tests/security/test_fuzz_wire.py
        "REGROW_TEST_PYTHON_IMAGE",  # and tests/deploy/test_image.py
    }
)
# Kubernetes puts these in every pod of the namespace of a Service named regrow-...
# (REGROW_SCHEDULER_SERVICE_HOST, REGROW_SCHEDULER_PORT_8786_TCP_ADDR, ...): not settings.
_SERVICE_LINK = re.compile(
    r"REGROW_(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingError(ValueError):
    """A bad setting. Its message is one line: the setting, where the value came from (a
    config file, a REGROW_* variable, a flag, an argument) and what the setting takes."""

    def __init__(self, message: str, *, name: str = "", source: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.source = source


class UnknownSetting(SettingError, TypeError):
    """No setting has that name (also a TypeError, as an unexpected keyword argument)."""


@dataclass(frozen=True)
class Resolved:
    """The settings in force, where each came from, and the config files read."""

    settings: Settings
    # Every field's source: "default", "file PATH", "env REGROW_X", "flag --x" or
    # "argument" (a keyword to LocalCluster, Settings.from_env...).
    sources: dict[str, str]
    files: tuple[str, ...]


def setting_names() -> list[str]:
    """Every setting's name, in the order Settings defines them."""
    return list(_KINDS)


def accepts(name: str) -> str:
    """What setting ``name`` takes, in words."""
    kind = _KINDS[name]
    if kind == "bool":
        return "true or false (or 1/0, yes/no, on/off)"
    if kind == "str":
        return "a string"
    lowest, inclusive, highest = _RANGES[name]
    if highest is not None:
        bound = f"from {lowest:g} to {highest:g}"
    else:
        bound = f"{'>=' if inclusive else '>'} {lowest:g}"
    if name.endswith("_bytes"):
        return f"a size in bytes {bound} (a whole number, or such as '256MiB' or '1GB')"
    return f"{'a number' if kind == 'float' else 'a whole number'} {bound}"


def config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where config files are looked for, in order (a later file's values over an
    earlier one's): the file REGROW_CONFIG names (empty: none), else the user's,
    ``$XDG_CONFIG_HOME/regrow/regrow.yaml`` (``~/.config/...``), and ``./regrow.yaml``.
    Only one named by REGROW_CONFIG must exist."""
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_VARIABLE)
    if named is not None:
        return [Path(named).expanduser().absolute()] if named.strip() else []
    paths: list[Path] = []
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # unset, or relative (which the XDG spec says to ignore)
        home = env.get("HOME") or (os.path.expanduser("~") if environ is None else "")
        base = os.path.join(home, ".config") if os.path.isabs(home) else ""
    if base:
        paths.append(Path(base, "regrow", CONFIG_FILE_NAME))
    try:
        here = Path.cwd() / CONFIG_FILE_NAME
    except OSError:  # the working directory is gone
        return paths
    if here not in paths:
        paths.append(here)
    return paths


def resolve(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
) -> Resolved:
    """The settings from their layers, each over the ones before: the defaults, the
    config files (:func:`config_files`), the REGROW_<FIELD> variables of ``environ``
    (default ``os.environ``), then ``overrides`` (None: not given). ``flags`` names the
    command-line flag that gave an override (its source is then "flag --x", else
    "argument").

    Raises :class:`SettingError` (one line) for a bad value in any layer, overridden or
    not, an unknown key in a file, an unknown REGROW_* variable (but those of
    ``NOT_SETTINGS``), or a file that cannot be read; :class:`UnknownSetting` for an
    unknown override."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(_KINDS, "default")
    read: list[str] = []
    named = env.get(CONFIG_VARIABLE) is not None
    for path in config_files(env):
        if not named and not path.exists():
            continue
        source = f"file {path}"
        for name, raw in _read_file(path, named).items():
            values[name] = _checked(name, raw, source)
            sources[name] = source
        read.append(str(path))
    for var in sorted(env):
        if not var.startswith("REGROW_"):
            continue
        name = var[len("REGROW_") :].lower()
        if name in _KINDS and var == _variable(name):
            source = f"env {var}"
            values[name] = _checked(name, env[var], source)
            sources[name] = source
        elif var not in NOT_SETTINGS and not _SERVICE_LINK.fullmatch(var):
            raise _unknown(var, "in the environment", _VARIABLES, "env")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        flag = (flags or {}).get(name)
        source = f"flag {flag}" if flag else "argument"
        if name not in _KINDS:
            raise _unknown(repr(name), f"({_from(source)})", [repr(n) for n in _KINDS], source)
        values[name] = _checked(name, value, source)
        sources[name] = source
    return Resolved(Settings(**values), sources, tuple(read))


def _variable(name: str) -> str:
    return f"REGROW_{name.upper()}"


# What an unknown REGROW_* variable may have meant.
_VARIABLES = [*map(_variable, _KINDS), *sorted(NOT_SETTINGS)]


def _read_file(path: Path, named: bool) -> dict[str, Any]:
    """The settings in the config file at ``path``, by field name."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        how = f"named by {CONFIG_VARIABLE} " if named else ""
        raise SettingError(f"config file {path} {how}does not exist") from None
    except OSError as exc:
        raise SettingError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingError(f"config file {path} is not UTF-8 text") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or "cannot parse it").split())
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SettingError(f"config file {path} is not valid YAML: {problem}{at}") from None
    shape = f"config file {path} must map setting names to values (name: value)"
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingError(f"{shape}, not hold a {type(data).__name__}")
    if "regrow" in data:
        others = [key for key in data if key != "regrow"]
        if others:
            raise SettingError(
                f"config file {path}: with a top-level 'regrow:' key, every setting goes "
                f"under it, not beside it ({others[0]!r})"
            )
        data = data["regrow"]
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingError(f"{shape} under 'regrow:', not a {type(data).__name__}")
    source = f"file {path}"
    out: dict[str, Any] = {}
    for key, value in data.items():
        # As dask's: dashes and underscores are the same (heartbeat-timeout).
        name = key.replace("-", "_") if isinstance(key, str) else key
        if name not in _KINDS:
            raise _unknown(repr(key), f"in file {path}", [repr(n) for n in _KINDS], source)
        if name in out:
            raise SettingError(
                f"setting {name} is given twice in file {path}", name=name, source=source
            )
        out[name] = value
    return out


def _unknown(key: str, where: str, known: list[str], source: str) -> UnknownSetting:
    # Compared without the REGROW_ all variables share, and whatever the case.
    def bare(text: str) -> str:
        return text.removeprefix("REGROW_").lower()

    close = difflib.get_close_matches(bare(key), [bare(k) for k in known], n=1)
    guess = next((k for k in known if close and bare(k) == close[0]), "")
    hint = f"did you mean {guess}?" if guess else "`regrow config show` lists the settings"
    return UnknownSetting(f"unknown setting {key} {where}; {hint}", name=key, source=source)


def _checked(name: str, value: object, source: str) -> Any:
    try:
        return _convert(name, value)
    except (ValueError, TypeError, OverflowError):
        raise SettingError(_bad(name, value, source), name=name, source=source) from None


def _bad(name: str, value: object, source: str) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"bad setting {name}={shown} ({_from(source)}): expected {accepts(name)}"


def _from(source: str) -> str:
    return "from a keyword argument" if source == "argument" else f"from {source}"


def _convert(name: str, value: object) -> Any:
    """``value`` (text from a variable, a flag or a file, or a Python value) as setting
    ``name`` holds it; ValueError if it is none of what the setting takes."""
    kind = _KINDS[name]
    out: Any = value
    if isinstance(value, str) and kind != "str":
        text = value.strip()
        if kind == "bool":
            word = text.lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(value)
            out = word in _TRUE
        elif kind == "float":
            out = float(text)
        elif name.endswith("_bytes"):
            try:
                out = int(text)
            except ValueError:
                size = _size(text)
                if not size.is_integer():
                    raise
                out = int(size)
        else:
            out = int(text)
    elif kind == "bool" and type(value) is int and value in (0, 1):
        out = bool(value)
    elif kind == "int" and (
        (isinstance(value, numbers.Integral) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer())
    ):
        out = int(value)
    elif kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        out = float(value)
    if not _valid(name, out):
        raise ValueError(value)
    return out


def _valid(name: str, value: object) -> bool:
    kind = _KINDS[name]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    number: float
    if kind == "int":
        if not isinstance(value, numbers.Integral):
            return False
        number = int(value)  # compared as an int: exact, however large
    else:
        if not isinstance(value, numbers.Real):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
    lowest, inclusive, highest = _RANGES[name]
    above = number >= lowest if inclusive else number > lowest
    return above and (highest is None or number <= highest)


_UNITS = {
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1,
}  # fmt: skip


def _size(text: str) -> float:
    """'4GB', '512 MiB', '1e9' -> bytes, as a float; ValueError if it is none."""
    lower = text.strip().replace(" ", "").lower()
    unit = next((u for u in _UNITS if lower.endswith(u)), "")
    number, mult = (lower[: -len(unit)], _UNITS[unit]) if unit else (lower, 1)
    return float(number) * mult


def parse_bytes(text: str) -> int:
    """'4GB', '512 MiB', '1e9' -> bytes."""
    try:
        return int(_size(text))
    except (ValueError, OverflowError):
        raise ValueError(f"cannot read {text!r} as a size (try '4GB' or '512MiB')") from None
