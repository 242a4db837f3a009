"""Settings: one frozen dataclass, built from defaults, then REGROW_* environment
variables, then explicit arguments (CLI flags or constructor keywords).

Nothing in regrow reads the environment after this point; settings are passed in.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    # How many tasks a worker may hold per thread before the scheduler queues
    # the rest centrally. >1 hides the scheduler round trip for short tasks;
    # work stealing rebalances the surplus when a worker falls behind. With trivial
    # tasks on 2 workers x 1 thread: 4 gave ~5,000 tasks/s, 8 gives ~6,000-6,500.
    worker_saturation: float = 8.0
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
    # and zero (framing.ReceivePool). They are given back first when memory runs high.
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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then REGROW_<FIELD> variables, then the keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"REGROW_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, f.type)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in {f.name for f in fields(cls)}:
                raise TypeError(f"unknown setting {name!r}")
            values[name] = value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The REGROW_<FIELD> variables of the settings that differ from the defaults:
        how a process hands its settings to those it starts (``from_env`` reads them)."""
        default = type(self)()
        return {
            f"REGROW_{f.name.upper()}": str(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, type_: Any) -> Any:
    kind = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
    except ValueError:
        raise ValueError(f"REGROW_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def parse_bytes(text: str) -> int:
    """'4GB', '512 MiB', '1e9' -> bytes."""
    s = text.strip().replace(" ", "")
    units = {
        "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1,
    }  # fmt: skip
    lower = s.lower()
    unit = next((u for u in units if lower.endswith(u)), "")
    number, mult = (lower[: -len(unit)], units[unit]) if unit else (lower, 1)
    try:
        return int(float(number) * mult)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size (try '4GB' or '512MiB')") from None
