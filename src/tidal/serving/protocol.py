"""Messages between the gateway, the launcher and the workers: length-prefixed JSON frames.

A frame is a 4-byte big-endian length followed by that many bytes of JSON (orjson when it is
installed). JSON, not pickle: a worker never unpickles what it is sent and the gateway never
unpickles what a worker answers.

Gateway → worker    {"id": n, "rows": [...], "sizes": [3, 1, ...]}   one batch: the rows of
                    several requests end to end, ``sizes`` saying how many rows each has
Worker → gateway    {"ready": true, "pid", "load_s", "memory_mb"} once, or {"failed": "why"}
                    {"id": n, "results": [{"p": [prediction, ...]} | {"e": error}, ...]}
                    one result per request of the batch, in order; an error is
                    {"kind": "invalid" | "raised", "code", "message", "trace"}
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=_plain).encode()

    loads = json.loads


def _plain(value: Any) -> Any:  # pragma: no cover - the fallback without orjson
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot send {type(value).__name__} to another process")


def frame(obj: Any) -> bytes:
    data = dumps(obj)
    return HEADER.pack(len(data)) + data


class FrameError(Exception):
    """The other side sent something that is not a frame, or hung up mid-frame."""


def send(sock: socket.socket, obj: Any) -> None:
    sock.sendall(frame(obj))


def recv(sock: socket.socket) -> Any | None:
    """The next message, or None when the other side closed the connection cleanly."""
    head = _exactly(sock, HEADER.size, eof_ok=True)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} bytes is over the {MAX_FRAME} byte limit")
    body = _exactly(sock, size, eof_ok=False)
    assert body is not None
    return loads(body)


def _exactly(sock: socket.socket, size: int, *, eof_ok: bool) -> bytes | None:
    chunks = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if eof_ok and left == size:
                return None
            raise FrameError(f"connection closed with {left} of {size} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
