"""The scheduler's state in Prometheus' text format (``GET /metrics``).

Owns: what each metric is and where it comes from. Every value is read from the core
at scrape time (``queries.info`` and ``queries.task_groups``): nothing is kept or
counted here, so a scheduler nobody scrapes pays nothing. Made with the official
``prometheus-client`` (imported at the first scrape).

- gauges: ``regrow_workers`` (by status), ``regrow_tasks`` (by state),
  ``regrow_task_group_tasks`` (by group and state), ``regrow_clients``,
  ``regrow_tasks_queued``, ``regrow_suspects``; per worker (label ``worker``, its
  address, and ``name``): ``regrow_worker_threads``, ``regrow_worker_processing``,
  ``regrow_worker_results``, ``regrow_worker_held_bytes``, ``regrow_worker_spilled_bytes``,
  ``regrow_worker_process_memory_bytes`` (its last heartbeat), ``regrow_worker_memory_limit_bytes``,
  ``regrow_worker_transfer_bytes`` (bytes its replies have in flight);
- counters, since this scheduler process started: ``regrow_tasks_finished``,
  ``regrow_tasks_erred``, ``regrow_tasks_recomputed``, ``regrow_tasks_rescheduled``,
  ``regrow_tasks_stolen``, ``regrow_results_lost``, ``regrow_workers_lost``,
  ``regrow_heartbeat_misses`` (workers removed for silence), and per worker
  ``regrow_worker_sent_bytes`` / ``regrow_worker_received_bytes`` (each exposed with the
  ``_total`` suffix); per worker also ``regrow_worker_cpu_percent`` and
  ``regrow_worker_silence_seconds`` (since its last message);
- with a journal: ``regrow_journal_lag_seconds`` (age of the oldest change not yet
  committed), ``regrow_journal_writes_total``, ``regrow_journal_last_write_seconds``.

Must not: change the state, or do IO.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from regrow.core import queries

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from regrow.core.scheduler_state import SchedulerState

_WORKER_GAUGES = (
    ("threads", "nthreads", "Task threads of the worker."),
    ("processing", "processing", "Tasks the worker is running or has queued."),
    ("results", "nkeys", "Results the worker holds."),
    ("held_bytes", "memory", "Bytes of the results the worker holds."),
    ("spilled_bytes", "spilled", "Bytes of results the worker spilled to disk."),
    ("process_memory_bytes", "rss", "The worker process's memory, as its last heartbeat said."),
    ("memory_limit_bytes", "memory_limit", "The worker's memory limit (0: none)."),
    ("transfer_bytes", "in_flight", "Bytes the worker's replies to peers have in flight."),
    ("cpu_percent", "cpu", "The worker process's CPU use since its last heartbeat (100: a core)."),
    (
        "silence_seconds",
        "silence",
        "Seconds since the worker's last message (a heartbeat or other).",
    ),
)

_WORKER_COUNTERS = (
    ("sent_bytes", "sent", "Bytes of results the worker sent to peers."),
    ("received_bytes", "received", "Bytes of results the worker received from peers."),
)

_COUNTERS = (
    ("tasks_finished", "finished", "Tasks that finished."),
    ("tasks_erred", "erred", "Tasks that erred."),
    ("tasks_recomputed", "recomputed", "Results computed again after their holder was lost."),
    ("tasks_rescheduled", "rescheduled", "Running tasks sent elsewhere after a worker was lost."),
    ("tasks_stolen", "stolen", "Tasks moved to a less busy worker."),
    ("results_lost", "lost", "Results lost with every worker that held them."),
    ("workers_lost", "workers_lost", "Workers removed because they died or went silent."),
    ("heartbeat_misses", "heartbeat_misses", "Workers removed because their heartbeats stopped."),
)


class _Collector:
    def __init__(self, state: SchedulerState, journal: JournalFigures | None) -> None:
        self.state = state
        self.journal = journal

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info: dict[str, Any] = queries.info(self.state)
        workers = info["workers"]
        by_status: dict[str, int] = {}
        for w in workers.values():
            by_status[str(w["status"])] = by_status.get(str(w["status"]), 0) + 1
        family = GaugeMetricFamily("regrow_workers", "Workers, by status.", labels=["status"])
        for status, n in sorted(by_status.items()):
            family.add_metric([status], n)
        yield family
        family = GaugeMetricFamily("regrow_tasks", "Tasks, by state.", labels=["state"])
        for state, n in sorted(info["tasks"].items()):
            family.add_metric([state], n)
        yield family
        family = GaugeMetricFamily(
            "regrow_task_group_tasks",
            "Tasks, by group (the key's prefix) and state.",
            labels=["group", "state"],
        )
        for group, states in sorted(queries.task_groups(self.state).items()):
            for state, n in sorted(states.items()):
                family.add_metric([group, state], n)
        yield family
        yield GaugeMetricFamily("regrow_clients", "Clients connected.", value=info["clients"])
        yield GaugeMetricFamily(
            "regrow_tasks_queued", "Tasks waiting for a free thread.", value=info["queued"]
        )
        yield GaugeMetricFamily(
            "regrow_suspects", "Tasks suspected of killing workers.", value=len(info["suspects"])
        )
        # Per worker, labelled by its address and name: gauges, then counters.
        per_worker = ((GaugeMetricFamily, _WORKER_GAUGES), (CounterMetricFamily, _WORKER_COUNTERS))
        for kind, metrics in per_worker:
            for name, field, doc in metrics:
                each = kind(f"regrow_worker_{name}", doc, labels=["worker", "name"])
                for address, w in sorted(workers.items()):
                    value = w.get(field)
                    if isinstance(value, int | float):
                        each.add_metric([address, str(w["name"])], value)
                yield each
        counts = info["counts"]
        for name, field, doc in _COUNTERS:
            yield CounterMetricFamily(f"regrow_{name}", doc, value=counts.get(field, 0))
        if self.journal is not None:
            lag, writes, last_write = self.journal
            yield GaugeMetricFamily(
                "regrow_journal_lag_seconds",
                "Age of the oldest change not yet committed to the journal (0: none).",
                value=lag,
            )
            yield CounterMetricFamily(
                "regrow_journal_writes", "Transactions committed to the journal.", value=writes
            )
            yield GaugeMetricFamily(
                "regrow_journal_last_write_seconds",
                "How long the last journal transaction took to commit.",
                value=last_write,
            )


# A journaled scheduler's (lag s, transactions committed, last commit's duration s).
JournalFigures = tuple[float, int, float]


def exposition(state: SchedulerState, journal: JournalFigures | None = None) -> bytes:
    """The scheduler's metrics now, in Prometheus' text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state, journal))
    return generate_latest(registry)
