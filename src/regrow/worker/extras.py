"""What every worker gets from the scheduler besides tasks: files uploaded by clients
(``upload_file``: a .py imported, a .zip or .egg put on ``sys.path``) and worker
plugins (``register_plugin``: ``setup(worker)``, ``transition(key, start, finish)``
for each move of a task here, ``teardown(worker)``), as dask.distributed defines them.

Owns: the directory the files go to, the plugins by name, and how far into the worker
core's transition log the plugins have been told. Must not: run tasks, or swallow what
a plugin or an import raises (it is returned, to reach the client that asked).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from regrow.core.transitions import tell_plugins
from regrow.errors import explain

if TYPE_CHECKING:
    from regrow.core.worker_state import WorkerState
    from regrow.worker.shell import Worker

logger = logging.getLogger("regrow.worker")


class Extras:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.plugins: dict[str, Any] = {}
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._moves = 0

    def apply(self, kind: str, name: str, payload: bytes) -> str:
        """Take a file or a plugin: '' once done, else what went wrong (one line)."""
        try:
            if kind == "file":
                self._file(name, payload)
            elif kind == "worker-plugin":
                self._plugin(name, payload)
            else:
                return f"unknown kind {kind!r}"
        except BaseException as exc:  # an import or a plugin's setup: the user's code
            logger.warning("could not take %s %r: %s: %s", kind, name, type(exc).__name__, exc)
            return explain(exc)
        return ""

    def _file(self, name: str, payload: bytes) -> None:
        base = os.path.basename(name)
        if not base or base != name or base.startswith("."):
            raise ValueError(f"{name!r} is not a plain file name")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="regrow-uploads-")
            sys.path.insert(0, self._dir.name)
        path = os.path.join(self._dir.name, base)
        with open(path, "wb") as f:
            f.write(payload)
        stem, ext = os.path.splitext(base)
        if ext in (".zip", ".egg"):
            if path not in sys.path:
                sys.path.insert(0, path)
            importlib.invalidate_caches()
        elif ext == ".py":
            importlib.invalidate_caches()
            if stem in sys.modules:
                importlib.reload(sys.modules[stem])
            else:
                importlib.import_module(stem)
        else:
            raise ValueError(f"{name!r}: upload_file takes a .py, .zip or .egg file")

    def _plugin(self, name: str, payload: bytes) -> None:
        import cloudpickle

        plugin = cloudpickle.loads(payload)
        old = self.plugins.pop(name, None)
        if old is not None:
            self._teardown(old)
        setup = getattr(plugin, "setup", None)
        if setup is not None:
            setup(worker=self.worker)
        self._moves = self.worker.state.moves
        self.plugins[name] = plugin

    def tell(self, state: WorkerState) -> None:
        """Each plugin's ``transition`` for the moves since the last call."""
        seen, self._moves = self._moves, state.moves
        for exc in tell_plugins(list(self.plugins.values()), state.log, state.moves, seen):
            logger.error("a worker plugin's transition raised", exc_info=exc)

    def _teardown(self, plugin: Any) -> None:
        teardown = getattr(plugin, "teardown", None)
        if teardown is not None:
            try:
                teardown(worker=self.worker)
            except Exception:
                logger.exception("a worker plugin's teardown raised")

    def close(self) -> None:
        for plugin in list(self.plugins.values()):
            self._teardown(plugin)
        self.plugins.clear()
        if self._dir is not None:
            if self._dir.name in sys.path:
                sys.path.remove(self._dir.name)
            self._dir.cleanup()
            self._dir = None
