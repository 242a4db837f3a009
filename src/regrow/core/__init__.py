"""The pure core: state machines that take events and return commands.

Nothing in this package does IO, reads a clock, starts threads or uses asyncio;
a test checks the imports. Time arrives inside events as ``now``.
"""
