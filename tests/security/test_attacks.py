"""Hostile peers against a real scheduler process (``regrow scheduler``, one worker).

After each attack: the scheduler is alive, a legitimate client (the right token) still
computes correct results, its log shows no crash, and its RSS comes back within 10% of
what it was after start-up and a warm-up computation (``Cluster.baseline``).

Some limits are still being written (connection caps, the scheduler's frame limit, the
send-buffer limit): the tests say what is intended, and fail until they land.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import selectors
import socket
import struct
import time
from collections.abc import Callable

import pytest

from regrow import AuthenticationError, Client
from regrow.protocol.comm import parse_address
from regrow.testing import wait_until

from .cluster import Cluster, MiB, Sampler, computes, elapsed
from .wire import (
    RawPeer,
    auth_message,
    authenticated,
    encode,
    is_registered,
    is_reply,
    packet_prefix,
    register_client,
    submit,
    task_entry,
)

GiB = 1 << 30

Start = Callable[..., Cluster]


def fd_budget() -> int:
    """Sockets we may hold open at once: the scheduler (same limit, inherited) holds one
    per connection too; keep a margin for everything else either process has open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    return max(1, (soft - in_use - 256) // 2)


def wait_all_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, float]:
    """For each socket the peer closed within ``timeout``: seconds it took (from now)."""
    start = time.monotonic()
    done: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while len(done) < len(socks):
            left = start + timeout - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if not data:
                    done[s] = elapsed(start)
                    sel.unregister(s)
    return done


def finish(c: Cluster, good: Client, baseline: int, timeout: float = 10) -> None:
    """The checks after every attack."""
    assert c.alive(), "the scheduler died"
    computes(good)
    with c.client() as fresh:  # and a new legitimate client gets in
        computes(fresh)
    c.wait_rss_back(baseline, timeout=timeout)
    assert not c.log_problems(), "\n".join(c.log_problems())


# ---------------------------------------------------------------- 1. tokens


def test_wrong_token_and_no_token(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGROW_TOKEN", raising=False)
    c = start()
    with c.client() as good:
        base = c.baseline(good)
        for i in range(200):
            with RawPeer(c.address) as p:
                reply = p.handshake(["wrong", None, "", c.token + "x"][i % 4])
                assert reply == {"op": "denied", "reason": "wrong token"}
                assert p.wait_closed(5) is not None, "a refused peer was left connected"
        # No handshake at all: straight to registering, or an auth without a mac.
        for msg in (register_client("no-auth"), {"op": "auth", "nonce": b"n" * 32}):
            with RawPeer(c.address) as p:
                assert p.recv()["op"] == "hello"
                p.send(msg)
                assert p.wait_closed(5) is not None
        for token in ("wrong", None, ""):
            t0 = time.monotonic()
            with pytest.raises(AuthenticationError, match="refused"):
                Client(c.address, token=token, set_as_default=False, timeout=10)
            assert elapsed(t0) < 5, f"token {token!r}: refused only after {elapsed(t0):.1f} s"
        finish(c, good, base)


# ---------------------------------------------------------------- 2. garbage


def garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 5000))
    if kind == 1:  # a well-formed prefix, a body that is not a message
        body = rng.randbytes(rng.randrange(1, 4096))
        return packet_prefix(len(body)) + body
    if kind == 2:
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * rng.randrange(1, 50)
    return b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(500)  # a TLS hello


def test_garbage_connections(start: Start) -> None:
    c = start()
    rng = random.Random(2024)
    batch = min(200, fd_budget())
    with c.client() as good:
        base = c.baseline(good)
        fds = c.proc.num_fds()
        sampler = Sampler(c)
        t_attack = time.monotonic()
        total = 0
        while total < 2000:
            socks: list[socket.socket] = []
            try:
                for _ in range(min(batch, 2000 - total)):
                    socks.append(socket.create_connection(parse_address(c.address)))
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(garbage(rng))
                    if rng.random() < 0.5:  # close with a reset rather than a FIN
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
            finally:
                for s in socks:
                    s.close()
            total += len(socks)
            sampler.sample()
            # The scheduler lets go of every one of them (its descriptors say so).
            c_fds = [0]

            def released(c_fds: list[int] = c_fds) -> bool:
                c_fds[0] = c.proc.num_fds()
                return c_fds[0] <= fds + 5

            try:
                wait_until(released, timeout=15, what="scheduler closed the garbage connections")
            except TimeoutError:
                pytest.fail(
                    f"after {total} garbage connections the scheduler holds "
                    f"{c_fds[0]} descriptors (was {fds})"
                )
        print(f"{elapsed(t_attack):.1f} s, peak RSS {sampler.peak / MiB:.1f} MiB")
        finish(c, good, base)


# ---------------------------------------------------------------- 3. silent peers


def test_silent_connections_dropped_after_handshake_timeout(start: Start) -> None:
    c = start(handshake_timeout=1)
    n = min(200, fd_budget())
    with c.client() as good:
        base = c.baseline(good)
        socks: list[socket.socket] = []
        try:
            for _ in range(n):
                socks.append(socket.create_connection(parse_address(c.address)))
            closed = wait_all_closed(socks, timeout=6)
        finally:
            for s in socks:
                s.close()
        assert len(closed) == n, f"{n - len(closed)} of {n} silent connections still open after 6 s"
        times = sorted(closed.values())
        assert times[-1] < 4, f"the last was dropped after {times[-1]:.1f} s (timeout 1 s)"
        finish(c, good, base)


# ---------------------------------------------------------------- 4. slow loris


def test_slow_loris_dropped_though_it_keeps_sending(start: Start) -> None:
    c = start(handshake_timeout=1)
    with c.client() as good:
        base = c.baseline(good)
        peers: list[RawPeer] = []
        try:
            for _ in range(20):
                peers.append(RawPeer(c.address))
            opened = time.monotonic()
            # Each sends a real auth message (the right token!), one byte every 0.2 s: it
            # would take ~20 s to finish.
            pending = {}
            for p in peers:
                hello = p.recv()
                pending[p] = encode(auth_message(c.token, hello["nonce"], os.urandom(32)))
                p.sock.setblocking(False)
            sent = dict.fromkeys(peers, 0)
            dropped: dict[RawPeer, float] = {}
            while len(dropped) < len(peers) and elapsed(opened) < 6:
                for p in peers:
                    if p in dropped:
                        continue
                    try:
                        try:
                            if p.sock.recv(1 << 16) == b"":
                                raise ConnectionResetError
                        except BlockingIOError:
                            pass
                        p.sock.send(pending[p][sent[p] : sent[p] + 1])
                        sent[p] += 1
                    except (ConnectionResetError, BrokenPipeError):
                        dropped[p] = elapsed(opened)
                time.sleep(0.2)  # the attack's own pace
        finally:
            for p in peers:
                p.close()
        assert len(dropped) == len(peers), (
            f"{len(peers) - len(dropped)} slow peers still connected after 6 s "
            f"(handshake_timeout 1 s; they sent {max(sent.values())} bytes each)"
        )
        assert max(dropped.values()) < 3.5, f"dropped only after {max(dropped.values()):.1f} s"
        assert min(sent.values()) >= 3, "they were dropped before they had sent anything"
        finish(c, good, base)


# ---------------------------------------------------------------- 5. oversize frames


BEFORE_AUTH = {
    "a 2**40-byte frame": packet_prefix(1 << 40),
    "2**31 frames": struct.pack("!I", 1 << 31),
    "2 frames, the second of 1 GiB": packet_prefix(10, GiB),
}


def test_oversize_frame_before_auth(start: Start) -> None:
    c = start()
    with c.client() as good:
        base = c.baseline(good)
        wrong = []
        for name, prefix in BEFORE_AUTH.items():
            for _ in range(10):
                with RawPeer(c.address) as p:
                    assert p.recv()["op"] == "hello"
                    p.send_raw(prefix)
                    took = p.wait_closed(5)
                if took is None or took >= 1:
                    wrong.append(
                        f"{name}: {'kept' if took is None else f'dropped after {took:.1f} s'}"
                    )
                    break
        assert not wrong, wrong
        assert c.rss() <= base * 1.1
        finish(c, good, base)


AFTER_AUTH = {
    "a 16 GiB header": [16 * GiB],
    "a 16 GiB payload frame": [64, 16 * GiB],
    "a 1 TiB payload frame": [64, 1 << 40],
    "a 2 GiB payload frame (past scheduler_max_frame_bytes)": [64, 2 * GiB],
    "a 300 MiB header (past max_header_bytes)": [300 * MiB],
}


def test_oversize_frame_after_auth(start: Start) -> None:
    """After the real handshake (registered as a client, or not yet registered), a packet
    announcing a frame past the scheduler's limits, then 8 MiB of it: dropped at once,
    and none of it kept."""
    c = start()
    chunk = os.urandom(MiB)
    with c.client() as good:
        base = c.baseline(good)
        wrong = []
        for name, lengths in AFTER_AUTH.items():
            for registered in (True, False):
                sampler = Sampler(c)
                with authenticated(c.address, c.token) as p:
                    if registered:
                        p.send(register_client(f"oversize-{len(wrong)}"))
                        assert is_registered(p.recv())
                    p.send_raw(packet_prefix(*lengths))
                    t0 = time.monotonic()
                    with contextlib.suppress(OSError):
                        p.sock.settimeout(2)
                        for _ in range(8):
                            p.sock.sendall(chunk)
                            sampler.sample()
                    took = p.wait_closed(3)
                    sampler.sample()
                    open_for = elapsed(t0)
                case = f"{name}{'' if registered else ' (not registered)'}"
                if took is None:
                    wrong.append(f"{case}: still connected {open_for:.1f} s later")
                elif open_for >= 1.5:
                    wrong.append(f"{case}: dropped only after {open_for:.1f} s")
                if sampler.peak > base * 1.1:
                    wrong.append(f"{case}: scheduler RSS grew to {sampler.peak / MiB:.1f} MiB")
        assert not wrong, f"baseline RSS {base / MiB:.1f} MiB; " + "; ".join(wrong)
        finish(c, good, base)


# ---------------------------------------------------------------- 6. a client that stops reading


def stalled_client(c: Cluster, sender: Callable[[RawPeer], None]) -> tuple[bool, float, Sampler]:
    """A raw client that registers, then only sends (``sender``), never reading: whether
    the scheduler dropped it within 20 s, after how long, and its RSS meanwhile."""
    sampler = Sampler(c)
    p = authenticated(c.address, c.token, rcvbuf=4096)
    try:
        p.send(register_client(f"stalled-{os.getpid()}"))
        assert is_registered(p.recv())
        t0 = time.monotonic()
        p.sock.settimeout(10)
        with contextlib.suppress(OSError):
            sender(p)
        deadline = t0 + 20
        while c.open_connections(p.port) and time.monotonic() < deadline:
            sampler.sample()
            time.sleep(0.05)  # polling the scheduler's sockets, with a deadline
        return not c.open_connections(p.port), elapsed(t0), sampler
    finally:
        p.close()


def test_client_that_stops_reading_results(start: Start) -> None:
    # The scheduler keeps the story of recent transitions (~200 bytes each, 100,000 of
    # them by default): 4,000 tasks would add ~4 MB that stay by design. Kept short here
    # so that the check below sees what the stalled client cost, not the story.
    c = start(max_send_buffer_bytes=4 * MiB, client_grace=1, transition_log_length=1000)
    n, size = 4000, 15_000  # small results: each goes to the client with its news
    with c.client() as good:
        base = c.baseline(good)

        def send(p: RawPeer) -> None:
            for lo in range(0, n, 500):
                tasks = [task_entry(f"stall-{i}", bytes, size) for i in range(lo, lo + 500)]
                p.send(submit(tasks))

        dropped, took, sampler = stalled_client(c, send)
        assert dropped, (
            f"a client that reads nothing was still connected after {took:.0f} s, "
            f"~{n * size / MiB:.0f} MiB of results queued for it; scheduler RSS peaked "
            f"at {sampler.peak / MiB:.0f} MiB (baseline {base / MiB:.0f} MiB)"
        )
        # What it may cost: the results kept for it until it is forgotten (client_grace),
        # the send buffer's limit, and slack; not another copy of everything.
        bound = base + n * size * 1.2 + 4 * MiB + 24 * MiB
        assert sampler.peak <= bound, f"RSS peaked at {sampler.peak / MiB:.0f} MiB"
        finish(c, good, base, timeout=10)


def test_client_that_stops_reading_replies(start: Start) -> None:
    c = start(max_send_buffer_bytes=4 * MiB)
    with c.client() as good:
        base = c.baseline(good)
        keys = [f"{'k' * 190}-{i}" for i in range(2000)]  # ~400 kB asked, ~400 kB answered

        def send(p: RawPeer) -> None:
            for rid in range(1, 101):
                p.send({"op": "who-has", "keys": keys, "rid": rid})

        dropped, took, sampler = stalled_client(c, send)
        assert dropped, (
            f"a client that reads no replies was still connected after {took:.0f} s, "
            f"~40 MB of replies queued; scheduler RSS peaked at {sampler.peak / MiB:.0f} MiB "
            f"(baseline {base / MiB:.0f} MiB)"
        )
        assert sampler.peak <= base * 1.1 + 4 * MiB + 8 * MiB
        finish(c, good, base)


# ---------------------------------------------------------------- 7. connection caps


def flood(c: Cluster, n: int, sources: list[str]) -> tuple[list[RawPeer], list[float]]:
    """``n`` connections spread over ``sources``: those served (a hello came), and for
    the others, how long the scheduler took to close them."""
    kept: list[RawPeer] = []
    refused: list[float] = []
    for i in range(n):
        p = RawPeer(c.address, source=sources[i % len(sources)], timeout=5)
        t0 = time.monotonic()
        try:
            p.recv()
            kept.append(p)
        except (EOFError, ConnectionResetError, TimeoutError):
            refused.append(elapsed(t0))
            p.close()
    return kept, refused


def test_connections_per_host_capped(start: Start) -> None:
    cap = 50
    c = start(max_connections_per_host=cap, handshake_timeout=10)
    with c.client() as good:  # the worker and this client hold one connection each
        base = c.baseline(good)
        kept, refused = flood(c, 80, ["127.0.0.1"])
        try:
            assert len(kept) <= cap - 2, (
                f"{len(kept)} of 80 connections from one host served (cap {cap})"
            )
            assert refused and max(refused) < 1, "the extra connections were not closed at once"
            # Another host is still served meanwhile, and so is the client already in.
            with authenticated(c.address, c.token, source="127.0.0.2") as other:
                other.send(register_client("other-host"), {"op": "ping", "rid": 1})
                assert is_registered(other.recv())
                assert is_reply(other.recv(), 1)
            computes(good)
        finally:
            for p in kept:
                p.close()
        finish(c, good, base)


def test_total_connections_capped(start: Start) -> None:
    cap = 40
    c = start(max_connections=cap, handshake_timeout=10)
    with c.client() as good:
        base = c.baseline(good)
        kept, refused = flood(c, 60, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        try:
            assert len(kept) <= cap - 2, f"{len(kept)} of 60 connections served (cap {cap})"
            assert refused and max(refused) < 1, "the extra connections were not closed at once"
            computes(good)
        finally:
            for p in kept:
                p.close()
        finish(c, good, base)
