"""API keys: the endpoint stores only their sha256, and compares in constant time.

A key is ``tidal_`` followed by 32 URL-safe random characters (192 bits), so a plain sha256 is
enough: there is nothing to brute-force that a slow password hash would protect. Clients send
``Authorization: Bearer <key>``; ``serving.api_keys`` in tidal.yaml lists the hashes
(``sha256:<hex>``; a bare hex digest is accepted too). Keys are never logged or stored.

Keys have a scope: ``admin`` keys (``serving.api_keys``: admin routes, and prediction routes
when they need a key) and ``feedback`` keys (``serving.feedback_keys``: ``POST /feedback`` only).
A request is attributed to its key by ``key_id``, a prefix of the key's hash: enough to tell keys
apart in audit events and label provenance, nothing that helps to recover the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "tidal_"
SCHEME = "sha256:"
SCOPES = ("admin", "feedback")
KEY_ID_HEX = 12  # hex digits of the hash kept as a key's id (48 bits)


def hash_key(key: str) -> str:
    """The form of ``key`` that config and logs may hold: ``sha256:<hex>``."""
    return SCHEME + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its hash: show the key once, store only the hash."""
    key = PREFIX + secrets.token_urlsafe(24)  # 24 bytes → 32 characters
    return key, hash_key(key)


def key_id(digest: str) -> str:
    """The id of the key whose hash is ``digest``: ``sha256:`` and its first 12 hex digits."""
    value = digest.strip().lower().removeprefix(SCHEME)
    return SCHEME + value[:KEY_ID_HEX]


def check(authorization_header: str | None, hashes: list[str]) -> bool:
    """True when the header carries ``Bearer <key>`` for a key whose hash is in ``hashes``."""
    return match(authorization_header, hashes) is not None


def match(authorization_header: str | None, hashes: list[str]) -> str | None:
    """The ``key_id`` of the key the header carries (``Bearer <key>``) when its hash is in
    ``hashes``; None otherwise."""
    if not authorization_header or not hashes:
        return None
    scheme, _, key = authorization_header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    given = hash_key(key).encode("ascii")
    matched: str | None = None
    for stored in hashes:
        expected = stored.strip().lower()
        if not expected.startswith(SCHEME):
            expected = SCHEME + expected
        # every stored hash is compared, so the time taken does not tell which one matched
        if hmac.compare_digest(given, expected.encode("ascii", "replace")):
            matched = key_id(expected)
    return matched
