"""dask's scheduler interface: a dask graph becomes regrow tasks.

Owns the translation of a dask graph (legacy tuples or task-spec nodes, from any dask
collection) into regrow task entries: one task per graph node, ``run_node``, whose
arguments are references that the worker resolves: to a batch of nodes (one more task
per message, whose argument is its nodes pickled together, here in the client) and to
each dependency's value by its dask key. The scheduler sees opaque bytes and dependency
keys, as for any task. See docs/design.md, "dask graphs".

Also owns ``Client.get``, ``compute`` and ``persist`` (the client's dask methods check
their arguments and call here), and making a Client dask's default scheduler while it
is open.

It must not import dask at module level of anything ``import regrow`` loads: the client
imports this module only when dask is installed and a graph or a default is at hand.
"""

from __future__ import annotations

import io
import pickle
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dask._task_spec import Alias, DataNode, GraphNode, convert_legacy_graph

from regrow.client.futures import Future
from regrow.client.submission import MAP_BATCH, check_options, check_workers, future_ref
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import TaskEntry
from regrow.protocol.serialize import dumps_with_refs, standard_dumps

if TYPE_CHECKING:
    from regrow.client.client import Client

# Graph entries per submission message: the client's own batch size, so its outbox
# never merges two of our batches into one message of more than this.
BATCH = MAP_BATCH


def key_str(key: Hashable) -> str:
    """The regrow key of a dask key: strings stay, tuples read as dask prints them."""
    return key if isinstance(key, str) else str(key)


class _Dep:
    """A dependency's value, in a task's arguments: pickled as a reference to its key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class _DepPickler(pickle.Pickler):
    """The standard (C) pickler, writing each ``_Dep`` as a reference to its key. One
    per thread, reused: building a Pickler costs more than a node's arguments do."""

    def __init__(self) -> None:
        self._file = io.BytesIO()
        super().__init__(self._file, protocol=5)

    def persistent_id(self, obj: object) -> str | None:
        return obj.key if type(obj) is _Dep else None

    def dumps(self, obj: object) -> bytes:
        self._file.seek(0)
        self._file.truncate()
        self.clear_memo()
        self.dump(obj)
        return self._file.getvalue()


class _PicklerPerThread(threading.local):
    def __init__(self) -> None:
        self.pickler = _DepPickler()

    def dumps(self, obj: object) -> bytes:
        return self.pickler.dumps(obj)


_args_pickler = _PicklerPerThread()


def nodes(batch: dict[Hashable, GraphNode]) -> dict[Hashable, GraphNode]:
    """The task of a batch of nodes: its result is the nodes, by dask key, unpickled
    once per worker (a worker that runs one of them fetches it like any input)."""
    return batch


def run_node(batch: dict[Hashable, GraphNode], key: Hashable, values: dict[Hashable, Any]) -> Any:
    """Run the node ``key`` of ``batch`` on a worker, given its dependencies' values."""
    return batch[key](values)


def _batch_frames(batch: dict[Hashable, GraphNode]) -> tuple[list[Buffer], list[str]]:
    """The arguments of a batch's task, pickled at once: what the nodes share (their
    functions, mostly) is written once, not once per node. Its dependencies are the
    regrow Futures inside the nodes (a ``dask.delayed`` call's argument, say)."""
    buffers: list[pickle.PickleBuffer] = []
    data = standard_dumps(((batch,), {}), buffers)
    if data is None or b"_rebuild_future" in data:
        # cloudpickle (a function of __main__, a lambda), through the pickler that turns
        # each Future into a reference to its key, as for submit's arguments.
        return dumps_with_refs(((batch,), {}), future_ref)
    return [data, *(b.raw() for b in buffers)], []


def _order(graph: Mapping[Hashable, GraphNode], outputs: list[Hashable]) -> list[Hashable]:
    """The graph's keys needed for ``outputs``, each after its dependencies.

    Depth first from each output, dependencies in key order: a reduction's inputs are
    made just before the step that consumes them, so results are freed as they go (as
    dask.order aims for, at a small part of its cost on large graphs).
    """
    done: set[Hashable] = set()
    out: list[Hashable] = []
    on_path: set[Hashable] = set()
    for root in outputs:
        if root in done or root not in graph:
            continue
        stack: list[tuple[Hashable, list[Hashable]]] = [(root, _deps_in(graph, root))]
        on_path.add(root)
        while stack:
            key, todo = stack[-1]
            while todo and todo[-1] in done:
                todo.pop()
            if todo:
                dep = todo.pop()
                if dep in on_path:
                    raise ValueError(f"the dask graph has a cycle through {dep!r}")
                on_path.add(dep)
                stack.append((dep, _deps_in(graph, dep)))
                continue
            stack.pop()
            on_path.discard(key)
            done.add(key)
            out.append(key)
    return out


def _deps_in(graph: Mapping[Hashable, GraphNode], key: Hashable) -> list[Hashable]:
    deps = [d for d in graph[key].dependencies if d in graph]
    if len(deps) > 1:
        deps.sort(key=str, reverse=True)  # popped from the end: smallest key first
    return deps


def _name(key: Hashable) -> str:
    name = key[0] if isinstance(key, tuple) and key else key
    return name if isinstance(name, str) else ""


def _annotation(annotations: Mapping[str, Any], name: str, key: Hashable) -> Any:
    by_key = annotations.get(name)
    return by_key.get(key) if isinstance(by_key, Mapping) else None


def submit_graph(
    client: Client,
    dsk: Any,
    keys: Any,
    *,
    retries: int | None = None,
    priority: int = 0,
    workers: str | Iterable[str] | None = None,
) -> dict[Hashable, Future]:
    """Send the tasks of ``dsk`` needed for ``keys``: a Future per output key.

    ``dsk`` is a dask graph (a mapping, a HighLevelGraph, or an expression with
    ``__dask_graph__``); ``keys`` its output keys, nested in lists as dask gives them.
    Keys the graph does not define must be keys of Futures this client holds (a
    persisted collection's, or Futures put into ``dask.delayed`` calls).
    """
    annotations: Mapping[str, Any] = {}
    if hasattr(dsk, "__dask_graph__"):
        if hasattr(dsk, "__dask_annotations__"):
            annotations = dsk.__dask_annotations__() or {}
        dsk = dsk.__dask_graph__()
    if not isinstance(dsk, Mapping):
        raise TypeError(f"Client.get takes a dask graph (a mapping), got {type(dsk).__name__}")
    outputs = list(dict.fromkeys(_flatten(keys)))
    graph: dict[Hashable, GraphNode] = convert_legacy_graph(dsk)
    if any(_name(k).startswith("zpartd-") for k in graph):
        raise ValueError(
            "this dask graph uses dask's disk shuffle, which needs every task on one "
            "machine and duplicates rows when a lost task runs again; build it while a "
            "regrow Client is the default, or under "
            "dask.config.set({'dataframe.shuffle.method': 'tasks'})"
        )
    client._check_running()
    default_workers = check_workers(workers)

    # Where each key's value comes from: a task of this graph (its own key), or a Future
    # held here. Aliases, and data nodes that hold a Future, are followed to what they
    # name: they cost no task.
    source: dict[Hashable, str] = {}

    def resolve(key: Hashable) -> str:
        path = []
        while key not in source:
            node = graph.get(key)
            if isinstance(node, Alias) and node.target != key:
                path.append(key)
                key = node.target
            elif isinstance(node, DataNode) and isinstance(node.value, Future):
                source[key] = node.value.key
            elif node is None:
                source[key] = _held(client, key)
            else:
                source[key] = key_str(key)
                runs.add(key)
        for k in path:
            source[k] = source[key]
        return source[key]

    runs: set[Hashable] = set()  # the keys that are tasks to send
    # First the plan, cheap: which keys are tasks, in what order, and which of them a
    # later message reads (so must outlive their own: the scheduler forgets a task that
    # nothing needs once its message is handled). Then pickling, one message at a time,
    # each sent as soon as it is made, so the cluster starts while the client pickles.
    tasks: list[Hashable] = []
    batch_of: dict[str, int] = {}
    frontier: set[str] = set()
    for key in _order(graph, outputs):
        resolve(key)
        if key not in runs:
            continue
        batch = len(tasks) // BATCH
        for d in graph[key].dependencies:
            if batch_of.get(resolve(d), batch) < batch:
                frontier.add(source[d])
        batch_of[key_str(key)] = batch
        tasks.append(key)

    futures = {k: client._new_future(resolve(k)) for k in outputs}  # before any report
    futures_keys = {f.key for f in futures.values()}
    wanted = futures_keys | frontier
    nodes_frames = client._fn_frames(nodes)
    run_frames = client._fn_frames(run_node)
    token = uuid.uuid4().hex
    sent: list[str] = []
    try:
        for start in range(0, len(tasks), BATCH):
            chunk = tasks[start : start + BATCH]
            batch_key = f"dask-nodes-{token}-{start // BATCH}"
            batch_frames, batch_deps = _batch_frames({key: graph[key] for key in chunk})
            head = TaskEntry(
                key=batch_key,
                dependencies=batch_deps,
                fn_frames=len(nodes_frames),
                frames=len(nodes_frames) + len(batch_frames),
            )
            msgs: list[TaskEntry] = [head]
            frames: list[Buffer] = [*nodes_frames, *batch_frames]
            for key in chunk:
                entry, arg_frames = _entry(
                    key,
                    batch_key,
                    graph[key],
                    source,
                    annotations,
                    retries,
                    priority,
                    default_workers,
                )
                entry.fn_frames = len(run_frames)
                entry.frames = len(run_frames) + len(arg_frames)
                msgs.append(entry)
                frames += run_frames
                frames += arg_frames
            # The batch goes first (its nodes need it) and as early as the most urgent.
            head.priority = max(e.priority for e in msgs)
            want = [e.key for e in msgs if e.key in wanted]
            unheld = [k for k in want if k in frontier and k not in futures_keys]
            client._want_unheld(unheld)
            client._send_tasks(msgs, frames, want)
            sent.extend(unheld)
    finally:
        if sent:
            client._release_unheld(sent)
    return futures


def _entry(
    key: Hashable,
    batch_key: str,
    node: GraphNode,
    source: Mapping[Hashable, str],
    annotations: Mapping[str, Any],
    retries: int | None,
    priority: int,
    workers: list[str] | None,
) -> tuple[TaskEntry, list[Buffer]]:
    """One node's task entry (but for its frame counts) and its argument frames: its
    batch, its dask key, and its dependencies' values by dask key, all references."""
    values = {d: _Dep(source[d]) for d in node.dependencies}
    deps = list(dict.fromkeys([batch_key, *(v.key for v in values.values())]))
    entry = TaskEntry(key=key_str(key), dependencies=deps, fn_frames=0, frames=0)
    frames: list[Buffer] = [_args_pickler.dumps(((_Dep(batch_key), key, values), {}))]
    if annotations:  # dask's, per key: each wins over the keyword for its keys
        task_retries = _annotation(annotations, "retries", key)
        retries = retries if task_retries is None else task_retries
        priority = _annotation(annotations, "priority", key) or priority
        task_workers = _annotation(annotations, "workers", key)
        if task_workers:
            workers = [task_workers] if isinstance(task_workers, str) else list(task_workers)
            if not all(isinstance(w, str) for w in workers):
                raise TypeError(f"the 'workers' annotation takes addresses or names: {workers!r}")
    if retries or priority:
        entry.retries, entry.priority = check_options(int(retries or 0), int(priority))
    if workers:
        entry.workers = workers
    return entry, frames


def _held(client: Client, key: Hashable) -> str:
    """The key of a value the graph reads but does not define: a Future's, held here."""
    rkey = key_str(key)
    if rkey not in client._keys:
        raise ValueError(
            f"the dask graph needs {key!r}, which it does not define and no Future of "
            "this client holds (was the persisted collection's Future released?)"
        )
    return rkey


def _flatten(keys: Any) -> Iterator[Hashable]:
    if isinstance(keys, list):
        for k in keys:
            yield from _flatten(k)
    else:
        yield keys


def to_values(structure: Any, values: Mapping[Hashable, Any]) -> Any:
    """``keys`` as dask nests them, with each key replaced by its value."""
    if isinstance(structure, list):
        return [to_values(x, values) for x in structure]
    return values[structure]


# ------------------------------------------------------------ default scheduler
_defaults_lock = threading.Lock()
_defaults: list[Client] = []
_saved: list[Any] = []  # the dask.config.set in force while some client is the default

_METHODS = ("dataframe.shuffle.method", "array.rechunk.method")


class _DefaultScheduler:
    """dask's scheduler named "regrow": the open regrow Client made default last.

    dask's configuration names it rather than holding a client's bound ``get``: dask
    pickles its configuration (dask.distributed's nannies do, for every worker process
    they start, so a dask.distributed cluster could not start beside an open regrow
    Client), and a Client does not pickle.
    """

    def client(self) -> Client:
        with _defaults_lock:
            live = [c for c in _defaults if c.status in ("running", "reconnecting")]
        if not live:
            raise RuntimeError("dask's scheduler is 'regrow', but no regrow Client is open")
        return live[-1]

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.client().get(dsk, keys, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        # dask.persist hands collections to a scheduler that has a persist of its own.
        return self.client().persist(collections, **kwargs)


default_scheduler = _DefaultScheduler()


def cluster_methods() -> dict[str, str]:
    """Shuffles and rechunks done by tasks, unless the user chose otherwise: dask's
    peer-to-peer methods need dask.distributed's own scheduler, and its disk shuffle
    (its choice when no dask.distributed client exists) needs every task on one
    machine and counts rows twice when a task runs again."""
    import dask

    return {
        name: "tasks" for name in _METHODS if dask.config.get(name, None) in (None, "p2p", "disk")
    }


def set_default(client: Client) -> None:
    """Make ``client`` dask's scheduler until it closes (then the one before it is)."""
    import dask
    import dask.base

    dask.base.named_schedulers["regrow"] = default_scheduler
    with _defaults_lock:
        _defaults.append(client)
        _apply(dask)


def unset_default(client: Client) -> None:
    import dask

    with _defaults_lock:
        if client not in _defaults:
            return
        _defaults.remove(client)
        _apply(dask)


def _apply(dask: Any) -> None:
    if _saved:
        _saved.pop().__exit__(None, None, None)  # back to what was there before us
    # While some client is open: "regrow" as dask's scheduler (default_scheduler finds
    # the client when called), and the methods of cluster_methods.
    if any(c.status in ("running", "reconnecting") for c in _defaults):
        _saved.append(dask.config.set({"scheduler": "regrow", **cluster_methods()}))


def futures_scheduler(client: Client, **options: Any) -> Callable[..., list[Any]]:
    """A dask scheduler function that returns Futures instead of values (for
    ``Client.compute`` and ``Client.persist``, through dask's own compute/persist)."""

    def schedule(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        futures = submit_graph(client, dsk, keys, **options)
        return to_values(keys, futures)

    return schedule


# ------------------------------------------------------------- Client's methods
def get(
    client: Client,
    dsk: Any,
    keys: Any,
    *,
    workers: str | Iterable[str] | None,
    retries: int | None,
    priority: int,
    sync: bool,
) -> Any:
    """``Client.get``: the values of ``keys`` of the graph (Futures if not ``sync``)."""
    if client.asynchronous:
        raise RuntimeError(
            "an asynchronous Client cannot run dask's synchronous compute(); "
            "use 'await client.compute(collection)' instead"
        )
    futures = submit_graph(client, dsk, keys, retries=retries, priority=priority, workers=workers)
    packed = to_values(keys, futures)
    if not sync:
        return packed
    try:
        return client.gather(packed)
    finally:
        for f in futures.values():
            f.release()


def compute_or_persist(
    client: Client,
    what: str,
    collections: Any,
    sync: bool,
    optimize_graph: bool,
    workers: str | Iterable[str] | None,
    retries: int | None,
    priority: int,
) -> Any:
    """``Client.compute`` (``what="compute"``) or ``Client.persist``, through dask's own
    compute/persist with a scheduler that returns Futures."""
    import dask.config
    from dask.base import compute, persist

    client._check_running()
    single = not isinstance(collections, list | tuple | set | frozenset)
    items = [collections] if single else list(collections)
    schedule = futures_scheduler(client, retries=retries, priority=priority, workers=workers)
    run: Callable[..., tuple[Any, ...]] = compute if what == "compute" else persist
    with dask.config.set(cluster_methods()):
        results = list(run(*items, scheduler=schedule, optimize_graph=optimize_graph))
    if sync and client.asynchronous:
        return _unpacked(client.gather(results), single)
    if sync:
        results = client.gather(results)
    return results[0] if single else results


async def _unpacked(values: Any, single: bool) -> Any:
    got = await values
    return got[0] if single else got
