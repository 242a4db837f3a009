"""Where ready tasks go: data locality, load, restrictions, and the scheduler-side queue."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.placement import decide_worker

from .core_sim import Harness, computes, of_type, spec

MB = 1_000_000


def test_task_goes_where_most_of_its_input_bytes_are() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit(
        "cl",
        [spec("big", workers=("w1",)), spec("small", workers=("w2",)), spec("c", "big", "small")],
    )
    h.finish("big", nbytes=50 * MB)
    out = h.finish("small", nbytes=1_000)
    [compute] = of_type(out, cmd.Compute)
    assert compute.key == "c"
    assert compute.worker == "w1"
    assert compute.who_has == {"big": ["w1"], "small": ["w2"]}
    assert compute.nbytes == {"big": 50 * MB, "small": 1_000}


def test_many_small_inputs_outweigh_one_larger() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=4)
    h.add_worker("w2", nthreads=4)
    parts = [spec(f"p{i}", workers=("w2",)) for i in range(3)]
    h.submit("cl", [spec("one", workers=("w1",)), *parts, spec("c", "one", "p0", "p1", "p2")])
    h.finish("one", nbytes=10 * MB)
    for i in range(3):
        out = h.finish(f"p{i}", nbytes=4 * MB)
    assert computes(out) == {"c": "w2"}


def test_tie_broken_by_load() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.add_worker("w2", nthreads=2)
    h.submit(
        "cl",
        [spec("busy1", workers=("w1",)), spec("busy2", workers=("w1",))],
        wanted=["busy1", "busy2"],
    )
    out = h.submit("cl", [spec("x")])
    assert computes(out) == {"x": "w2"}
    out = h.submit("cl", [spec("y")])
    assert computes(out) == {"y": "w2"}  # w2 at 1/2 beats w1 at 2/2
    out = h.submit("cl", [spec("z")])
    assert computes(out) == {"z": "w1"}  # 2/2 each: a true tie goes to the first worker


def test_tie_on_input_bytes_broken_by_load() -> None:
    h = Harness()
    h.add_worker("a")
    h.add_worker("b")
    h.submit("cl", [spec("d", workers=("a",))])
    h.finish("d", nbytes=10 * MB)
    h.handle(ev.ReplicasAdded(worker="b", keys=("d",)))
    h.submit("cl", [spec("load", workers=("a",))])
    out = h.submit("cl", [spec("d"), spec("e", "d")], wanted=["e"])
    assert computes(out) == {"e": "b"}


def test_load_is_relative_to_threads() -> None:
    h = Harness()
    h.add_worker("small", nthreads=1)
    h.add_worker("large", nthreads=8)
    keys = ["s0", "l0", "l1", "l2"]
    h.submit(
        "cl",
        [spec("s0", workers=("small",))] + [spec(k, workers=("large",)) for k in keys[1:]],
        wanted=keys,
    )
    out = h.submit("cl", [spec("x")])
    assert computes(out) == {"x": "large"}  # 3/8 busy beats 1/1 busy


def test_restrictions_by_address_and_by_name() -> None:
    h = Harness()
    h.add_worker("tcp://1", name="alice")
    h.add_worker("tcp://2", name="bob")
    h.submit("cl", [spec("d", workers=("tcp://1",))])
    h.finish("d", nbytes=100 * MB)
    out = h.submit("cl", [spec("d"), spec("x", "d", workers=("bob",))], wanted=["x"])
    assert computes(out) == {"x": "tcp://2"}
    out = h.submit("cl", [spec("y", workers=("tcp://2",))])
    assert computes(out) == {"y": "tcp://2"}


def test_restricted_task_waits_for_its_worker() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("cl", [spec("x", workers=("w9",))])
    assert not of_type(out, cmd.Compute)
    assert h.task_state("x") == "queued"
    h.tick()
    assert h.task_state("x") == "queued"
    out = h.add_worker("w9")
    assert computes(out) == {"x": "w9"}


def test_saturated_workers_queue_tasks_and_take_them_as_slots_free() -> None:
    h = Harness(worker_saturation=1.5)  # ceil(2 * 1.5) = 3 slots
    h.add_worker("w1", nthreads=2)
    keys = [f"k{i}" for i in range(10)]
    out = h.submit("cl", [spec(k) for k in keys], wanted=keys)
    assert list(computes(out)) == ["k0", "k1", "k2"]
    assert h.state.info()["queued"] == 7
    assert [h.task_state(k) for k in keys[3:]] == ["queued"] * 7
    out = h.finish("k1")
    assert computes(out) == {"k3": "w1"}
    out = h.add_worker("w2", nthreads=1)  # ceil(1 * 1.5) = 2 slots
    assert computes(out) == {"k4": "w2", "k5": "w2"}
    assert h.state.info()["queued"] == 4
    h.run_to_completion()
    assert all(h.task_state(k) == "memory" for k in keys)
    assert h.state.info()["queued"] == 0


def test_queue_respects_priority_then_submission_order() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    tasks = [spec("first"), spec("low", priority=-5), spec("mid"), spec("high", priority=10)]
    h.submit("cl", tasks, wanted=[t.key for t in tasks])
    order = ["first"]
    for _ in range(3):
        out = h.finish(order[-1])
        [compute] = of_type(out, cmd.Compute)
        order.append(compute.key)
    assert order == ["first", "high", "mid", "low"]
    assert compute.priority[0] == 5  # -priority


def test_saturation_has_at_least_one_slot() -> None:
    h = Harness(worker_saturation=0.1)
    h.add_worker("w1")
    out = h.submit("cl", [spec("a"), spec("b")], wanted=["a", "b"])
    assert computes(out) == {"a": "w1"}
    assert h.task_state("b") == "queued"


def test_queued_restricted_task_does_not_block_others() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.add_worker("w2")
    tasks = [spec("r1", workers=("w1",)), spec("r2", workers=("w1",)), spec("free")]
    out = h.submit("cl", tasks, wanted=["r1", "r2", "free"])
    assert computes(out) == {"r1": "w1", "free": "w2"}
    out = h.finish("free")
    assert not of_type(out, cmd.Compute)  # r2 may only go to w1
    out = h.finish("r1")
    assert computes(out) == {"r2": "w1"}


def test_removed_queued_task_does_not_take_a_slot() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b"), spec("c")], wanted=["a", "b", "c"])
    h.release("cl", "b")
    out = h.finish("a")
    assert computes(out) == {"c": "w1"}
    # the same key queued again after being dropped from the queue
    h.submit("cl", [spec("b")])
    assert h.task_state("b") == "queued"
    out = h.finish("c")
    assert computes(out) == {"b": "w1"}
    out = h.finish("b")
    assert not of_type(out, cmd.Compute)
    assert h.state.info()["queued"] == 0


def test_decide_worker_directly() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("d", workers=("w2",))])
    h.finish("d", nbytes=10 * MB)
    h.submit("cl", [spec("d"), spec("x", "d", workers=("w1", "w2"))], wanted=["x"])
    ts = h.state.tasks["x"]
    w1, w2 = h.state.workers["w1"], h.state.workers["w2"]
    st = h.state
    assert decide_worker(ts, [w1, w2], st.bandwidth, st.avg_duration) is w2
    assert decide_worker(ts, [w1], st.bandwidth, st.avg_duration) is w1
    assert decide_worker(ts, [], st.bandwidth, st.avg_duration) is None
    ts.restrictions = frozenset({"w1"})
    assert decide_worker(ts, [w2], st.bandwidth, st.avg_duration) is None


def test_average_duration_learned_from_finished_tasks() -> None:
    h = Harness(default_task_duration=0.001)
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    h.finish("x", duration=1.0)
    assert 0.09 < h.state.avg_duration < 0.11


def test_a_task_without_inputs_weighs_only_load_among_the_least_recently_used() -> None:
    h = Harness()
    loads = {"w1": 3, "w2": 1, "w3": 2, "w4": 0, "w6": 1}
    for name in ("w1", "w2", "w3", "w4", "w5", "w6"):
        h.add_worker(name, nthreads=4)
    busy = [spec(f"{w}-{i}", workers=(w,)) for w, n in loads.items() for i in range(n)]
    h.submit("cl", [*busy, spec("x", workers=("w5",))], wanted=[*(s.key for s in busy), "x"])
    ts = h.state.tasks["x"]
    ts.restrictions = None  # asked again where it would go, now that it may go anywhere
    w = h.state.workers
    st = h.state

    def pick(*names: str, avg: float = st.avg_duration) -> str | None:
        ws = decide_worker(ts, {w[n]: None for n in names}, st.bandwidth, avg)
        return None if ws is None else ws.address

    for name, n in loads.items():
        assert len(w[name].processing) - len(w[name].slotless) == n
    assert pick("w1", "w2", "w3", "w4") == "w4"  # an idle one, fourth in line
    assert pick("w1", "w2", "w3", "w6", "w4") == "w2"  # w4 is fifth: not weighed; tie: first
    assert pick("w3", "w1") == "w3"
    assert pick("w1", "w2", "w3", "w4", avg=0.0) == "w1"  # nothing known: the first
    assert pick() is None
