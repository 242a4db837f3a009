"""Mutual HMAC challenge-response on the cluster token, sans-IO.

Before a single byte is unpickled on either side, each side proves it knows the
token without sending it:

    server -> hello   {nonce_s}
    client -> auth    {nonce_c, mac = HMAC(token, "client" | nonce_s | nonce_c)}
    server -> welcome {mac = HMAC(token, "server" | nonce_c | nonce_s)}   or  denied {reason}

A cluster without a token uses the empty key: the exchange still runs, so every
connection follows the same path; such a server only accepts loopback peers.
"""

from __future__ import annotations

import hashlib
import hmac
import os

PROTOCOL_VERSION = 1


def new_nonce() -> bytes:
    return os.urandom(32)


def _mac(token: str | None, label: bytes, a: bytes, b: bytes) -> bytes:
    key = (token or "").encode()
    return hmac.new(key, label + a + b, hashlib.sha256).digest()


def client_mac(token: str | None, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return _mac(token, b"regrow-client", server_nonce, client_nonce)


def server_mac(token: str | None, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return _mac(token, b"regrow-server", client_nonce, server_nonce)


def verify(expected: bytes, given: object) -> bool:
    return isinstance(given, bytes) and hmac.compare_digest(expected, given)
