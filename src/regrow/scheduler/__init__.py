"""The scheduler process: its asyncio shell around ``core.scheduler_state``, and the journal."""

from regrow.scheduler.shell import Scheduler

__all__ = ["Scheduler"]
