from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import numpy as np
import pytest

from regrow.errors import ProtocolError
from regrow.protocol import shm
from regrow.protocol.messages import GetDataReply, LentFrames, ShmFile
from regrow.protocol.serialize import dumps, loads

SHM_X = shm.SHM_DIR + "/regrow-x"  # checked before it is opened: never opened here

pytestmark = pytest.mark.skipif(not shm.HOST, reason="no writable /dev/shm on this machine")


def test_large_frames_go_through_shared_memory_and_come_back_mapped() -> None:
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB: above the threshold
    small = {"a": 1}
    groups, info = shm.export([dumps(big), dumps(small)])
    assert info is not None and os.path.exists(info.path)
    reply = GetDataReply(keys=["big", "small"], nf=[len(g) for g in groups], shm=info)
    gone: list[str] = []
    values = shm.values_of_reply(reply, [f for g in groups for f in g], gone)
    assert not gone
    assert not os.path.exists(info.path)  # unlinked once mapped
    out = {key: loads(frames) for key, frames in values}
    np.testing.assert_array_equal(out["big"], big)
    assert out["big"].flags.writeable
    assert out["small"] == small


def test_small_values_stay_inline() -> None:
    groups, info = shm.export([dumps(list(range(10)))])
    assert info is None
    assert loads(groups[0]) == list(range(10))


def test_discard_removes_an_unadopted_file() -> None:
    _, info = shm.export([dumps(np.zeros(1 << 18))])
    assert info is not None
    shm.discard(info)
    assert not os.path.exists(info.path)


def test_adopt_refuses_paths_outside_its_directory() -> None:
    with pytest.raises(ValueError, match="refusing"):
        shm.adopt([[b""]], ShmFile(path="/etc/passwd", size=1, layout=[(0, 0, 0, 1)]))


@pytest.mark.parametrize(
    "reply",
    [
        GetDataReply(keys=["a"], nf=[2]),  # frames the packet lacks
        GetDataReply(keys=["a", "b"], nf=[1]),
        GetDataReply(keys=["a"], nf=[1], lent=LentFrames(pid=1, id=1, frames=[(0, 3, 0, 8)])),
        GetDataReply(keys=["a"], nf=[1], lent=LentFrames(pid=1, id=1, frames=[(2, 0, 0, 8)])),
        GetDataReply(keys=["a"], nf=[1], shm=ShmFile(path=SHM_X, size=8, layout=[(0, 4, 0, 8)])),
        GetDataReply(keys=["a"], nf=[1], shm=ShmFile(path=SHM_X, size=8, layout=[(0, 0, 4, 8)])),
    ],
)
def test_inconsistent_reply_is_rejected(reply: GetDataReply) -> None:
    with pytest.raises(ProtocolError, match="get-data reply"):
        shm.values_of_reply(reply, [b"x"], [])


# --------------------------------------------------------------------------- sealing
needs_memfd = pytest.mark.skipif(not shm.MEMFD, reason="no memfd_create or /proc here")


def _sealed_reply(record: shm.Sealed) -> tuple[GetDataReply, list[bytes]]:
    reply = GetDataReply(keys=["k"], nf=[len(record.frames)], sealed={0: record.describe()})
    return reply, [bytes(f) for f in record.frames]


@needs_memfd
def test_sealed_value_is_shared_not_copied_and_writes_stay_private() -> None:
    big = np.arange(1_000_000, dtype=np.float64)
    made = shm.seal(dumps(big))
    assert made is not None
    record, mine = made
    try:
        owner = loads(mine)
        np.testing.assert_array_equal(owner, big)
        assert record.frames[1] == b""  # the large buffer is not kept twice
        # Another process maps it through /proc, and its writes do not reach us.
        code = (
            "import sys, msgspec\n"
            "from regrow.protocol import shm\n"
            "from regrow.protocol.messages import GetDataReply\n"
            "from regrow.protocol.serialize import loads\n"
            "reply = msgspec.json.decode(sys.argv[1], type=GetDataReply)\n"
            "frames = [bytes.fromhex(h) for h in sys.argv[2:]]\n"
            "[(key, parts)] = shm.values_of_reply(reply, frames, [])\n"
            "a = loads(parts); a[:] = -1; print(a.nbytes)\n"
        )
        reply, frames = _sealed_reply(record)
        arg = msgspec.json.encode(reply).decode()
        out = subprocess.run(
            [sys.executable, "-c", code, arg, *(f.hex() for f in frames)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert out.stdout.strip() == str(big.nbytes)
        np.testing.assert_array_equal(owner, big)
        owner[0] = 99  # and ours do not reach the file
        again = loads(shm.attach(record.describe(), list(record.frames)))
        assert again[0] == 0.0
    finally:
        record.close()


@needs_memfd
def test_a_closed_seal_is_reported_gone_not_misread() -> None:
    made = shm.seal(dumps(np.zeros(1 << 18)))
    assert made is not None
    record, _ = made
    reply, frames = _sealed_reply(record)
    record.close()
    # Another file may now sit at that descriptor number: it must not be taken for it.
    decoy = os.open(os.devnull, os.O_RDONLY)
    try:
        gone: list[str] = []
        assert shm.values_of_reply(reply, frames, gone) == []
        assert gone == ["k"]
    finally:
        os.close(decoy)


def test_small_or_in_band_values_are_not_sealed() -> None:
    assert shm.seal(dumps(list(range(10)))) is None
    assert shm.seal([b"x" * (2 << 20)]) is None  # frame 0 is the pickle stream itself
