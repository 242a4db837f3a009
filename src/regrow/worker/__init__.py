"""The worker process: its shell around ``core.worker_state``, the nanny that watches it,
and the data store that spills to disk."""

from regrow.worker.shell import TaskInterrupted, Worker, get_worker

__all__ = ["TaskInterrupted", "Worker", "get_worker"]
