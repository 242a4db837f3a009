"""Every message of the wire protocol, with its fields and their types: the one schema.

A packet's frame 0 is a msgpack list of ``[message, n_payload_frames]`` pairs; the
payload frames follow in order. Several messages share one packet, which is how many
small messages are batched into one write. A message is a msgpack map whose ``op``
names its type (``{"op": "task-finished", "key": ..., "run": ...}``).

Each op is one ``msgspec.Struct`` below, grouped by who sends it to whom. Senders build
them (mypy checks every field); receivers get them already checked: a packet's header
is decoded and validated against the union of all messages in one pass (C code, no
per-field Python), so an unknown op, a missing field, a field of the wrong type or out
of its bounds (a negative size, an infinite float, a float where an int belongs) is a
``ProtocolError`` naming the field, raised before any handler sees the message; the
connection (``comm``) logs it and drops that one peer. What types cannot say (frame
counts that must add up, a range inside a frame) the receivers check, raising
ProtocolError too.

Requests and replies: a ``Request[R]`` carries ``rid`` (0: no reply wanted) and is
answered by a reply of type ``R`` with the same ``rid``, or by an ``ErrorReply``
(``Connection.request`` raises it as the peer's exception type).

Before authentication only the handshake's four messages decode (``HANDSHAKE``).
This module owns message types and the header's encoding; it does no IO.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from regrow.errors import ProtocolError, reason
from regrow.protocol.framing import Buffer

# ------------------------------------------------------------------ field types
# Sizes, counts, ids, process ids, run ids: never negative, and within msgpack's int64.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# A task's priority: negated by the scheduler, so kept symmetric inside int64.
Priority = Annotated[int, msgspec.Meta(ge=-(2**63) + 1, le=2**63 - 1)]
# Durations and timeouts: finite (le refuses inf, ge refuses NaN), never negative.
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
# An amount of an abstract resource (a worker's GPUs, a task's share of them).
Amount = Annotated[float, msgspec.Meta(ge=0.0, le=1e18)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
# Nonces and MACs of the handshake (32 bytes each).
Token = Annotated[bytes, msgspec.Meta(max_length=64)]


class Message(
    msgspec.Struct,
    tag_field="op",
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """A message: its ``op`` is its type's tag. (gc=False: messages hold no cycles.)"""


class Record(
    msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """A structure nested inside messages (no ``op`` of its own)."""


class Reply(Message, kw_only=True):
    """An answer to the request of the same ``rid`` (set by ``Connection.reply``)."""

    rid: Count = 0


R = TypeVar("R", bound=Reply)


class Request(Message, Generic[R], kw_only=True):
    """A message answered by an ``R`` (or an ErrorReply) when ``rid`` is not 0."""

    rid: Count = 0


def op_of(msg: Message | type[Message]) -> str:
    """The ``op`` of a message or message type."""
    cls = msg if isinstance(msg, type) else type(msg)
    return str(cls.__struct_config__.tag)


# ---------------------------------------------------------------- any to any
class Ack(Reply, tag="ack", kw_only=True):
    """A request done, with nothing to say."""


class ErrorReply(Reply, tag="error-reply", kw_only=True):
    """A request that failed: the peer's exception, its type by name."""

    error: str
    etype: str = ""


class PingReply(Reply, tag="ping-reply", kw_only=True):
    """Alive: the answering process's address and pid (a nanny adds its worker's)."""

    address: str = ""
    pid: Count = 0
    worker: str = ""


class PingMsg(Request[PingReply], tag="ping", kw_only=True):
    """Are you there? (to a scheduler, worker or nanny)"""


class RefusedMsg(Message, tag="refused", kw_only=True):
    """The scheduler refuses a registration (the first message), then closes."""

    reason: str


class CloseMsg(Message, tag="close", kw_only=True):
    """Scheduler to worker or nanny: stop for good."""


class SchedulerClosingMsg(Message, tag="scheduler-closing", kw_only=True):
    """Scheduler to worker or client: I am stopping; the connection closes next."""


# ------------------------------------------------ handshake (before authentication)
class HelloMsg(Message, tag="hello", kw_only=True):
    """Server to client, first: the protocol version and the server's nonce."""

    v: int
    nonce: Token


class AuthMsg(Message, tag="auth", kw_only=True):
    """Client to server: its nonce and proof that it knows the token (``tokenless``: it
    was given none, so a refusal can say so rather than call it wrong)."""

    nonce: Token
    mac: Token
    tokenless: bool = False


class WelcomeMsg(Message, tag="welcome", kw_only=True):
    """Server to client: the server's proof that it knows the token."""

    mac: Token


class DeniedMsg(Message, tag="denied", kw_only=True):
    """Server to client: refused (wrong token, or not allowed without one)."""

    reason: str


# ----------------------------------------------------------- client -> scheduler
class RegisterClientMsg(Message, tag="register-client", kw_only=True):
    """First message of a client; on reattaching, the keys it still holds."""

    client: str
    reattach: bool = False
    keys: list[str] | None = None
    # The worker whose process the client lives in (a task's client), if any.
    worker: str = ""


class TaskEntry(Record, kw_only=True):
    """One task of a submission; its ``frames`` frames follow the header in order, the
    first ``fn_frames`` of them its pickled function. Short names: 1,000 per message."""

    key: str = msgspec.field(name="k")
    dependencies: list[str] = msgspec.field(default_factory=list, name="d")
    fn_frames: Count = msgspec.field(name="fnf")
    frames: Count = msgspec.field(name="nf")
    priority: Priority = msgspec.field(default=0, name="p")
    retries: Count = msgspec.field(default=0, name="r")
    workers: list[str] | None = msgspec.field(default=None, name="w")
    pure: bool = True
    # Abstract resources it needs while it runs ({"GPU": 1}).
    resources: dict[str, Amount] | None = msgspec.field(default=None, name="res")


class SubmitMsg(Message, tag="submit", kw_only=True):
    """Tasks to run, the keys the client wants of them; ``seq``: acknowledge it."""

    tasks: list[TaskEntry]
    wanted: list[str]
    seq: Count = 0


class ReleaseKeysMsg(Message, tag="release-keys", kw_only=True):
    """The client no longer wants these keys."""

    keys: list[str]


class DesireKeysMsg(Message, tag="desire-keys", kw_only=True):
    """The client wants these keys (again): report where they stand."""

    keys: list[str]


class MissingDataMsg(Message, tag="missing-data", kw_only=True):
    """Holders the scheduler named answered without these keys: key -> addresses."""

    missing: dict[str, list[str]]


class LogEventMsg(Message, tag="log-event", kw_only=True):
    """An event a client logs (``Client.log_event``): the scheduler keeps it in its
    timeline and tells every client."""

    topic: str
    data: dict[str, Any]


class ReplicateMsg(Request[Ack], tag="replicate", kw_only=True):
    """Keep ``n`` copies of each of these keys (0: one on every worker), from now on."""

    keys: list[str]
    n: Count = 0


class RebalanceMsg(Request[Ack], tag="rebalance", kw_only=True):
    """Spread these keys' results (None: all) evenly over these workers (None: all)."""

    keys: list[str] | None = None
    workers: list[str] | None = None


class CancelMsg(Request[Ack], tag="cancel", kw_only=True):
    """Cancel these keys (``force``: interrupt them if running)."""

    keys: list[str]
    force: bool = False


class FireAndForgetMsg(Message, tag="fire-and-forget", kw_only=True):
    """Compute these keys even once no client holds them (``fire_and_forget``)."""

    keys: list[str]


class RetryMsg(Request[Ack], tag="retry", kw_only=True):
    """Compute these erred keys again (``Future.retry``)."""

    keys: list[str]


class HasWhatReply(Reply, tag="has-what-reply", kw_only=True):
    """The keys each worker holds (none for an unknown worker)."""

    has_what: dict[str, list[str]]


class HasWhatMsg(Request[HasWhatReply], tag="has-what", kw_only=True):
    """Which keys do these workers (addresses or names; None: all) hold?"""

    workers: list[str] | None = None


class ScatteredEntry(Record, kw_only=True):
    """A value a client placed on workers itself."""

    key: str
    nbytes: Count
    type: str = ""
    workers: list[str]


class ScatteredMsg(Request[Ack], tag="scattered", kw_only=True):
    """The client put these values on workers; keep ``replicas`` copies of each."""

    keys: list[ScatteredEntry]
    replicas: Positive = 1


class CoordinateReply(Reply, tag="coordinate-reply", kw_only=True):
    """A coordination request's answer: granted or found (``ok``), a held value's
    pickled bytes, a count, or why not (``error``)."""

    ok: bool
    payload: bytes | None = None
    number: float = 0.0
    error: str = ""


class CoordinateMsg(Request[CoordinateReply], tag="coordinate", kw_only=True):
    """A request to a lock, semaphore, event, variable, queue, dataset or pub/sub topic
    held by the scheduler (see ``core.coordination``)."""

    kind: str
    name: str
    action: str
    payload: bytes | None = None
    keys: list[str] = msgspec.field(default_factory=list)
    number: float = 0.0
    ident: str = ""
    timeout: Seconds | None = None
    # The client's id for this call, the same when it asks again after a lost scheduler
    # (a journaled one answers a change once: see core.coordination).
    call: str = ""


class WhoHasReply(Reply, tag="who-has-reply", kw_only=True):
    """Each key's holders (none for an unknown key)."""

    who_has: dict[str, list[str]]


class WhoHasMsg(Request[WhoHasReply], tag="who-has", kw_only=True):
    """Which workers hold these keys?"""

    keys: list[str]


class SchedulerInfoReply(Reply, tag="scheduler-info-reply", kw_only=True):
    """The scheduler's snapshot (``SchedulerState.info`` and the shell's additions)."""

    info: dict[str, Any]


class SchedulerInfoMsg(Request[SchedulerInfoReply], tag="scheduler-info", kw_only=True):
    """Describe the cluster: workers, task counts."""


class RetireWorkersReply(Reply, tag="retire-workers-reply", kw_only=True):
    """The addresses of the workers that retired."""

    workers: list[str]


class RetireWorkersMsg(Request[RetireWorkersReply], tag="retire-workers", kw_only=True):
    """Retire these workers (addresses or names) without losing any result."""

    workers: list[str]


class RestartReply(Reply, tag="restart-reply", kw_only=True):
    """Restarted: how many workers are connected now."""

    workers: Count


class RestartMsg(Request[RestartReply], tag="restart", kw_only=True):
    """Cancel everything and restart every worker, within ``timeout`` seconds."""

    timeout: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] = 30.0


class ShutdownMsg(Request[Ack], tag="shutdown", kw_only=True):
    """Stop the scheduler (and the workers it manages)."""


class CloseClientMsg(Message, tag="close-client", kw_only=True):
    """The client is leaving on purpose: let its keys go at once."""


# ----------------------------------------------------------- scheduler -> client
class ClientRegisteredMsg(Message, tag="client-registered", kw_only=True):
    """Answer to register-client: the scheduler's address and id, journaled or not."""

    scheduler: str
    id: str
    journal: bool = False
    # Where its dashboard serves ('http://host:port'; '': none).
    dashboard: str = ""


class KeyInMemoryMsg(Message, tag="key-in-memory", kw_only=True):
    """A wanted key finished; ``inline``: its pickled value, when small."""

    key: str
    type: str = ""
    nbytes: Count = 0
    inline: bytes | None = None


class KeyErredMsg(Message, tag="key-erred", kw_only=True):
    """A wanted key failed; frames: its pickled exception and traceback."""

    key: str
    text: str = ""
    kind: str = ""
    blame: str = ""
    workers: list[str] = []


class KeyCancelledMsg(Message, tag="key-cancelled", kw_only=True):
    """A wanted key was cancelled."""

    key: str


class KeyLostMsg(Message, tag="key-lost", kw_only=True):
    """A wanted key's only copy was lost: it is computed again."""

    key: str


class KeyRetriedMsg(Message, tag="key-retried", kw_only=True):
    """A wanted key that erred is computed again (a client retried it): pending."""

    key: str


class KeyInterruptedMsg(Message, tag="key-interrupted", kw_only=True):
    """A key was running on a worker that died: it runs again elsewhere."""

    key: str
    worker: str


class EventMsg(Message, tag="event", kw_only=True):
    """Something for the client's event log: ``data`` is the event's record (its fields,
    ``time`` in wall-clock seconds; see docs/events.md), ``message`` its text."""

    topic: str
    message: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class SubmitAckMsg(Message, tag="submit-ack", kw_only=True):
    """Submissions up to ``seq`` are safe (journaled, when the scheduler journals)."""

    seq: Count


# ------------------------------------------------------------ worker -> scheduler
class RegisterWorkerMsg(Message, tag="register-worker", kw_only=True):
    """First message of a worker: who it is, and the results it already holds."""

    address: str
    id: str = ""
    name: str = ""
    nthreads: Annotated[int, msgspec.Meta(ge=1, le=2**20)]
    pid: Count = 0
    memory_limit: Count = 0
    nanny: str = ""
    keys: list[tuple[str, Count]] = []
    # Its abstract resources ({"GPU": 2}).
    resources: dict[str, Amount] = {}


class HeartbeatMsg(Message, tag="heartbeat", kw_only=True):
    """A sign of life, with memory figures (bytes) and tasks in its threads."""

    memory: Count = 0
    managed: Count = 0
    spilled: Count = 0
    executing: Count = 0
    # New memory made to serve data (pickle streams, mapped spill files) not yet sent.
    in_flight: Count = 0
    # CPU use since the last heartbeat, percent (100: one core busy).
    cpu: Count = 0
    # Bytes of results sent to and received from peers since the worker started.
    sent: Count = 0
    received: Count = 0


class StartedMsg(Message, tag="started", kw_only=True):
    """The worker began these tasks."""

    keys: list[str]


class LongRunningMsg(Message, tag="long-running", kw_only=True):
    """Run ``run_id`` of ``key`` seceded from its thread (``secede()``)."""

    key: str
    run_id: Count = msgspec.field(name="run")


class TaskFinishedMsg(Message, tag="task-finished", kw_only=True):
    """Run ``run_id`` of ``key`` succeeded; ``inline``: its pickled value, when small."""

    key: str
    run_id: Count = msgspec.field(name="run")
    nbytes: Count
    type_name: str = msgspec.field(default="", name="type")
    duration: Seconds = 0.0
    inline: bytes | None = None


class TaskErredMsg(Message, tag="task-erred", kw_only=True):
    """Run ``run_id`` of ``key`` raised; frames: the pickled exception and traceback."""

    key: str
    run_id: Count = msgspec.field(name="run")
    text: str = ""
    duration: Seconds = 0.0


class AddReplicasMsg(Message, tag="add-replicas", kw_only=True):
    """The worker now holds copies of these keys."""

    keys: list[str]


class DependencyMissingMsg(Message, tag="dependency-missing", kw_only=True):
    """None of ``holders`` had ``dependency`` of ``key``."""

    key: str
    dependency: str
    holders: list[str]


class StealResponseMsg(Message, tag="steal-response", kw_only=True):
    """Whether the worker gave ``key`` up."""

    key: str
    stolen: bool


class PausedMsg(Message, tag="paused", kw_only=True):
    """The worker paused (memory) or resumed."""

    paused: bool


class RetiringMsg(Message, tag="retiring", kw_only=True):
    """The worker is leaving on purpose (and why)."""

    reason: str = ""


# ------------------------------------------------------------ scheduler -> worker
class WorkerRegisteredMsg(Message, tag="worker-registered", kw_only=True):
    """Answer to register-worker; ``drop``: drop everything held first (stale)."""

    scheduler: str
    drop: bool = False


class ComputeMsg(Message, tag="compute", kw_only=True):
    """Run ``key`` (run ``run_id``); frames: function (``fn_frames``), then arguments."""

    key: str
    run_id: Count = msgspec.field(name="run")
    priority: tuple[int, int]
    who_has: dict[str, list[str]]
    fn_frames: Count = msgspec.field(name="fnf")
    inline: dict[str, bytes] | None = None


class FreeKeysMsg(Message, tag="free-keys", kw_only=True):
    """Drop these keys: their data, or their tasks not yet finished."""

    keys: list[str]


class StealMsg(Message, tag="steal", kw_only=True):
    """Give ``key`` up if it has not started."""

    key: str


class InterruptMsg(Message, tag="interrupt", kw_only=True):
    """Stop running ``key``."""

    key: str


class AcquireReplicasMsg(Message, tag="acquire-replicas", kw_only=True):
    """Fetch a copy of each key from one of its holders."""

    who_has: dict[str, list[str]]


class DropStateMsg(Message, tag="drop-state", kw_only=True):
    """Drop every result and task (a restart)."""


# -------------------------------------------------------- nanny <-> scheduler
class RegisterNannyMsg(Message, tag="register-nanny", kw_only=True):
    """First message of a nanny."""

    address: str
    name: str = ""
    # Started by its cluster in place of a nanny that died: which, and how.
    replaces: str = ""


class NannyRegisteredMsg(Message, tag="nanny-registered", kw_only=True):
    """Answer to register-nanny, with the nanny plugins registered so far (name ->
    pickled plugin), to set up before the nanny starts its worker."""

    scheduler: str
    plugins: dict[str, bytes] = {}


class LeavingMsg(Message, tag="leaving", kw_only=True):
    """Nanny to scheduler: I was told to stop (SIGTERM: a job ended, a pod deleted);
    retire my worker gracefully first. Answered with ``left``."""

    worker: str


class LeftMsg(Message, tag="left", kw_only=True):
    """Scheduler to nanny: the answer to ``leaving``. ``retired``: its results were moved
    and a close follows; else the worker could not go without losing the last copy of
    a result, and the nanny stops it anyway (what only it held is recomputed)."""

    retired: bool


class WorkerDiedMsg(Message, tag="worker-died", kw_only=True):
    """The nanny's worker died, and why."""

    worker: str
    reason: str
    exitcode: int = 0
    # Killed by its nanny for passing its memory limit.
    out_of_memory: bool = False


class KillWorkerMsg(Request[Ack], tag="kill-worker", kw_only=True):
    """Kill the worker now (the nanny starts a fresh one)."""

    reason: str = ""


# ------------------------------------------- worker or client -> worker (data)
class HelloPeerMsg(Message, tag="hello-peer", kw_only=True):
    """First message of a worker's connection to a peer (nothing to answer)."""


class ShmFile(Record, kw_only=True):
    """Frames moved into one /dev/shm file: [value, frame, offset, length] each."""

    path: str
    size: Count
    layout: list[tuple[Count, Count, Count, Count]]


class SealedFile(Record, kw_only=True):
    """A sealed value's memfd, open in ``pid`` as ``fd``: [frame, offset, length] each."""

    pid: Count
    fd: Count
    ino: Count
    size: Count
    layout: list[tuple[Count, Count, Count]]


class LentFrames(Record, kw_only=True):
    """Frames lent for process_vm_readv: [value, frame, address, length] each; ``made``:
    [position in ``frames``, what it is] of those that are a ``bytes`` (1), an ASCII
    ``str``'s characters (2) or a ``bytearray`` (3), which the borrower reads straight
    into such an object."""

    pid: Count
    id: Count
    frames: list[tuple[Count, Count, Count, Count]]
    made: list[tuple[Count, Count]] = msgspec.field(default_factory=list)


class StripedFrames(Record, kw_only=True):
    """Frames left out of a reply, kept for get-part: [frame index, length] each."""

    id: Count
    frames: list[tuple[Count, Count]]


class GetDataReply(Reply, tag="get-data-reply", kw_only=True):
    """The keys held, each value's frame count; frames left out travel as described."""

    keys: list[str]
    nf: list[Count]
    shm: ShmFile | None = None
    striped: StripedFrames | None = None
    sealed: dict[Count, SealedFile] | None = None
    lent: LentFrames | None = None
    # Held, but left for another request: the holder sends a bounded amount of copies
    # at a time (Settings.transfer_copy_bytes).
    later: list[str] | None = None


class GetDataMsg(Request[GetDataReply], tag="get-data", kw_only=True):
    """Send what you hold of ``keys``; ``host``/``vm``: same-host paths I can take;
    ``streams``: connections I would fetch large frames over."""

    keys: list[str]
    host: str = ""
    vm: bool = False
    streams: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1


class GetPartMsg(Request[Ack], tag="get-part", kw_only=True):
    """Send bytes [lo, hi) of frame ``frame`` of striped transfer ``id`` (one frame)."""

    id: Count
    frame: Count
    lo: Count
    hi: Count


class PartsDoneMsg(Message, tag="parts-done", kw_only=True):
    """Striped transfer ``id`` is over: let its frames go."""

    id: Count


class LentDoneMsg(Message, tag="lent-done", kw_only=True):
    """Lend ``id`` is over: let its frames go."""

    id: Count


class PutDataReply(Reply, tag="put-data-reply", kw_only=True):
    """The values stored: their sizes and type names."""

    nbytes: dict[str, Count]
    types: dict[str, str]


class PutDataMsg(Request[PutDataReply], tag="put-data", kw_only=True):
    """Store these values; frames: each key's ``nf`` frames, in order. From a client on
    the same host (``host``, see GetDataMsg), large frames may be ``lent`` instead (left
    empty here): the worker reads them out of the client's memory, or answers an
    ``LendRefusedError`` (then they come inline)."""

    keys: list[str]
    nf: list[Count]
    host: str = ""
    lent: LentFrames | None = None


class RunReply(Reply, tag="run-reply", kw_only=True):
    """Whether the function returned (else raised); frames: the pickled outcome."""

    ok: bool


class RunMsg(Request[RunReply], tag="run", kw_only=True):
    """Run the pickled (function, args, kwargs) of the frames here."""


class ExtraReply(Reply, tag="extra-reply", kw_only=True):
    """What went wrong where: ``{worker address: error}`` (empty: applied everywhere)."""

    errors: dict[str, str] = {}


class ExtraMsg(Request[ExtraReply], tag="extra", kw_only=True):
    """Something every worker gets, now and when it joins: a file to import (``kind``
    'file', ``name`` its file name) or a pickled worker plugin ('worker-plugin'; a
    'scheduler-plugin' only where the scheduler allows scheduler code); or every nanny
    ('nanny-plugin'). Client to scheduler, and scheduler to worker or nanny."""

    kind: str
    name: str
    payload: bytes


class RunOnSchedulerMsg(Request[RunReply], tag="run-on-scheduler", kw_only=True):
    """Run the pickled (function, args, kwargs) in the scheduler: refused unless it was
    started with --allow-scheduler-code (until then, never unpickled)."""

    payload: bytes


# ------------------------------------------------------------------ the unions
Handshake = HelloMsg | AuthMsg | WelcomeMsg | DeniedMsg

AnyMessage = (
    Ack
    | ErrorReply
    | PingReply
    | PingMsg
    | RefusedMsg
    | CloseMsg
    | SchedulerClosingMsg
    | RegisterClientMsg
    | SubmitMsg
    | ReleaseKeysMsg
    | DesireKeysMsg
    | MissingDataMsg
    | CancelMsg
    | FireAndForgetMsg
    | RetryMsg
    | HasWhatReply
    | HasWhatMsg
    | LogEventMsg
    | ScatteredMsg
    | WhoHasReply
    | WhoHasMsg
    | SchedulerInfoReply
    | SchedulerInfoMsg
    | RetireWorkersReply
    | RetireWorkersMsg
    | RestartReply
    | RestartMsg
    | ShutdownMsg
    | CloseClientMsg
    | ClientRegisteredMsg
    | KeyInMemoryMsg
    | KeyErredMsg
    | KeyCancelledMsg
    | KeyLostMsg
    | KeyRetriedMsg
    | KeyInterruptedMsg
    | EventMsg
    | SubmitAckMsg
    | RegisterWorkerMsg
    | HeartbeatMsg
    | StartedMsg
    | LongRunningMsg
    | ReplicateMsg
    | RebalanceMsg
    | ExtraMsg
    | ExtraReply
    | RunOnSchedulerMsg
    | CoordinateMsg
    | CoordinateReply
    | TaskFinishedMsg
    | TaskErredMsg
    | AddReplicasMsg
    | DependencyMissingMsg
    | StealResponseMsg
    | PausedMsg
    | RetiringMsg
    | WorkerRegisteredMsg
    | ComputeMsg
    | FreeKeysMsg
    | StealMsg
    | InterruptMsg
    | AcquireReplicasMsg
    | DropStateMsg
    | RegisterNannyMsg
    | NannyRegisteredMsg
    | WorkerDiedMsg
    | LeavingMsg
    | LeftMsg
    | KillWorkerMsg
    | HelloPeerMsg
    | GetDataReply
    | GetDataMsg
    | GetPartMsg
    | PartsDoneMsg
    | LentDoneMsg
    | PutDataReply
    | PutDataMsg
    | RunReply
    | RunMsg
)

# Every message type of the protocol, handshake included.
MESSAGE_TYPES: tuple[type[Message], ...] = (
    *typing.get_args(AnyMessage),
    *typing.get_args(Handshake),
)


def reply_type(request: type[Request[Any]]) -> type[Reply]:
    """The reply type that answers ``request``."""
    return _REPLY_TYPES[request]


def _reply_types() -> dict[type[Request[Any]], type[Reply]]:
    out: dict[type[Request[Any]], type[Reply]] = {}
    for cls in MESSAGE_TYPES:
        if issubclass(cls, Request):
            for base in getattr(cls, "__orig_bases__", ()):
                if typing.get_origin(base) is Request:
                    (answer,) = typing.get_args(base)
                    out[cls] = answer
    return out


_REPLY_TYPES = _reply_types()


# ------------------------------------------------------------------ packets
_logger = logging.getLogger("regrow.comm")
_NFrames = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[AnyMessage, _NFrames]])
_handshake_decoder = msgspec.msgpack.Decoder(list[tuple[Handshake, _NFrames]])


def pack_messages(batch: Sequence[tuple[Message, Sequence[Buffer]]]) -> list[Buffer]:
    """A packet's frames: the header (every message and its frame count), then the
    messages' frames in order."""
    try:
        header = _encoder.encode([(msg, len(frames)) for msg, frames in batch])
    except (TypeError, ValueError, OverflowError):
        batch = _encodable(batch)
        header = _encoder.encode([(msg, len(frames)) for msg, frames in batch])
    frames: list[Buffer] = [header]
    for _, payload in batch:
        frames.extend(payload)
    return frames


def _encodable(
    batch: Sequence[tuple[Message, Sequence[Buffer]]],
) -> list[tuple[Message, Sequence[Buffer]]]:
    """``batch`` without the messages that cannot be encoded (a value no field can
    carry, such as an int past 64 bits): a bug of the sender's, logged; a reply becomes
    an error reply, so that its requester does not wait for it in vain. The others go."""
    out: list[tuple[Message, Sequence[Buffer]]] = []
    for msg, frames in batch:
        try:
            _encoder.encode(msg)
        except (TypeError, ValueError, OverflowError) as exc:
            _logger.error("cannot send %r: %s: %r", op_of(msg), exc, msg)
            if isinstance(msg, Reply) and msg.rid:
                error = f"could not send the {op_of(msg)!r}: {reason(exc)}"
                out.append((ErrorReply(rid=msg.rid, error=error, etype="ProtocolError"), ()))
            continue
        out.append((msg, frames))
    return out


def unpack_messages(
    packet: Sequence[Buffer], handshake: bool = False
) -> list[tuple[Message, list[Buffer]]]:
    """A packet's messages, each checked against its type, with their frames; before
    authentication (``handshake``) only the handshake's messages. ProtocolError names
    what is wrong (msgspec's path: ``$[0][0].pid`` is the first message's ``pid``)."""
    decoder = _handshake_decoder if handshake else _decoder
    try:
        header = decoder.decode(packet[0])
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"undecodable message header: {exc}") from None
    out: list[tuple[Message, list[Buffer]]] = []
    pos = 1
    for msg, nframes in header:
        if pos + nframes > len(packet):
            raise ProtocolError(f"message {op_of(msg)!r} claims frames the packet lacks")
        out.append((msg, list(packet[pos : pos + nframes])))
        pos += nframes
    if pos != len(packet):
        raise ProtocolError("packet carries frames no message claims")
    return out
