"""TLS vs plaintext: what mutual TLS costs regrow and dask.distributed, as ratios.

Every figure comes in pairs: the same workload on a plaintext cluster and on a TLS
cluster of the same system, both clusters up for the whole part, their repetitions
interleaved (in each repetition the clusters take turns, regrow plaintext, regrow TLS,
dask plaintext, dask TLS, then the reverse order in the next one: the VM's speed drifts
by tens of percent within minutes). "TLS / plaintext" is the median over the
repetitions of each repetition's ratio TLS value / plaintext value (1 = TLS is free;
0.8 = TLS costs 20%); "regrow TLS vs dask TLS" is regrow's TLS median / dask's TLS
median. Both systems use their throwaway CA (``regrow.Security.temporary()``,
``distributed.security.Security.temporary()`` or the same PEM files) with mutual
authentication and ``require_encryption``; both negotiate TLS 1.3 with their defaults
(the raw TLS pair below reports the cipher: TLS_AES_256_GCM_SHA384 on this machine).

Part 1, task throughput (small messages only): ``regrow.LocalCluster(n_workers=2,
threads_per_worker=1, security=...)`` and ``distributed.LocalCluster(n_workers=2,
threads_per_worker=1, processes=True, security=...)``, TLS on (``security`` = a
temporary one; every address is ``tls://``, checked) and off. Rows as in
``benchmarks.throughput``: ``client.submit(inc, i, pure=False)`` in a loop for 10,000
``i`` then ``gather``; and one ``client.map(inc, range(N_TASKS), pure=False)`` then
``gather`` (10,000 tasks, not throughput's 100,000: dask's 500 tasks/s would make that
row take an hour here). Timed from the first submit to ``gather`` returning; tasks/s.

Part 2, a 100 MB transfer across hosts (needs root): ``benchmarks.transfer_hosts``'s
layout (worker B in a network namespace of its own behind a veth pair, each worker in a
UTS namespace of its own, so the 100 MB go over TCP; checked on the veth's byte
counter), with the scheduler, both workers and the client started with the same PEM
files (``transfer_hosts.TlsFiles``: ``--tls-ca-file/--tls-cert/--tls-key``; dask also
``--protocol tls``) for the TLS clusters. Four clusters on one veth pair. Per
repetition and cluster, as in ``transfer_hosts``: a fresh array made on A (untimed,
held by A only), then a consumer pinned on B, timed from ``submit`` to ``.result()``;
MB/s = 100 MB / that time (MB = 10**6 bytes). Regrow uses its defaults (4 connections
per large fetch, ``transfer_streams``). Each transfer is bracketed by the raw TCP
socket pair just before and just after it (``transfer_hosts.RawPath``: one
``sendall()`` of 100 MB on a new connection), and given as % of 100 MB over the mean of
those two raw times. Its "TLS / plaintext" row is the median of the per-repetition
ratios of those percentages (the path's drift taken out); target: >= 0.80 for regrow
(the issue: "large transfers over TLS stay within 80% of plaintext speed").

Limits (no cluster): the raw TCP socket pair over the veth pair (best of 5 at the
start, and the median of all the brackets), and the same over TLS with the same
certificates, the handshake done before the clock starts (``RawTlsPath``): through
memory BIOs in 1 MB units (``BioTls``: encrypt 1 MB, send it, encrypt the next; recv()
up to 1 MB, decrypt it into the preallocated target), the speed one Python thread per
end reaches here without asyncio, measured once per repetition too, between two raw TCP
transfers, to give "raw TLS as % of raw TCP": what TLS costs a bare socket pair on this
machine; and, at the start only, through ``ssl.SSLSocket.sendall``/``recv_into``
(OpenSSL sends each 16 KB record with its own send() and reads a record's header and
body with two recv(): slower).

At least ``MIN_REPS`` (5) repetitions for part 1 and ``MIN_REPS_TRANSFER`` (7) for
part 2, whatever ``--reps`` says. Part 2 needs Linux, root, ``ip`` and ``unshare``;
otherwise its rows say ``not run``. Everything this creates (namespace, veth pair,
processes, PEM files in a temporary directory) is removed on the way out, also on
errors (SIGTERM unwinds like Ctrl-C).

Run: ``python -m benchmarks.tls [--reps N] [--systems regrow,dask] [--parts throughput,transfer]``
(about 18 minutes with both systems, most of it dask's throughput rows; ``--parts
transfer`` alone about 1 minute).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import common, transfer_hosts
from benchmarks.common import (
    LIMIT_REPS,
    N_WORKERS,
    REP_TIMEOUT,
    THREADS_PER_WORKER,
    System,
    WorkloadTimeout,
    check,
    fmt,
    time_limit,
)
from benchmarks.throughput import N_SUBMIT, map_tasks, submit_loop
from benchmarks.transfer_hosts import MB, NBYTES, TIMEOUT, RawPath, TlsFiles, around
from regrow.testing import veth_link

N_TASKS = 10_000  # the map row's tasks
MIN_REPS = 5
MIN_REPS_TRANSFER = 7
TARGET = 0.80  # regrow's 100 MB cross-host transfer, TLS / plaintext
SYSTEMS = ("regrow", "dask")
PARTS = ("throughput", "transfer")
MODES = (False, True)  # TLS off, on

ROW_SUBMIT = f"throughput: {N_SUBMIT:,} x submit() + gather"
ROW_MAP = f"throughput: map() of {N_TASKS:,} + gather"
ROW_RATE = "100 MB A -> B across a veth pair (consumer on B, end to end)"
ROW_SHARE = "the same as % of the raw TCP socket pair measured just before and after it"


def mode_name(tls: bool) -> str:
    return "TLS" if tls else "plaintext"


# --------------------------------------------------------------------- results
@dataclass
class PairRow:
    """One workload measured on each system with TLS off and on, in the same repetitions."""

    name: str
    unit: str
    target: float | None = None  # regrow's TLS / plaintext at least this
    samples: dict[tuple[str, bool], list[float]] = field(default_factory=dict)
    # Per repetition, TLS / plaintext (only when both ran in that repetition).
    ratios: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, bool], str] = field(default_factory=dict)

    def add(self, system: str, rep_values: dict[bool, float]) -> None:
        for tls, value in rep_values.items():
            self.samples.setdefault((system, tls), []).append(value)
        if len(rep_values) == 2:
            self.ratios.setdefault(system, []).append(rep_values[True] / rep_values[False])

    def median(self, system: str, tls: bool) -> float | None:
        values = self.samples.get((system, tls))
        if not values or (system, tls) in self.errors:
            return None
        return statistics.median(values)

    def ratio(self, system: str) -> float | None:
        values = self.ratios.get(system)
        if not values or any((system, tls) in self.errors for tls in MODES):
            return None
        return statistics.median(values)

    def cell(self, system: str, tls: bool) -> str:
        if (system, tls) in self.errors:
            return self.errors[(system, tls)].split(":", 1)[0]
        return fmt(self.median(system, tls))

    def met(self) -> str:
        ratio = self.ratio("regrow")
        if self.target is None or ratio is None:
            return "-"
        return "yes" if ratio >= self.target else "no"

    def progress(self) -> None:
        for system, tls in sorted(self.samples):
            values = ", ".join(fmt(v) for v in self.samples[(system, tls)])
            print(f"  {system:<6} {mode_name(tls):<9}  {self.name}: "
                  f"{fmt(self.median(system, tls))} {self.unit} (median of {values})")  # fmt: skip
        for system, ratios in self.ratios.items():
            values = ", ".join(f"{v:.3f}" for v in ratios)
            print(f"  {system:<6} TLS/plain  {self.name}: {self.ratio(system) or 0:.3f} "
                  f"(median of {values})", flush=True)  # fmt: skip


@dataclass
class Results:
    rows: list[PairRow] = field(default_factory=list)
    # name -> (unit, samples, how shown: "best" or "median")
    limits: list[tuple[str, str, list[float], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def mark(rows: Sequence[PairRow], keys: Sequence[tuple[str, bool]], error: str) -> None:
    for row in rows:
        for key in keys:
            row.errors.setdefault(key, error)


# ------------------------------------------------------ part 1: task throughput
@contextlib.contextmanager
def local_system(name: str, tls: bool) -> Iterator[System]:
    """``name``'s LocalCluster (2 workers x 1 thread, processes), TLS on or off, and a
    Client; warmed up like every benchmark's (``common._ready``)."""
    scheme = "tls://" if tls else "tcp://"
    if name == "regrow":
        import regrow

        security = regrow.Security.temporary() if tls else None
        with (
            regrow.LocalCluster(
                n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER, security=security
            ) as rc,
            regrow.Client(rc, set_as_default=False) as client,
        ):
            check(rc.scheduler_address.startswith(scheme), f"scheduler at {rc.scheduler_address}")
            system = common._ready(System(name, client, regrow.wait))
            check(all(w.startswith(scheme) for w in system.workers), f"{system.workers}")
            yield system
    elif name == "dask":
        import distributed

        with (
            distributed.LocalCluster(
                n_workers=N_WORKERS,
                threads_per_worker=THREADS_PER_WORKER,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
                security=True if tls else None,
            ) as dc,
            distributed.Client(dc, set_as_default=False) as client,
        ):
            check(dc.scheduler_address.startswith(scheme), f"scheduler at {dc.scheduler_address}")
            system = common._ready(System(name, client, distributed.wait))
            check(all(w.startswith(scheme) for w in system.workers), f"{system.workers}")
            yield system
    else:
        raise ValueError(f"unknown system {name!r}")


def throughput_part(systems: Sequence[str], reps: int, results: Results) -> None:
    workloads: list[tuple[PairRow, Callable[[System], float]]] = [
        (PairRow(ROW_SUBMIT, "tasks/s"), submit_loop),
        (PairRow(ROW_MAP, "tasks/s"), partial(map_tasks, n=N_TASKS)),
    ]
    rows = [row for row, _ in workloads]
    results.rows += rows
    with contextlib.ExitStack() as outer:
        live: dict[tuple[str, bool], System] = {}
        stacks: dict[tuple[str, bool], contextlib.ExitStack] = {}
        for name in systems:
            for tls in MODES:
                stack = outer.enter_context(contextlib.ExitStack())
                try:
                    live[(name, tls)] = stack.enter_context(local_system(name, tls))
                    stacks[(name, tls)] = stack
                    print(f"  {name:<6} {mode_name(tls):<9}  cluster up", flush=True)
                except Exception as exc:
                    mark(rows, [(name, tls)], f"ERROR (cluster): {type(exc).__name__}: {exc}")
                    print(f"  {name:<6} {mode_name(tls):<9}  cluster failed: {exc}", flush=True)
        for row, fn in workloads:
            for rep in range(max(reps, MIN_REPS)):
                order = list(live) if rep % 2 == 0 else list(reversed(live))
                got: dict[str, dict[bool, float]] = {}
                for key in order:
                    name, tls = key
                    if key in row.errors:
                        continue
                    common._settle()
                    try:
                        with time_limit(REP_TIMEOUT, f"{name} {mode_name(tls)} / {row.name}"):
                            value = fn(live[key])
                    except WorkloadTimeout as exc:
                        mark(rows, [key], f"HANG: {exc}")
                        stacks[key].close()
                        continue
                    except Exception as exc:
                        mark([row], [key], f"ERROR: {type(exc).__name__}: {exc}")
                        continue
                    got.setdefault(name, {})[tls] = value
                for name, values in got.items():
                    row.add(name, values)
                shown = "; ".join(
                    f"{name} "
                    + ", ".join(f"{mode_name(t)} {fmt(v)}" for t, v in sorted(vs.items()))
                    for name, vs in got.items()
                )
                print(f"    {row.name} rep {rep + 1}: {shown} tasks/s", flush=True)
            row.progress()


# ----------------------------------------------------- part 2: across hosts
CHUNK = 1 << 20  # the memory-BIO raw TLS path's unit of encryption and of send()/recv()


def _context(files: TlsFiles, server: bool) -> ssl.SSLContext:
    """Mutual TLS with the cluster's certificates, defaults otherwise (as both systems)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(files.ca)
    ctx.load_cert_chain(files.cert, files.key)
    if server:
        ctx.num_tickets = 0
    return ctx


class BioTls:
    """TLS over a connected blocking socket through memory BIOs (as asyncio does), in
    ``CHUNK`` units: ``sendall`` encrypts 1 MB, sends it, encrypts the next, ...;
    ``recv_into`` receives up to 1 MB per recv() and decrypts it into the target."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server)
        self.rbuf = memoryview(bytearray(CHUNK))
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        n = self.sock.recv_into(self.rbuf)
        if n == 0:
            raise ConnectionError("the peer closed the connection")
        self.incoming.write(self.rbuf[:n])

    def cipher(self) -> str:
        cipher = self.obj.cipher()
        return f"{cipher[1]} {cipher[0]}" if cipher else "?"

    def sendall(self, data: memoryview) -> None:
        for i in range(0, data.nbytes, CHUNK):
            self.obj.write(data[i : i + CHUNK])
            self._flush()

    def recv_into(self, view: memoryview) -> None:
        got = 0
        while got < view.nbytes:
            try:
                got += self.obj.read(view.nbytes - got, view[got:])
            except ssl.SSLWantReadError:
                self._fill()


def _raw_tls_receiver(host: str, nbytes: int, ca: str, cert: str, key: str, bio: bool) -> None:
    """``transfer_hosts._raw_receiver`` over TLS: in B's namespace until stopped, accept
    connections, do the TLS handshake (mutual, the cluster's certificates), receive
    ``nbytes`` of ones into one preallocated, written buffer, answer b"k" (b"x" if
    wrong). ``bio``: through ``BioTls``; else an ``ssl.SSLSocket``'s ``recv_into``."""
    import numpy as np

    ctx = _context(TlsFiles(ca, cert, key), server=True)
    buf = np.ones(nbytes, dtype=np.uint8)
    with socket.create_server((host, 0)) as server:
        print(server.getsockname()[1], flush=True)
        while True:
            buf[:] = 0
            view = memoryview(buf).cast("B")
            conn, _ = server.accept()
            conn.settimeout(TIMEOUT)
            with conn:
                try:
                    if bio:
                        tls = BioTls(conn, ctx, server=True)
                        tls.recv_into(view)
                    else:
                        with ctx.wrap_socket(conn, server_side=True) as tconn:
                            got = 0
                            while got < nbytes:
                                n = tconn.recv_into(view[got:])
                                if n == 0:
                                    break
                                got += n
                            tconn.sendall(b"k" if bool(buf[-1] == 1) else b"x")
                        continue
                except (ssl.SSLError, OSError):
                    continue
                ok = bool(buf[0] == 1) and bool(buf[-1] == 1)
                tls.sendall(memoryview(b"k" if ok else b"x"))


class RawTlsPath(RawPath):
    """``RawPath`` over TLS: each measurement on a new connection, whose TLS handshake
    is done before the clock starts (a cluster's connections are open beforehand).

    ``bio=True``: both ends through memory BIOs in 1 MB units (``BioTls``): encryption
    and sending pipelined, 1 MB per send() and recv(), as a careful asyncio program
    could do; the ceiling used for regrow. ``bio=False``: ``ssl.SSLSocket.sendall`` /
    ``recv_into``, where OpenSSL does a send() per 16 KB record and two recv() per
    record (header, body): shown for reference."""

    def __init__(self, link: Any, files: TlsFiles, bio: bool = True) -> None:
        import numpy as np

        self.link = link
        self.bio = bio
        self.ctx = _context(files, server=False)
        self.cipher = ""
        call = (link.ns_ip, NBYTES, files.ca, files.cert, files.key, bio)
        code = f"from benchmarks.tls import _raw_tls_receiver; _raw_tls_receiver(*{call!r})"
        self.proc = subprocess.Popen(
            [*link.in_ns(), sys.executable, "-c", code],
            env=transfer_hosts._env(),
            cwd=transfer_hosts.ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert self.proc.stdout is not None
            self.port = int(self.proc.stdout.readline() or 0)
            check(self.port > 0, f"the TLS receiver did not start (exit {self.proc.poll()})")
        except BaseException:
            self.close()
            raise
        self.payload = memoryview(np.ones(NBYTES, dtype=np.uint8)).cast("B")

    def measure(self) -> float:
        link = self.link
        ack = bytearray(1)
        with socket.create_connection((link.ns_ip, self.port), timeout=TIMEOUT) as raw:
            if self.bio:
                tls = BioTls(raw, self.ctx, server=False)
                self.cipher = tls.cipher()
                sent_before = link.host_tx_bytes()
                start = time.perf_counter()
                tls.sendall(self.payload)
                tls.recv_into(memoryview(ack))
                elapsed = time.perf_counter() - start
            else:
                with self.ctx.wrap_socket(raw, server_hostname=None) as sock:
                    cipher = sock.cipher()
                    self.cipher = f"{cipher[1]} {cipher[0]}" if cipher else "?"
                    sent_before = link.host_tx_bytes()
                    start = time.perf_counter()
                    sock.sendall(self.payload)
                    ack[:] = sock.recv(1)
                    elapsed = time.perf_counter() - start
        check(ack == b"k", f"raw TLS socket: the receiver answered {bytes(ack)!r}, not b'k'")
        crossed = link.host_tx_bytes() - sent_before
        check(crossed >= NBYTES, f"raw TLS socket: only {crossed} bytes crossed the veth pair")
        return NBYTES / MB / elapsed


CLUSTERS = {"regrow": transfer_hosts.regrow_cluster, "dask": transfer_hosts.dask_cluster}


def transfer_part(systems: Sequence[str], reps: int, results: Results) -> None:
    rate = PairRow(ROW_RATE, "MB/s")
    share = PairRow(ROW_SHARE, "% of raw TCP", target=TARGET)
    rows = [rate, share]
    results.rows += rows
    keys = [(name, tls) for name in systems for tls in MODES]
    reason = transfer_hosts.skip_reason()
    if reason is not None:
        print(f"  transfer across hosts skipped: {reason}", flush=True)
        mark(rows, keys, f"not run: {reason}")
        return
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regrow-bench-tls-")))
        try:
            files = TlsFiles.write(tmp)
            link = stack.enter_context(veth_link("regrow-tls", "rgt"))
            tcp_best = transfer_hosts.raw_socket(link)
            with contextlib.closing(RawTlsPath(link, files, bio=False)) as plain_ssl:
                ssl_best = [plain_ssl.measure() for _ in range(LIMIT_REPS)]
            print(f"  limit   raw ssl.SSLSocket ({plain_ssl.cipher}): best {max(ssl_best):,.0f} "
                  f"MB/s ({', '.join(f'{v:,.0f}' for v in ssl_best)})", flush=True)  # fmt: skip
            raw_tls = stack.enter_context(contextlib.closing(RawTlsPath(link, files)))
            tls_best = [raw_tls.measure() for _ in range(LIMIT_REPS)]
            print(f"  limit   raw TLS, memory BIOs, 1 MB units ({raw_tls.cipher}): best "
                  f"{max(tls_best):,.0f} MB/s ({', '.join(f'{v:,.0f}' for v in tls_best)})",
                  flush=True)  # fmt: skip
            raw = stack.enter_context(contextlib.closing(RawPath(link)))
        except Exception as exc:
            mark(rows, keys, f"ERROR (link): {type(exc).__name__}: {exc}")
            print(f"  link failed: {type(exc).__name__}: {exc}", flush=True)
            return
        paired: list[float] = []
        tls_paired: list[float] = []
        tls_share: list[float] = []
        results.limits += [
            (f"raw TCP socket pair over the veth pair, 100 MB in one sendall() "
             f"(best of {LIMIT_REPS} at the start)", "MB/s", tcp_best.samples, "best"),
            ("the same, around every transfer (mean of before and after; median)", "MB/s",
             paired, "median"),
            (f"raw TLS over the same path, memory BIOs, encrypt/send in 1 MB units "
             f"({raw_tls.cipher}; best of {LIMIT_REPS} at the start)", "MB/s", tls_best, "best"),
            ("the same, once per repetition (median)", "MB/s", tls_paired, "median"),
            ("the same as % of the raw TCP socket around it (median)", "%", tls_share, "median"),
            (f"raw TLS with ssl.SSLSocket sendall()/recv_into() (a send() per 16 KB record; "
             f"best of {LIMIT_REPS})", "MB/s", ssl_best, "best"),
        ]  # fmt: skip
        live: dict[tuple[str, bool], System] = {}
        for key in keys:
            name, tls = key
            sub = tmp / f"{name}-{mode_name(tls)}"
            sub.mkdir()
            try:
                cluster = CLUSTERS[name](link, sub, tls=files if tls else None)
                live[key] = stack.enter_context(cluster)
            except Exception as exc:
                mark(rows, [key], f"ERROR (cluster): {type(exc).__name__}: {exc}")
                print(f"  {name:<6} {mode_name(tls):<9}  cluster failed: {exc}", flush=True)
        for rep in range(max(reps, MIN_REPS_TRANSFER)):
            try:  # the bare TLS socket, bracketed by the TCP one
                before = raw.measure()
                value = raw_tls.measure()
                after = raw.measure()
                tls_paired.append(value)
                tls_share.append(100 * value / around(before, after))
            except Exception as exc:
                results.notes.append(f"raw TLS rep {rep + 1}: {type(exc).__name__}: {exc}")
            order = list(live) if rep % 2 == 0 else list(reversed(live))
            got: dict[str, dict[bool, tuple[float, float]]] = {}
            for key in order:
                name, tls = key
                if key in rate.errors:
                    continue
                try:
                    with time_limit(REP_TIMEOUT, f"{name} {mode_name(tls)} / across hosts"):
                        value, raw_mbps = transfer_hosts.bracketed(live[key], link, raw)
                except Exception as exc:
                    kind = "HANG" if isinstance(exc, WorkloadTimeout) else "ERROR"
                    mark(rows, [key], f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                paired.append(raw_mbps)
                got.setdefault(name, {})[tls] = (value, raw_mbps)
                print(f"    {name:<6} {mode_name(tls):<9}  rep {rep + 1}: {value:,.0f} MB/s "
                      f"({100 * value / raw_mbps:.0f}% of the raw TCP socket's {raw_mbps:,.0f} "
                      f"around it)", flush=True)  # fmt: skip
            for name, pair in got.items():
                rate.add(name, {tls: v for tls, (v, _) in pair.items()})
                share.add(name, {tls: 100 * v / a for tls, (v, a) in pair.items()})
        for row in rows:
            row.progress()


# -------------------------------------------------------------------- output
def format_results(results: Results, systems: Sequence[str], reps: int) -> str:
    header = ["workload", "unit"]
    for name in systems:
        header += [f"{name} plaintext", f"{name} TLS", f"{name} TLS/plaintext"]
    both = "regrow" in systems and "dask" in systems
    if both:
        header.append("regrow TLS vs dask TLS")
    header += ["target", "met"]
    body = []
    for row in results.rows:
        line = [row.name, row.unit]
        for name in systems:
            ratio = row.ratio(name)
            line += [row.cell(name, False), row.cell(name, True),
                     "-" if ratio is None else f"{ratio:.2f}"]  # fmt: skip
        if both:
            r, d = row.median("regrow", True), row.median("dask", True)
            line.append(f"{r / d:.2f}x" if r and d else "-")
        line += [f"TLS/plaintext >= {row.target:.2f}" if row.target else "-", row.met()]
        body.append(line)
    right = tuple(range(2, len(header) - 2))
    lines = [
        f"Medians of at least {max(reps, MIN_REPS)} (throughput) and "
        f"{max(reps, MIN_REPS_TRANSFER)} (across hosts) repetitions, TLS and plaintext "
        f"interleaved. {common.machine_summary()}",
        "",
        *common._markdown(header, body, right=right),
        "",
        "All rows are rates (higher is better). TLS/plaintext = median of the per-repetition "
        "ratios TLS / plaintext (1 = TLS is free). regrow TLS vs dask TLS = regrow's TLS "
        "median / dask's. target/met: regrow's TLS/plaintext ratio.",
    ]
    if results.limits:
        lines += ["", "Limits of the path (no cluster):", ""]
        limit_rows = []
        for name, unit, samples, how in results.limits:
            value = None
            if samples:
                value = max(samples) if how == "best" else statistics.median(samples)
            limit_rows.append([name, unit, fmt(value)])
        lines += common._markdown(["limit", "unit", "value"], limit_rows, right=(2,))
    problems = [
        f"- {name} {mode_name(tls)} / {row.name}: {error}"
        for row in results.rows
        for (name, tls), error in row.errors.items()
    ] + [f"- {note}" for note in results.notes]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TLS vs plaintext, regrow and dask")
    parser.add_argument("--reps", type=int, default=MIN_REPS,
                        help=f"repetitions (at least {MIN_REPS}; {MIN_REPS_TRANSFER} "
                             "across hosts)")  # fmt: skip
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated, from: regrow,dask")  # fmt: skip
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated, from: throughput,transfer")  # fmt: skip
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if unknown := [s for s in args.systems if s not in SYSTEMS]:
        parser.error(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)} (no Ray here)")
    if unknown := [p for p in args.parts if p not in PARTS]:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> Results:
    # SIGTERM unwinds like Ctrl-C, so the namespace, the veth pair and the processes go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args(argv)
    systems, skipped = common.available(args.systems)
    print(f"TLS vs plaintext: {', '.join(systems)}; parts {', '.join(args.parts)}; "
          f"{args.reps} repetitions asked", flush=True)  # fmt: skip
    results = Results()
    start = time.monotonic()
    if "throughput" in args.parts:
        throughput_part(systems, args.reps, results)
    if "transfer" in args.parts:
        transfer_part(systems, args.reps, results)
    print()
    print(format_results(results, systems, args.reps))
    for name in skipped:
        print(f"\n{name} was skipped: {common.REQUIRES[name]} is not importable.")
    print(f"\n(took {(time.monotonic() - start) / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main()
