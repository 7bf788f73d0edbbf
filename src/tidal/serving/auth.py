"""API keys: the endpoint stores only their sha256, and compares in constant time.

A key is ``tidal_`` followed by 32 URL-safe random characters (192 bits), so a plain sha256 is
enough: there is nothing to brute-force that a slow password hash would protect. Clients send
``Authorization: Bearer <key>``; ``serving.api_keys`` in tidal.yaml lists the hashes
(``sha256:<hex>``; a bare hex digest is accepted too). Keys are never logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "tidal_"
SCHEME = "sha256:"


def hash_key(key: str) -> str:
    """The form of ``key`` that config and logs may hold: ``sha256:<hex>``."""
    return SCHEME + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its hash: show the key once, store only the hash."""
    key = PREFIX + secrets.token_urlsafe(24)  # 24 bytes → 32 characters
    return key, hash_key(key)


def check(authorization_header: str | None, hashes: list[str]) -> bool:
    """True when the header carries ``Bearer <key>`` for a key whose hash is in ``hashes``."""
    if not authorization_header or not hashes:
        return False
    scheme, _, key = authorization_header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return False
    given = hash_key(key).encode("ascii")
    matched = False
    for stored in hashes:
        expected = stored.strip().lower()
        if not expected.startswith(SCHEME):
            expected = SCHEME + expected
        # every stored hash is compared, so the time taken does not tell which one matched
        matched |= hmac.compare_digest(given, expected.encode("ascii", "replace"))
    return matched
