"""Checking a submitted graph before any of it enters the scheduler's state.

Owns the rules a submission must follow, whoever sent it (a buggy or hostile client
holds the token too): every dependency is a key of the same submission or a key the
scheduler knows, and the new tasks depend on each other without a cycle. ``problems``
names the tasks that break a rule; they err for their client (``client_requests``), and
the tasks that need them err through them, like the dependents of any failed task.
Existing tasks never change their dependencies, so a cycle can only lie among new tasks.

Linear in the size of the submission (keys plus dependency references), with no
recursion: a 1,000,000-wide fan-in or a 100,000-long chain is checked in one pass.
Must not: touch the state, or do IO. Pure functions over keys.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass

from regrow.core.records import TaskError
from regrow.errors import InvalidGraphError

# Priorities travel as 64-bit integers (msgpack, the journal's SQLite); the scheduler
# orders by the negated priority, so both must stay in range.
PRIORITY_LIMIT = 2**63 - 1
# Keys of a cycle named in its error message; a longer cycle is cut short there. So is
# a longer key (a key is any string a client sends).
_SHOWN = 8
_KEY_CHARS = 200


def key_text(key: str) -> str:
    """``key`` as error messages and logs show it: quoted, and cut short if long."""
    text = repr(key)
    return text if len(text) <= _KEY_CHARS else text[: _KEY_CHARS - 4] + "...'"


def bounded_priority(priority: int) -> int:
    """``priority`` clamped to what the wire and the journal carry (either sign)."""
    return max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority))


# eq=False: compared and hashed by identity, as a cycle's path may be 100,000 keys long.
@dataclass(frozen=True, slots=True, eq=False)
class UnknownDependency:
    """The task needs ``dependency``: not in its submission, and unknown to the scheduler."""

    key: str
    dependency: str

    @property
    def text(self) -> str:
        return (
            f"task {key_text(self.key)} depends on {key_text(self.dependency)}, which is "
            "not in its submission and which the scheduler does not know: never submitted, or "
            "already released (was its future released?)"
        )


@dataclass(frozen=True, slots=True, eq=False)
class Cycle:
    """The task lies on a dependency cycle; ``path`` is one such cycle, each key needing
    the next, the last being the first again. Shared by every task of the cycle."""

    path: tuple[str, ...]
    size: int  # how many tasks depend on each other in it (its strongly connected part)

    @property
    def text(self) -> str:
        keys = self.path[:-1]
        shown = " -> ".join(key_text(k) for k in keys[:_SHOWN])
        if len(keys) > _SHOWN:
            shown += f" -> ... ({len(keys)} keys)"
        shown += f" -> {key_text(self.path[-1])}"
        others = self.size - len(keys)
        more = f", and {others} more task(s) on cycles with them" if others > 0 else ""
        return (
            f"dependency cycle in the submitted graph: {shown} (each key needs the "
            f"next{more}); none of these tasks can ever run"
        )

    def exception(self) -> bytes:
        """The exception the client raises, pickled (its class is in ``regrow.errors``)."""
        return pickle.dumps(InvalidGraphError(self.text))


Problem = UnknownDependency | Cycle


def problems(graph: Mapping[str, Collection[str]], known: Container[str]) -> dict[str, Problem]:
    """The tasks of ``graph`` (new key -> its dependency keys) that can never run.

    A task with a dependency neither in ``graph`` nor ``known`` (the first such one);
    every task on a cycle among the new keys, a self-dependency included. Not the tasks
    that merely need those: they err through their inputs once linked to them. A task
    with an unknown dependency is left out of the search for cycles (it will not be
    linked to its inputs), so a cycle through it is no cycle.
    """
    found: dict[str, Problem] = {}
    forward = False
    seen: set[str] = set()
    for key, deps in graph.items():
        for dep in deps:
            if dep in seen or dep in known:
                continue
            if dep in graph:
                forward = True  # a later key, or itself: a cycle is possible
            elif key not in found:
                found[key] = UnknownDependency(key, dep)
        seen.add(key)
    if forward:
        edges = {
            key: [] if key in found else [d for d in dict.fromkeys(deps) if d in graph]
            for key, deps in graph.items()
        }
        for component in _cyclic_components(edges):
            cycle = Cycle(_one_cycle(component, edges), len(component))
            for key in component:
                found[key] = cycle
    return found


def task_error(problem: Problem) -> TaskError:
    """What the client is told: a cycle raises ``InvalidGraphError`` (pickled here, so the
    client needs no new code to raise it), an unknown dependency ``FutureLostError``."""
    if isinstance(problem, Cycle):
        return TaskError(
            blame=problem.path[0],
            kind="InvalidGraphError",
            text=problem.text,
            exception=problem.exception(),
        )
    return TaskError(blame=problem.key, kind="FutureLostError", text=problem.text)


def summary(source: str, found: Mapping[str, Problem]) -> str:
    """One log line for the tasks of a submission (from ``source``) that cannot run."""
    cycles = {p for p in found.values() if isinstance(p, Cycle)}
    on_cycles = sum(c.size for c in cycles)
    parts = []
    if len(found) > on_cycles:
        first = next(p for p in found.values() if isinstance(p, UnknownDependency))
        parts.append(f"{len(found) - on_cycles} with an unknown dependency (first: {first.text})")
    if cycles:
        first_cycle = next(p for p in found.values() if isinstance(p, Cycle))
        parts.append(f"{on_cycles} on {len(cycles)} cycle(s) (first: {first_cycle.text})")
    return f"{source} submitted tasks that can never run; they err: " + "; ".join(parts)


def _cyclic_components(edges: Mapping[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of ``edges`` that hold a cycle (two keys or
    more, or one that needs itself), their keys and themselves in the order of ``edges``.
    Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges[root]))]
        while work:
            node, rest = work[-1]
            for nxt in rest:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    break
                if nxt in on_stack and index[nxt] < low[node]:
                    low[node] = index[nxt]
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    if low[node] < low[parent]:
                        low[parent] = low[node]
                if low[node] != index[node]:
                    continue
                component: list[str] = []
                while True:
                    key = stack.pop()
                    on_stack.discard(key)
                    component.append(key)
                    if key == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    out.append(component)
    if out:
        position = {key: i for i, key in enumerate(edges)}
        for component in out:
            component.sort(key=position.__getitem__)
        out.sort(key=lambda component: position[component[0]])
    return out


def _one_cycle(component: list[str], edges: Mapping[str, list[str]]) -> tuple[str, ...]:
    """A cycle within ``component``: from its first key, follow dependencies inside it
    until a key comes round again."""
    members = set(component)
    path: list[str] = []
    at: dict[str, int] = {}
    key = component[0]
    while key not in at:
        at[key] = len(path)
        path.append(key)
        key = next(d for d in edges[key] if d in members)
    return (*path[at[key] :], key)
