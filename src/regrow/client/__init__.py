"""The client side: Client, Future, wait, as_completed, the executor."""
