"""Base classes for plugins, as dask.distributed's (``register_plugin`` takes these, a
subclass of dask.distributed's own, or any object with the same methods).

A ``WorkerPlugin`` runs in every worker, now and in those that join later (the
scheduler keeps it); a ``NannyPlugin`` in every nanny, now and later, before the nanny
starts its worker; a ``SchedulerPlugin`` runs in the scheduler, only where its
operator allowed clients' code there (``regrow scheduler --allow-scheduler-code``).
"""

from __future__ import annotations

from typing import Any


class WorkerPlugin:
    """``setup(worker)`` when it arrives (or the worker starts), ``transition(key,
    start, finish, **kwargs)`` for each move of a task on that worker (ready,
    executing, memory, erred, released...), ``teardown(worker)`` when the worker
    closes or the plugin is replaced. ``name``: one plugin per name."""

    name: str | None = None

    def setup(self, worker: Any) -> None:
        """Called once in each worker."""

    def teardown(self, worker: Any) -> None:
        """Called when the worker closes."""

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        """Called for each move of a task on the worker."""


class NannyPlugin:
    """``setup(nanny)`` in each nanny when it arrives (or the nanny starts: before its
    worker does), ``teardown(nanny)`` when the nanny closes or the plugin is replaced.
    ``restart = True``: each nanny then starts its worker afresh (its tasks run again
    elsewhere), so that what ``setup`` changed (environment variables, installed
    packages) reaches the worker process. ``name``: one plugin per name."""

    name: str | None = None
    restart: bool = False

    def setup(self, nanny: Any) -> None:
        """Called once in each nanny."""

    def teardown(self, nanny: Any) -> None:
        """Called when the nanny closes."""


class SchedulerPlugin:
    """``start(scheduler)``, ``transition(key, start, finish, **kwargs)`` for each move
    of a task in the scheduler (released, waiting, queued, processing, memory, erred,
    forgotten), ``close()``."""

    name: str | None = None

    def start(self, scheduler: Any) -> None:
        """Called when it is registered."""

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        """Called for each move of a task in the scheduler."""

    def close(self) -> None:
        """Called when the scheduler closes or the plugin is replaced."""


def plugin_kind(plugin: object) -> str:
    """'worker-plugin', 'nanny-plugin' or 'scheduler-plugin', from the classes it
    derives from (regrow's or dask.distributed's, by name)."""
    names = {cls.__name__ for cls in type(plugin).__mro__}
    if "SchedulerPlugin" in names:
        return "scheduler-plugin"
    if "NannyPlugin" in names:
        return "nanny-plugin"
    if "WorkerPlugin" in names or any(
        callable(getattr(plugin, m, None)) for m in ("setup", "teardown", "transition")
    ):
        return "worker-plugin"
    raise TypeError(
        "register_plugin takes a WorkerPlugin, NannyPlugin or SchedulerPlugin, got "
        f"{type(plugin).__name__}"
    )
