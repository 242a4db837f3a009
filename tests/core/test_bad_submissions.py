"""Submissions an authenticated client should not send: unknown keys, cycles, released or
failed inputs, huge fan-ins, keys given twice, out-of-range options, requests about keys
nobody knows.

Each ends in a clear outcome for that client alone (its futures err, or the request is
harmless and ignored, as in dask.distributed); the core never raises, no task waits for
a key that cannot come, another client's work is untouched, and every event is followed
by ``validate_state`` (the Harness validates).
"""

from __future__ import annotations

import pickle

import pytest

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import graph
from regrow.core.invariants import validate_state
from regrow.core.stealing import MAX_STEAL_INPUTS
from regrow.errors import InvalidGraphError

from .core_sim import Harness, chain, computes, freed, of_type, reported_keys, reports, spec


def with_bystander() -> Harness:
    """A cluster where client "good" has a task running ("g") and one waiting on it."""
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("good", [spec("g"), spec("g2", "g")], wanted=["g2"])
    assert h.processing_on("g") == "w1"
    return h


def bystander_unharmed(h: Harness, out: list[cmd.Command]) -> None:
    """Nothing in ``out`` concerns client "good"'s tasks, and they still finish."""
    assert not [c for c in out if getattr(c, "client", None) == "good"]
    assert not [c for c in out if getattr(c, "key", None) in ("g", "g2")]
    assert ("w1", "g") not in freed(out)
    h.finish("g")
    out = h.finish("g2")
    assert reported_keys(out, cmd.ReportInMemory, "good") == {"g2"}
    h.release("good", "g2")


def erred(out: list[cmd.Command], client: str) -> dict[str, cmd.ReportErred]:
    return {r.key: r for r in reports(out, cmd.ReportErred, client)}


def raised(report: cmd.ReportErred) -> BaseException:
    """What the client raises for ``report`` (as ``FutureState.exception`` does)."""
    exc = pickle.loads(report.exception)
    assert isinstance(exc, BaseException)
    return exc


# ------------------------------------------------------- unknown dependencies


def test_unknown_dependency_errs_that_task_and_its_dependents_only() -> None:
    h = with_bystander()
    out = h.submit(
        "bad",
        [spec("ok"), spec("a", "ok", "nope"), spec("b", "a"), spec("c", "ok")],
        wanted=["a", "b", "c"],
    )
    errs = erred(out, "bad")
    assert set(errs) == {"a", "b"}
    assert {r.kind for r in errs.values()} == {"FutureLostError"}
    assert {r.blame for r in errs.values()} == {"a"}
    assert "'nope'" in errs["a"].text and "not in its submission" in errs["a"].text
    # The healthy part of the same submission runs.
    assert set(computes(out)) == {"ok"}
    h.finish("ok")
    assert h.task_state("c") == "processing"
    assert [log.level for log in h.logs] == ["warning"]
    assert "client bad" in h.logs[0].message and "'nope'" in h.logs[0].message
    bystander_unharmed(h, out)
    h.finish("c")
    h.release("bad", "a", "b", "c")
    assert h.state.tasks == {}


def test_dependency_later_in_the_same_submission_is_no_unknown_key() -> None:
    # Any order within one message: a dependency may be given after its dependent.
    h = Harness()
    h.add_worker("w1")
    out = h.submit("c", [spec("z", "y"), spec("y", "x"), spec("x")], wanted=["z"])
    assert not reports(out, cmd.ReportErred)
    assert computes(out) == {"x": "w1"}
    assert h.task_state("z") == "waiting"
    h.run_to_completion()
    assert reported_keys(h.history, cmd.ReportInMemory, "c") == {"z"}
    h.release("c", "z")
    assert h.state.tasks == {}


def test_wanted_key_that_nobody_knows_errs_at_once() -> None:
    # Before: ignored, so the client's future for it stayed pending for ever.
    h = with_bystander()
    out = h.submit("bad", [spec("a")], wanted=["a", "ghost", "ghost"])
    errs = reports(out, cmd.ReportErred, "bad")
    assert [(r.key, r.kind) for r in errs] == [("ghost", "FutureLostError")] * 2
    assert "'ghost'" in errs[0].text
    assert set(computes(out)) == {"a"}
    assert "ghost" not in h.state.tasks
    bystander_unharmed(h, out)
    h.finish("a")
    h.release("bad", "a")
    assert h.state.tasks == {}


def test_a_million_unknown_dependencies_err_in_one_pass() -> None:
    h = with_bystander()
    deps = [f"nope-{i}" for i in range(1_000_000)]
    out = h.submit("bad", [spec("big", *deps)], wanted=["big"])
    [r] = reports(out, cmd.ReportErred, "bad")
    assert (r.key, r.kind) == ("big", "FutureLostError")
    assert "'nope-0'" in r.text
    assert not h.state.tasks["big"].dependencies
    bystander_unharmed(h, out)
    h.release("bad", "big")
    assert h.state.tasks == {}


# -------------------------------------------------------------------- cycles


@pytest.mark.parametrize(
    ("tasks", "cycle"),
    [
        ([spec("a", "b"), spec("b", "a")], ("a", "b", "a")),
        ([spec("a", "a")], ("a", "a")),
        ([spec("a", "b"), spec("b", "c"), spec("c", "d"), spec("d", "a")], tuple("abcda")),
        # Duplicate and extra references change nothing.
        ([spec("a", "b", "b", "a"), spec("b", "a", "a")], ("a", "b", "a")),
    ],
    ids=["two", "self", "four", "repeated"],
)
def test_cycle_errs_every_task_on_it_with_invalid_graph_error(
    tasks: list[ev.TaskSpec], cycle: tuple[str, ...]
) -> None:
    h = with_bystander()
    keys = [t.key for t in tasks]
    out = h.submit("bad", tasks, wanted=keys)
    errs = erred(out, "bad")
    assert set(errs) == set(keys)
    assert not of_type(out, cmd.Compute)
    path = " -> ".join(repr(k) for k in cycle)
    for r in errs.values():
        assert r.kind == "InvalidGraphError"
        assert r.blame == "a"
        assert path in r.text
        exc = raised(r)
        assert isinstance(exc, InvalidGraphError) and isinstance(exc, ValueError)
        assert str(exc) == r.text
    # One error object for the cycle; no dependency edge of it entered the graph.
    assert len({id(h.state.tasks[k].error) for k in keys}) == 1
    assert all(not h.state.tasks[k].dependencies for k in keys)
    assert "cycle" in h.logs[-1].message
    bystander_unharmed(h, out)
    h.release("bad", *keys)
    assert h.state.tasks == {}


def test_cycle_errs_its_dependents_but_not_its_inputs() -> None:
    # up <- a <-> b <- down, and an unrelated task: only the cycle and what needs it err.
    h = with_bystander()
    tasks = [spec("down", "b"), spec("a", "b", "up"), spec("b", "a"), spec("up"), spec("x")]
    out = h.submit("bad", tasks, wanted=["down", "x"])
    errs = erred(out, "bad")
    assert set(errs) == {"down"}
    assert errs["down"].kind == "InvalidGraphError"
    assert errs["down"].blame == "a"
    assert isinstance(raised(errs["down"]), InvalidGraphError)
    assert set(computes(out)) == {"x"}
    assert "up" not in h.state.tasks  # nothing needs it: forgotten, never run
    bystander_unharmed(h, out)
    h.finish("x")
    h.release("bad", "down", "x")
    assert h.state.tasks == {}


def test_two_cycles_and_a_task_between_them() -> None:
    # (a <-> b) <- mid <- (c <-> d, c also needs mid)
    h = Harness()
    h.add_worker("w1")
    tasks = [spec("a", "b"), spec("b", "a"), spec("mid", "a"), spec("c", "d", "mid")]
    tasks.append(spec("d", "c"))
    out = h.submit("bad", tasks, wanted=["mid", "c", "d"])
    errs = erred(out, "bad")
    assert set(errs) == {"mid", "c", "d"}
    assert errs["mid"].blame == "a" and "'a' -> 'b' -> 'a'" in errs["mid"].text
    assert errs["c"].blame == errs["d"].blame == "c"
    assert "'c' -> 'd' -> 'c'" in errs["c"].text
    assert "4 on 2 cycle(s)" in h.logs[-1].message
    h.release("bad", "mid", "c", "d")
    assert h.state.tasks == {}


def test_cycle_through_a_task_with_an_unknown_dependency() -> None:
    # a needs b and an unknown key; b needs a. a errs for the unknown key and is not linked
    # to b, so there is no cycle left: b errs through a.
    h = Harness()
    h.add_worker("w1")
    out = h.submit("bad", [spec("a", "b", "nope"), spec("b", "a")], wanted=["a", "b"])
    errs = erred(out, "bad")
    assert {k: (r.kind, r.blame) for k, r in errs.items()} == {
        "a": ("FutureLostError", "a"),
        "b": ("FutureLostError", "a"),
    }
    h.release("bad", "a", "b")
    assert h.state.tasks == {}


def test_no_cycle_can_be_made_with_keys_known_before() -> None:
    # A known key keeps its dependencies: a new spec for it cannot close a loop.
    h = with_bystander()
    h.submit("bad", [spec("x")], wanted=["x"])
    out = h.submit("bad", [spec("y", "x"), spec("x", "y")], wanted=["y"])
    assert not reports(out, cmd.ReportErred)
    assert h.task_state("y") == "waiting"
    assert [d.key for d in h.state.tasks["x"].dependencies] == []
    # An earlier task that failed on an unknown key: naming it later makes no cycle either.
    h.submit("bad", [spec("p", "q")], wanted=["p"])
    out = h.submit("bad", [spec("q", "p")], wanted=["q"])
    assert erred(out, "bad")["q"].blame == "p"
    bystander_unharmed(h, out)
    h.finish("x")
    h.finish("y")
    h.release("bad", "x", "y", "p", "q")
    assert h.state.tasks == {}


def test_cycle_of_100_000_keys_is_found_without_recursion() -> None:
    n = 100_000
    h = Harness(validate=False)
    h.add_worker("w1")
    tasks = [spec(f"t{i}", f"t{(i + 1) % n}") for i in range(n)]
    out = h.submit("bad", tasks, wanted=["t0", f"t{n - 1}"])
    errs = erred(out, "bad")
    assert set(errs) == {"t0", f"t{n - 1}"}
    text = errs["t0"].text
    assert "'t0' -> 't1' -> 't2'" in text and f"({n} keys) -> 't0'" in text
    assert len(text) < 500
    validate_state(h.state)
    assert set(h.state.tasks) == {"t0", f"t{n - 1}"}  # the rest was forgotten
    h.release("bad", "t0", f"t{n - 1}")
    assert h.state.tasks == {}


def test_chain_of_100_000_given_last_first_runs() -> None:
    # Valid, but every dependency comes later in the message: the cycle search runs, and
    # must neither recurse nor find anything.
    n = 100_000
    h = Harness(validate=False)
    h.add_worker("w1")
    out = h.submit("c", list(reversed(chain(n))), wanted=[f"t{n - 1}"])
    assert not reports(out, cmd.ReportErred) and not h.logs
    assert computes(out) == {"t0": "w1"}
    validate_state(h.state)
    h.release("c", f"t{n - 1}")
    assert h.state.tasks == {}


def test_problems_is_exact_on_a_mixed_graph() -> None:
    deps = {
        "a": ["b"],
        "b": ["c", "a"],
        "c": ["known"],
        "d": ["d"],
        "e": ["a", "f"],
        "f": [],
        "g": ["missing", "g"],
        "h": ["g"],
    }
    found = graph.problems(deps, {"known"})
    assert set(found) == {"a", "b", "d", "g"}
    assert found["a"] is found["b"]
    cycle = found["a"]
    assert isinstance(cycle, graph.Cycle) and cycle.path == ("a", "b", "a")
    d = found["d"]
    assert isinstance(d, graph.Cycle) and d.path == ("d", "d")
    g = found["g"]
    assert isinstance(g, graph.UnknownDependency) and (g.key, g.dependency) == ("g", "missing")
    assert graph.problems({"x": [], "y": ["x"], "z": ["y", "x"]}, ()) == {}


def test_long_keys_are_cut_short_in_messages() -> None:
    long = "k" * 100_000
    found = graph.problems({long: [long], "u": ["nope" * 10_000]}, ())
    for problem in found.values():
        assert len(problem.text) < 1_000
        assert len(graph.task_error(problem).text) < 1_000


# ------------------------------------------- released, erred, cancelled inputs


def test_input_released_and_forgotten_errs_the_dependent() -> None:
    h = with_bystander()
    h.submit("bad", [spec("x")], wanted=["x"])
    h.finish("x")
    h.release("bad", "x")
    assert "x" not in h.state.tasks
    out = h.submit("bad", [spec("y", "x")], wanted=["y"])
    [r] = reports(out, cmd.ReportErred, "bad")
    assert (r.key, r.kind, r.blame) == ("y", "FutureLostError", "y")
    bystander_unharmed(h, out)
    h.release("bad", "y")
    assert h.state.tasks == {}


def test_input_released_by_one_client_but_held_by_another_is_used() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")], wanted=["x"])
    h.desire("c2", "x")
    h.finish("x")
    h.release("c2", "x")
    out = h.submit("c2", [spec("y", "x")], wanted=["y"])
    assert computes(out) == {"y": "w1"}
    h.finish("y")
    h.release("c2", "y")
    h.release("c1", "x")
    assert h.state.tasks == {}


def test_input_kept_only_as_lineage_is_recomputed() -> None:
    # x was released (its result freed) but stays as the input of z: y can use it.
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("x"), spec("z", "x")], wanted=["x", "z"])
    h.finish("x")
    h.finish("z")
    h.release("c", "x")
    assert h.task_state("x") == "released"
    out = h.submit("c2", [spec("y", "x")], wanted=["y"])
    assert computes(out) == {"x": "w1"}
    h.finish("x")
    h.finish("y")
    assert h.task_state("y") == "memory"
    h.release("c2", "y")
    h.release("c", "z")
    assert h.state.tasks == {}


def test_erred_input_errs_the_dependent_with_its_own_error() -> None:
    h = with_bystander()
    h.submit("c1", [spec("x")], wanted=["x"])
    h.err("x", exception=b"boom")
    out = h.submit("c2", [spec("y", "x")], wanted=["y"])
    [r] = reports(out, cmd.ReportErred, "c2")
    assert (r.key, r.blame, r.exception, r.kind) == ("y", "x", b"boom", "")
    bystander_unharmed(h, out)
    h.release("c2", "y")
    h.release("c1", "x")
    assert h.state.tasks == {}


def test_cancelled_input_errs_the_dependent() -> None:
    h = with_bystander()
    h.submit("bad", [spec("x")], wanted=["x"])
    h.cancel("bad", "x")
    out = h.submit("bad", [spec("y", "x")], wanted=["y"])
    assert erred(out, "bad")["y"].kind == "FutureLostError"
    bystander_unharmed(h, out)
    h.release("bad", "y")
    assert h.state.tasks == {}


# ------------------------------------------------------------------- fan-in


def test_a_million_references_to_one_input() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("c", [spec("d"), spec("big", *(["d"] * 1_000_000))], wanted=["big"])
    assert computes(out) == {"d": "w1"}
    assert len(h.state.tasks["big"].dependencies) == 1
    out = h.finish("d")
    [compute] = of_type(out, cmd.Compute)
    assert compute.who_has == {"d": ["w1"]}
    out = h.finish("big")
    assert freed(out) == {("w1", "d")}
    h.release("c", "big")
    assert h.state.tasks == {}


@pytest.mark.parametrize("n", [100_000])
def test_fan_in_of_distinct_inputs_is_linear(n: int) -> None:
    """One task needing n inputs held by four workers: placed once, computed, freed.

    (1,000,000 inputs take the same path; ~45 s on a slow machine, mostly the scatter, so
    the default run checks 100,000: a pass that were quadratic would not end.)
    """
    h = Harness(validate=False)
    for w in range(4):
        h.add_worker(f"w{w}", nthreads=2)
    items = tuple(
        # w2 holds the most bytes: the task goes there.
        ev.ScatteredKey(
            key=f"d{i}", nbytes=9 if i % 4 == 2 else 8, type_name="int", workers=(f"w{i % 4}",)
        )
        for i in range(n)
    )
    h.handle(ev.DataScattered(client="c", keys=items))
    out = h.submit("c", [spec("big", *(f"d{i}" for i in range(n)))], wanted=["big"])
    [compute] = of_type(out, cmd.Compute)
    assert compute.worker == "w2" and len(compute.who_has) == n
    validate_state(h.state)
    out = h.finish("big")
    assert reported_keys(out, cmd.ReportInMemory, "c") == {"big"}
    h.release("c", "big", *(f"d{i}" for i in range(n)))
    validate_state(h.state)
    assert h.state.tasks == {}


def test_task_with_a_huge_fan_in_is_not_stolen() -> None:
    # Weighing a steal is a pass over the task's inputs, on every tick while it waits.
    h = Harness()
    h.add_worker("w1")
    n = MAX_STEAL_INPUTS + 1
    items = tuple(
        ev.ScatteredKey(key=f"d{i}", nbytes=0, type_name="int", workers=("w1",)) for i in range(n)
    )
    h.handle(ev.DataScattered(client="c", keys=items))
    h.submit(
        "c",
        [spec("t1"), spec("t2"), spec("fan", *(f"d{i}" for i in range(n)))],
        wanted=["t1", "t2", "fan"],
    )
    assert h.processing("w1") == ["t1", "t2", "fan"]
    h.add_worker("w2")
    out = h.tick()
    assert of_type(out, cmd.Steal) == [cmd.Steal(worker="w1", key="t2")]
    h.run_to_completion()
    h.release("c", "t1", "t2", "fan", *(f"d{i}" for i in range(n)))
    assert h.state.tasks == {}


# ----------------------------------------------------------- keys given twice


def test_key_twice_in_one_submission_keeps_the_first_spec() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit(
        "c",
        [spec("a", run_spec="first"), spec("a", "nope", run_spec="second"), spec("b", "a")],
        wanted=["a", "b"],
    )
    assert not reports(out, cmd.ReportErred)
    [compute] = of_type(out, cmd.Compute)
    assert (compute.key, compute.run_spec) == ("a", "first")
    h.run_to_completion()
    h.release("c", "a", "b")
    assert h.state.tasks == {}


def test_known_key_keeps_its_task_whatever_the_new_spec() -> None:
    # dask.distributed: a key names one task; a new spec for a known key is ignored.
    h = with_bystander()
    out = h.submit(
        "bad",
        [spec("g", "nope", run_spec="evil", pure=False, priority=100), spec("g2", "g2")],
        wanted=["g", "g2"],
    )
    assert not reports(out, cmd.ReportErred) and not of_type(out, cmd.Compute)
    ts = h.state.tasks["g"]
    assert (ts.run_spec, ts.pure, ts.priority[0]) == (("run", "g"), True, 0)
    assert not ts.dependencies
    # The bad client now shares the good one's work, and hears of it.
    h.finish("g")
    out = h.finish("g2")
    assert reported_keys(out, cmd.ReportInMemory, "bad") == {"g2"}
    assert reported_keys(out, cmd.ReportInMemory, "good") == {"g2"}
    h.release("bad", "g", "g2")
    h.release("good", "g2")
    assert h.state.tasks == {}


# ------------------------------------------- requests about keys nobody knows


def test_release_desire_cancel_and_who_has_of_unknown_keys() -> None:
    h = with_bystander()
    # Releasing: ignored, as in dask.distributed, from a known client or not.
    assert h.release("bad", "ghost") == []
    assert h.release("good", "ghost", "g") == []  # "good" never wanted g itself
    assert h.release("never-connected", "g2") == []
    # Desiring: the client is told at once that the key is gone.
    out = h.desire("bad", "ghost")
    assert [(r.key, r.kind) for r in reports(out, cmd.ReportErred, "bad")] == [
        ("ghost", "FutureLostError")
    ]
    # Cancelling: the client's future is cancelled; nothing else happens.
    out = h.cancel("bad", "ghost")
    assert out == [cmd.ReportCancelled(client="bad", key="ghost")]
    assert h.state.who_has(["ghost", "g"]) == {"ghost": [], "g": []}
    assert "ghost" not in h.state.tasks
    bystander_unharmed(h, out)
    assert h.state.tasks == {}


# ----------------------------------------------------- out-of-range options


@pytest.mark.parametrize("priority", [2**64 - 1, -(2**64), 10**30])
def test_huge_priority_is_clamped_to_what_the_wire_carries(priority: int) -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.submit("c", [spec("first")], wanted=["first"])
    h.submit("c", [spec("a", priority=priority), spec("b", priority=0)], wanted=["a", "b"])
    assert h.task_state("a") == h.task_state("b") == "queued"
    out = h.finish("first")
    [compute] = of_type(out, cmd.Compute)
    assert abs(h.state.tasks["a"].priority[0]) == graph.PRIORITY_LIMIT
    assert all(-(2**63) <= p < 2**63 for p in compute.priority)
    # Still ordered: the most urgent first.
    assert compute.key == ("a" if priority > 0 else "b")
    h.run_to_completion()
    h.release("c", "first", "a", "b")
    assert h.state.tasks == {}


def test_negative_retries_mean_none() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("a", retries=-5)], wanted=["a"])
    assert h.state.tasks["a"].retries == 0
    out = h.err("a")
    assert reported_keys(out, cmd.ReportErred, "c") == {"a"}
    h.release("c", "a")
    assert h.state.tasks == {}


# ------------------------------------------------------ restored from the journal


def restored(key: str, *deps: str, error: ev.ErrorRecord | None = None) -> ev.RestoredTask:
    return ev.RestoredTask(key=key, dependencies=deps, run_spec=("run", key), error=error)


def test_journal_rows_in_any_order_and_bad_rows_are_erred() -> None:
    h = Harness()
    h.add_worker("w1")
    rows = (
        restored("z", "y"),  # its input comes later: still linked
        restored("y"),
        restored("a", "b"),  # a cycle (a key recorded twice, say): erred, not linked
        restored("b", "a"),
        restored("u", "nope"),  # an input the journal lacks: erred, not run without it
        restored("e", "y", error=ev.ErrorRecord(blame="e", text="it failed")),
    )
    wants = (("c", "z"), ("c", "a"), ("c", "u"), ("c", "e"))
    h.handle(ev.StateRestored(tasks=rows, wants=wants))
    assert [d.key for d in h.state.tasks["z"].dependencies] == ["y"]
    assert {k: h.task_state(k) for k in "abue"} == dict.fromkeys("abue", "erred")
    assert h.state.tasks["a"].error is h.state.tasks["b"].error
    assert h.state.tasks["a"].error is not None
    assert h.state.tasks["a"].error.kind == "InvalidGraphError"
    assert h.state.tasks["e"].error is not None
    assert h.state.tasks["e"].error.text == "it failed"  # its own error is kept
    assert "the journal" in h.logs[-1].message
    out = h.handle(ev.RecoveryFinished())
    assert computes(out) == {"y": "w1"}
    assert "b" in h.state.tasks  # kept while clients may still resend what needs it
    h.handle(ev.ReattachGraceEnded())
    assert "b" not in h.state.tasks  # a cycle member nobody wants is forgotten
    h.run_to_completion()
    h.release("c", "z", "a", "u", "e")
    assert h.state.tasks == {}


def test_a_submission_past_max_client_tasks_errs_for_its_client_only() -> None:
    from regrow.core import commands as cmd
    from regrow.core import events as ev
    from regrow.core.scheduler_state import SchedulerState

    state = SchedulerState(max_client_tasks=3, validate=True)

    def submit(client: str, keys: list[str]) -> list[cmd.Command]:
        specs = tuple(ev.TaskSpec(key=k, dependencies=(), run_spec=(1, [b"f", b"a"])) for k in keys)
        return state.handle(
            ev.TasksSubmitted(client=client, tasks=specs, wanted=tuple(keys), stimulus_id="s")
        )

    submit("a", ["x", "y"])
    out = submit("a", ["z", "w"])
    refused = [c for c in out if isinstance(c, cmd.ReportErred)]
    assert {c.key for c in refused} == {"z", "w"}
    assert all(c.kind == "TooManyTasksError" and "max_client_tasks" in c.text for c in refused)
    assert "z" not in state.tasks and "w" not in state.tasks
    # Another client is not limited by this one's keys; a key already known is no new task.
    assert not [c for c in submit("b", ["u", "v", "x"]) if isinstance(c, cmd.ReportErred)]
    # Room again once the client lets go of its keys.
    state.handle(ev.KeysReleased(client="a", keys=("x", "y"), stimulus_id="r"))
    assert not [c for c in submit("a", ["z", "w"]) if isinstance(c, cmd.ReportErred)]


def test_scheduler_info_stays_sendable_whatever_workers_report() -> None:
    """Found by the fuzz harness: sizes summed past 64 bits, or driven below 0 by one key
    reported at different sizes, made the snapshot impossible to encode for everyone."""
    from regrow.core import events as ev
    from regrow.core import queries
    from regrow.core.scheduler_state import SchedulerState

    state = SchedulerState(validate=True)
    state.handle(ev.WorkerAdded(worker="tcp://w:1", now=0.0))
    state.workers["tcp://w:1"].nbytes = 3 * (2**63 - 1)
    assert queries.info(state)["workers"]["tcp://w:1"]["memory"] == 2**63 - 1
    state.workers["tcp://w:1"].nbytes = -(2**64)
    assert queries.info(state)["workers"]["tcp://w:1"]["memory"] == 0


def test_a_resent_submission_finds_the_inputs_a_restart_restored() -> None:
    # Found by the chaos soak: a dask graph sent in two messages, the first journaled
    # (its tasks restored, wanted by nobody yet), the second lost with the scheduler.
    # The client resends the second once back; its tasks name the first's, which must
    # still be there, not forgotten when recovery finished.
    h = Harness()
    h.add_worker("w1")
    h.handle(ev.StateRestored(tasks=(restored("x"), restored("y", "x")), wants=()))
    h.handle(ev.RecoveryFinished())
    assert set(h.state.tasks) == {"x", "y"}
    h.submit("c", [spec("final", "y")], wanted=["final"])
    assert not reports(h.history, cmd.ReportErred)
    h.run_to_completion()
    assert h.task_state("final") == "memory"
    h.handle(ev.ReattachGraceEnded())
    assert h.task_state("final") == "memory"
    h.release("c", "final")
    assert h.state.tasks == {}


def test_restored_tasks_nobody_needs_go_when_the_grace_ends() -> None:
    h = Harness()
    h.add_worker("w1")
    h.handle(ev.StateRestored(tasks=(restored("x"), restored("y", "x")), wants=()))
    h.handle(
        ev.WorkerAdded(worker="w2", keys=(("x", 8),), stimulus_id="w2")
    )  # a worker back with x
    h.handle(ev.RecoveryFinished())
    assert h.task_state("x") == "memory"
    out = h.handle(ev.ReattachGraceEnded())
    assert h.state.tasks == {}
    assert ("w2", "x") in freed(out)
