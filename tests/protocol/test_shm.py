from __future__ import annotations

import os

import numpy as np
import pytest

from regrow.protocol import shm
from regrow.protocol.serialize import dumps, loads

pytestmark = pytest.mark.skipif(not shm.HOST, reason="no writable /dev/shm on this machine")


def test_large_frames_go_through_shared_memory_and_come_back_mapped() -> None:
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB: above the threshold
    small = {"a": 1}
    groups, info = shm.export([dumps(big), dumps(small)])
    assert info is not None and os.path.exists(info["path"])
    reply = {"keys": ["big", "small"], "nf": [len(g) for g in groups], "shm": info}
    values = shm.values_of_reply(reply, [f for g in groups for f in g])
    assert not os.path.exists(info["path"])  # unlinked once mapped
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
    assert not os.path.exists(info["path"])


def test_adopt_refuses_paths_outside_its_directory() -> None:
    with pytest.raises(ValueError, match="refusing"):
        shm.adopt([[b""]], {"path": "/etc/passwd", "size": 1, "layout": [[0, 0, 0, 1]]})


def test_inconsistent_reply_is_rejected() -> None:
    with pytest.raises(ValueError):
        shm.values_of_reply({"keys": ["a"], "nf": [2]}, [b"x"])
