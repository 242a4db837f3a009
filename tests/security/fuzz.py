"""Fuzzing a real scheduler, and the developer harness that runs it for as long as asked.

    python -m tests.security.fuzz --minutes 60 [--seed N] [--only-batch B]

starts a scheduler and a worker (the ``regrow`` CLI), then runs batches until the time
is up: the frame decoder fuzzed in this process (random streams, valid packets cut
anywhere, corrupted lengths), the handshake (its MACs here; hostile handshakes on the
wire), raw frames after authentication, and random messages after the real handshake.
After every batch: the scheduler is alive, a legitimate client computes correctly, the
scheduler's log has no traceback, and its RSS has not grown past a bound. Prints a
summary; exits 1 on a crash, a hang or unbounded memory. Each batch's randomness comes
from ``(seed, batch)``: ``--seed S --only-batch B`` replays one.

``fuzz_wire`` is also what tests/security/test_fuzz_wire.py runs, for ~300 messages.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import inspect
import random
import re
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from regrow.errors import ProtocolError
from regrow.protocol import handshake
from regrow.protocol.framing import FrameDecoder, encode_packet

from .cluster import Cluster, MiB, computes
from .wire import (
    CLIENT_OPS,
    NANNY_OPS,
    WORKER_OPS,
    Msg,
    RawPeer,
    Values,
    authenticated,
    encode,
    is_registered,
    is_reply,
    packable,
    packet_prefix,
)

Stats = collections.Counter[str]


class Finding(AssertionError):
    """Something the scheduler must never do: what, and how to replay it."""


# ------------------------------------------------------------------ on the wire


def _packets(values: Values, ops: list[str] | None, n: int) -> list[list[tuple[Msg, list[bytes]]]]:
    """``n`` random messages, batched at random into packets."""
    r = values.rng
    packets = []
    made = 0
    while made < n:
        batch = []
        for _ in range(min(n - made, r.choice([1, 1, 1, 2, 5]))):
            m, frames = values.msg(ops)
            if packable(m):
                batch.append((m, frames))
            made += 1
        if batch:
            packets.append(batch)
    return packets


def fuzz_connection(address: str, token: str, values: Values, n: int, stats: Stats) -> int:
    """One connection, authenticated the real way, carrying ``n`` random messages (the
    first registers it, or tries to), unless the scheduler drops it first: the messages
    sent. Everything random is drawn before anything is sent, so a seed replays the same
    messages whatever the answers."""
    r = values.rng
    role = r.random()
    if role < 0.6:
        first = values.msg(["register-client"])[0]
        first["client"] = f"fuzz-{r.randrange(10**9)}"
        ops: list[str] | None = CLIENT_OPS
    elif role < 0.8:
        first, ops = values.msg(["register-worker"])[0], WORKER_OPS
    elif role < 0.85:
        first, ops = values.msg(["register-nanny"])[0], NANNY_OPS
    else:
        first, ops = values.msg()[0], None
    if not packable(first):
        first = {"op": "register-client", "client": "fuzz"}
    values.broken = r.choice([0.0, 0.03, 0.1, 0.25])
    packets = _packets(values, ops if ops is not None and r.random() < 0.7 else None, n - 1)
    values.broken = 0.25
    rid = 2**31 + r.randrange(2**30)
    sent = 1
    with authenticated(address, token, timeout=10) as peer:
        peer.send(first)
        try:
            reply = peer.recv()
        except (EOFError, OSError):
            reply = {}
        if not is_registered(reply):
            stats["refused at registration"] += 1
            return sent
        stats[f"registered as {first['op']}"] += 1
        try:
            for batch in packets:
                peer.send(*batch)
                sent += len(batch)
        except OSError:
            stats["dropped while sending"] += 1
            return sent
        if first["op"] != "register-client":
            return sent
        # A client's messages have all been read once a ping sent after them is answered
        # (or the connection dropped); a scheduler that does neither hangs.
        try:
            peer.send({"op": "ping", "rid": rid})
            peer.sock.settimeout(15)
            peer.recv_until(lambda m: is_reply(m, rid))
            stats["client answered after fuzzing"] += 1
        except (EOFError, ConnectionResetError, BrokenPipeError):
            stats["client dropped"] += 1
        except TimeoutError:
            raise Finding(
                f"a fuzzing client connection got no answer to a ping for 15 s (sent {sent})"
            ) from None
        return sent


def fuzz_preauth(address: str, values: Values, stats: Stats) -> None:
    """A hostile handshake: random messages or bytes instead of the auth."""
    r = values.rng
    kind = r.randrange(4)
    m: Msg | None = None
    if kind == 0:
        m = values.msg(["auth"])[0]
    elif kind == 1:
        m = {"op": "auth", "nonce": values.value(), "mac": values.value()}
    elif kind == 2:
        m = values.msg()[0]
    data = encode(m) if m is not None and packable(m) else r.randbytes(r.randrange(1, 200))
    with RawPeer(address, timeout=10) as peer:
        hello = peer.recv()
        with contextlib.suppress(OSError):
            peer.send_raw(data)
        took = peer.wait_closed(10)
        if took is None:
            raise Finding(
                f"a peer that sent {m!r} after hello {hello!r} was neither refused nor dropped"
            )
        stats["preauth dropped"] += 1


def fuzz_raw_frames(address: str, token: str, values: Values, stats: Stats) -> None:
    """Packets that break the framing after authentication: the peer is dropped."""
    r = values.rng
    with authenticated(address, token, timeout=10) as peer:
        kind = r.randrange(5)
        if kind == 0:
            data = packet_prefix(r.choice([2**30 + 1, 2**34, 2**40, 2**64 - 1]))
        elif kind == 1:
            data = struct.pack("!I", r.choice([0, 2**20 + 1, 2**31, 2**32 - 1]))
        elif kind == 2:  # a header that is not msgpack, or not a list of pairs
            body = r.choice([b"\xc1", b"\x91\x01", b"\x92\x80\x01", r.randbytes(30)])
            data = packet_prefix(len(body)) + body
        elif kind == 3:  # frames the header does not claim
            good = encode({"op": "register-client", "client": "x"})
            n = struct.unpack_from("!I", good)[0]
            data = struct.pack("!I", n + 1) + good[4:12] + struct.pack("!Q", 3) + good[12:] + b"abc"
        else:
            data = r.randbytes(r.randrange(1, 3000))
        with contextlib.suppress(OSError):
            peer.send_raw(data)
        took = peer.wait_closed(10)
        if took is None:
            raise Finding(f"raw frames of kind {kind}: peer kept after {data[:40]!r}")
        stats["raw frames: dropped"] += 1


def fuzz_wire(address: str, token: str, rng: random.Random, n_messages: int) -> Stats:
    """About ``n_messages`` random messages on authenticated connections of 1-20 messages
    each, with hostile handshakes and broken frames among them."""
    values = Values(rng)
    stats: Stats = collections.Counter()
    sent = 0
    while sent < n_messages:
        kind = rng.random()
        if kind < 0.1:
            fuzz_preauth(address, values, stats)
            sent += 1
        elif kind < 0.15:
            fuzz_raw_frames(address, token, values, stats)
            sent += 1
        else:
            n = rng.randint(1, 20)
            stats["messages sent"] += fuzz_connection(address, token, values, n, stats)
            sent += n
    stats["messages"] = sent
    return stats


# ------------------------------------------------------------------ in this process


def _decoder(max_frames: int, max_frame_bytes: int) -> FrameDecoder:
    if "max_header_bytes" in inspect.signature(FrameDecoder).parameters:
        return FrameDecoder(
            max_frames=max_frames, max_frame_bytes=max_frame_bytes, max_header_bytes=max_frame_bytes
        )
    return FrameDecoder(max_frames=max_frames, max_frame_bytes=max_frame_bytes)


def _feed(dec: FrameDecoder, data: bytes, rng: random.Random) -> list[list[bytes]]:
    out = []
    view = memoryview(data)
    while view.nbytes:
        target = dec.get_buffer(-1)
        if not target.nbytes:
            raise Finding(
                "FrameDecoder.get_buffer() offered an empty buffer (asyncio fails such a "
                "connection; feed() would loop forever)"
            )
        n = min(target.nbytes, view.nbytes, rng.choice([1, 7, 100, 4096, 1 << 20]))
        target[:n] = view[:n]
        view = view[n:]
        dec.buffer_updated(n)
        while dec.packets:
            out.append([bytes(f) for f in dec.packets.popleft()])
    return out


SIZES = [0, 1, 100, 4096, 131071, 131072, 300_000]
CORRUPT = [0, 2**31, 2**40, 2**64 - 1]


def fuzz_decoder(rng: random.Random, rounds: int) -> Stats:
    """The frame decoder: random streams, valid packets cut anywhere, corrupted lengths."""
    stats: Stats = collections.Counter()
    limits = [(1, 4096), (3, 1 << 16), (1 << 20, 1 << 30)]
    for _ in range(rounds):
        max_frames, max_bytes = rng.choice(limits)
        packets = [
            [rng.randbytes(rng.choice(SIZES)) for _ in range(rng.randint(1, 3))]
            for _ in range(rng.randint(1, 3))
        ]
        data = b"".join(bytes(b) for p in packets for b in encode_packet(p))
        kind = rng.randrange(3)
        if kind == 0:
            got = _feed(_decoder(1 << 20, 1 << 30), data, rng)
            if got != packets:
                raise Finding("valid packets did not round-trip through the decoder")
            stats["decoder: round trips"] += 1
            continue
        if kind == 1:
            data = rng.randbytes(rng.randrange(1, 5000))
        else:
            b = bytearray(data)
            pos = rng.randrange(0, max(1, min(len(b) - 8, 40)))
            struct.pack_into("!Q", b, pos, rng.choice([*CORRUPT, rng.getrandbits(64)]))
            data = bytes(b)
        try:
            _feed(_decoder(max_frames, max_bytes), data, rng)
            stats["decoder: accepted"] += 1
        except ProtocolError:
            stats["decoder: ProtocolError"] += 1
        except Finding:
            raise
        except Exception as exc:
            raise Finding(f"the frame decoder raised {exc!r}, not ProtocolError") from exc
    return stats


def fuzz_handshake(rng: random.Random, rounds: int) -> Stats:
    stats: Stats = collections.Counter()
    values = Values(rng)
    for _ in range(rounds):
        token = rng.choice([None, "", "t", values.text(), "x" * 1000])
        s, c = rng.randbytes(rng.choice([0, 32, 64])), rng.randbytes(32)
        mac = handshake.client_mac(token, s, c)
        if not handshake.verify(mac, handshake.client_mac(token, s, c)):
            raise Finding("a right MAC was refused")
        if handshake.verify(mac, handshake.server_mac(token, s, c)):
            raise Finding("a server MAC passed for a client's")
        other = values.value()
        try:
            if other != mac and handshake.verify(mac, other):
                raise Finding(f"verify accepted {other!r}")
        except Finding:
            raise
        except Exception as exc:
            raise Finding(f"verify raised {exc!r} for {other!r}") from exc
        stats["handshake: checks"] += 1
    return stats


# ------------------------------------------------------------------ the harness


def check(cluster: Cluster) -> None:
    if not cluster.alive():
        raise Finding(f"the scheduler died (exit code {cluster.scheduler.returncode})")
    problems = cluster.log_problems()
    if problems:
        raise Finding("the scheduler logged a crash:\n" + "\n".join(problems[:20]))
    with cluster.client(timeout=15) as client:
        computes(client, n=20)


class Findings:
    """Distinct findings (by their first line), how often each came, where first."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seen: dict[str, list[object]] = {}

    def add(self, batch: int, what: str, detail: str = "") -> None:
        key = what.strip().splitlines()[0][:300] if what.strip() else "?"
        if key in self.seen:
            self.seen[key][0] = int(str(self.seen[key][0])) + 1
            return
        self.seen[key] = [1, batch, detail or what]
        print(f"\nFINDING in batch {batch} (replay: --seed {self.seed} --only-batch {batch}):")
        print(detail or what, flush=True)


def _crash_key(block: str) -> str:
    """A logged crash, named by its first line (without the time) and its exception."""
    lines = [ln for ln in block.splitlines() if ln.strip()]
    head = lines[0].split(" ", 2)[-1] if lines else ""
    key = f"logged: {head} -> {lines[-1].strip() if len(lines) > 1 else ''}"
    return re.sub(r"\d+", "N", key)  # the same crash, whatever the port or the key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.security.fuzz", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    ap.add_argument("--only-batch", type=int, default=None, help="replay this batch only")
    ap.add_argument("--messages", type=int, default=300, help="wire messages per batch")
    ap.add_argument("--max-rss-growth-mib", type=float, default=100.0)
    ap.add_argument("--stop-on-first", action="store_true", help="stop at the first finding")
    ap.add_argument("--dir", default=None, help="keep the scheduler's log here")
    args = ap.parse_args(argv)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    print(f"fuzzing with --seed {seed} for {args.minutes:g} minutes", flush=True)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="regrow-fuzz-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(tmp, {"handshake_timeout": 2, "client_grace": 1})
    findings = Findings(seed)
    fatal = ""
    totals: Stats = collections.Counter()
    rss: list[int] = []
    logged = 0  # crashes of the log already counted
    end = time.monotonic() + args.minutes * 60
    batch = 0 if args.only_batch is None else args.only_batch
    done = 0
    baseline = 0
    try:
        with cluster.client() as client:
            baseline = cluster.baseline(client)
        print(f"scheduler {cluster.address} pid {cluster.scheduler.pid}, "
              f"RSS {baseline / MiB:.1f} MiB; log {cluster.log_path}", flush=True)  # fmt: skip
        while not fatal:
            rng = random.Random(f"{seed}-{batch}")
            t0 = time.monotonic()
            stats: Stats = collections.Counter()
            phases: dict[str, Callable[[], Stats]] = {
                "decoder": functools.partial(fuzz_decoder, rng, 200),
                "handshake": functools.partial(fuzz_handshake, rng, 200),
                "wire": functools.partial(
                    fuzz_wire, cluster.address, cluster.token, rng, args.messages
                ),
            }
            for name, phase in phases.items():
                try:
                    stats += phase()
                except Exception as exc:
                    text = "".join(traceback.format_exception(exc))
                    findings.add(batch, f"{name}: {type(exc).__name__}: {exc}", text)
            # The scheduler: alive, no crash in its log, a legitimate client served.
            if not cluster.alive():
                fatal = f"the scheduler died (exit code {cluster.scheduler.returncode})"
                break
            blocks = cluster.log_problems()
            for block in blocks[logged:]:
                findings.add(batch, _crash_key(block), block)
            logged = len(blocks)
            try:
                with cluster.client(timeout=15) as client:
                    computes(client, n=20)
            except Exception as exc:
                fatal = f"a legitimate client failed: {type(exc).__name__}: {exc}"
                break
            totals += stats
            rss.append(cluster.rss())
            print(f"batch {batch}: {time.monotonic() - t0:.1f} s, {stats['messages']} messages, "
                  f"RSS {rss[-1] / MiB:.1f} MiB", flush=True)  # fmt: skip
            if rss[-1] > baseline + args.max_rss_growth_mib * MiB:
                over = f"{args.max_rss_growth_mib:g} MiB over its {baseline / MiB:.1f} MiB baseline"
                fatal = f"scheduler RSS {rss[-1] / MiB:.1f} MiB, more than {over}"
                break
            batch += 1
            done += 1
            if args.stop_on_first and findings.seen:
                break
            if args.only_batch is not None or time.monotonic() > end:
                break
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        cluster.close()
    if fatal:
        print(f"\nFATAL in batch {batch} (replay: --seed {seed} --only-batch {batch}): {fatal}")
    print("\nsummary:")
    print(f"  seed {seed}, {done} batches completed")
    for name, count in sorted(totals.items()):
        print(f"  {name}: {count}")
    if rss:
        print(f"  scheduler RSS (MiB): baseline {baseline / MiB:.1f}, first {rss[0] / MiB:.1f}, "
              f"peak {max(rss) / MiB:.1f}, last {rss[-1] / MiB:.1f}")  # fmt: skip
    print(f"  scheduler log: {cluster.log_path}")
    print(f"  distinct findings: {len(findings.seen)}")
    for key, (count, first, _) in findings.seen.items():
        print(f"    [{count}x, first in batch {first}] {key}")
    failed = bool(fatal or findings.seen)
    print("  result:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
