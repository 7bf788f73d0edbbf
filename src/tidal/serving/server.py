"""Running the endpoint's app on uvicorn: in the foreground, or in a thread beside other work.

``serve`` is what ``tidal serve`` blocks in; Ctrl-C (or SIGTERM) finishes in-flight requests and
returns. ``BackgroundServer`` runs the same server in a thread for ``tidal up``, the demo and
tests; port 0 picks a free port, and ``url`` says which.

Both bind the socket themselves, to the given host only (127.0.0.1 unless told otherwise), so a
port in use is reported as such before anything else starts.

A connection must send each request's headers within ``header_timeout_s`` (uvicorn has no such
limit; without one, clients trickling a byte a second hold their connections forever); a late
one is answered 408 and closed. The body's deadline is the gateway's (``body_timeout_s``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from tidal.errors import TidalError, UsageError

GRACEFUL_SHUTDOWN_S = 5
HEADER_TIMEOUT_S = 10.0
LATE_HEADERS = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 36\r\n\r\nrequest headers took too long; retry\n"
)


def serve(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> None:
    """Serve ``app`` on host:port until Ctrl-C or SIGTERM."""
    sock = _bind(host, port)
    server = uvicorn.Server(_config(app, log_level, quiet=False, header_timeout_s=header_timeout_s))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the captured Ctrl-C once it has shut down
        pass
    finally:
        sock.close()


class BackgroundServer:
    """uvicorn in a daemon thread; ``start()`` returns once it accepts connections."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        start_timeout_s: float = 30.0,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.header_timeout_s = header_timeout_s
        self.host = host
        self.port = port
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> BackgroundServer:
        if self.running:
            raise UsageError(f"the endpoint at {self.url} is already running")
        self._sock = _bind(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self._error = None
        config = _config(
            self.app, self.log_level, quiet=True, header_timeout_s=self.header_timeout_s
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, name=f"tidal-endpoint-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not server.started:
            if not self._thread.is_alive():
                self._close()
                cause = f": {self._error!r}" if self._error else ""
                raise TidalError(
                    f"the endpoint at {self.url} stopped while starting{cause}",
                    hint="the log above says why; the app's startup (model load) may have failed",
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TidalError(
                    f"the endpoint at {self.url} did not start within {self.start_timeout_s:g} s"
                )
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests (up to 5 s), run the app's shutdown."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
        self._close()

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit when the app's startup fails
            self._error = exc

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _config(
    app: ASGIApp, log_level: str, *, quiet: bool, header_timeout_s: float
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=_http_protocol(header_timeout_s),
        log_level=log_level,
        # in a thread, leave the host process's logging alone; in the foreground, uvicorn's own
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        access_log=log_level in ("debug", "trace"),
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every response waits ~40 ms for a delayed ACK (Nagle's algorithm)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another port with --port or serving.port, or stop what uses it",
        ) from exc
    return sock


def _http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11) with a deadline on each
    request's headers, from its first byte (or the connection's opening) to the blank line."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class HttpTools(_HeaderDeadline, HttpToolsProtocol):
            def on_message_begin(self) -> None:
                self._arm()
                super().on_message_begin()

            def on_headers_complete(self) -> None:
                self._disarm()
                super().on_headers_complete()

        HttpTools.header_timeout_s = header_timeout_s
        return HttpTools
    except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class H11(_HeaderDeadline, H11Protocol):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                    self._arm()  # part of a request's head is buffered
                else:
                    self._disarm()

        H11.header_timeout_s = header_timeout_s
        return H11


class _HeaderDeadline:
    """Closes a connection whose request headers are not complete ``header_timeout_s`` after
    they began (or after the connection opened, for one that sends nothing)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(LATE_HEADERS)
            self.transport.close()
