"""The wire protocol: framing (sans-IO), messages, serialization, handshake, and
the one asyncio module (comm) that moves packets over TCP."""
