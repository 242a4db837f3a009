"""The HMAC challenge-response functions."""

from __future__ import annotations

import hashlib
import hmac

from regrow.protocol import handshake


def test_nonces_are_random_32_bytes() -> None:
    nonces = {handshake.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(isinstance(n, bytes) and len(n) == 32 for n in nonces)


def test_macs_are_hmac_sha256_of_label_and_nonces() -> None:
    s, c = b"s" * 32, b"c" * 32
    mac = handshake.client_mac("tok", s, c)
    assert mac == hmac.new(b"tok", b"regrow-client" + s + c, hashlib.sha256).digest()
    assert (
        handshake.server_mac("tok", s, c)
        == hmac.new(b"tok", b"regrow-server" + c + s, hashlib.sha256).digest()
    )


def test_client_and_server_macs_differ_so_replies_cannot_be_reflected() -> None:
    s, c = handshake.new_nonce(), handshake.new_nonce()
    assert handshake.client_mac("t", s, c) != handshake.server_mac("t", s, c)
    assert handshake.client_mac("t", s, c) != handshake.server_mac("t", c, s)
    assert handshake.client_mac("t", s, c) != handshake.client_mac("t", c, s)


def test_mac_depends_on_token_and_both_nonces() -> None:
    s, c = handshake.new_nonce(), handshake.new_nonce()
    base = handshake.client_mac("token", s, c)
    assert handshake.client_mac("token2", s, c) != base
    assert handshake.client_mac("token", handshake.new_nonce(), c) != base
    assert handshake.client_mac("token", s, handshake.new_nonce()) != base
    assert handshake.client_mac(None, s, c) == handshake.client_mac("", s, c)
    assert handshake.client_mac(None, s, c) != base


def test_verify() -> None:
    s, c = handshake.new_nonce(), handshake.new_nonce()
    mac = handshake.client_mac("t", s, c)
    assert handshake.verify(mac, bytes(mac))
    assert not handshake.verify(mac, handshake.client_mac("u", s, c))
    assert not handshake.verify(mac, mac[:-1])
    assert not handshake.verify(mac, None)
    assert not handshake.verify(mac, mac.hex())
    assert not handshake.verify(mac, bytearray(mac))  # only bytes, as msgpack delivers them
    assert not handshake.verify(mac, list(mac))
