"""Running the endpoint's app on uvicorn: in the foreground, or in a thread beside other work.

``serve`` is what ``tidal serve`` blocks in; Ctrl-C (or SIGTERM) finishes in-flight requests and
returns. ``BackgroundServer`` runs the same server in a thread for ``tidal up``, the demo and
tests; port 0 picks a free port, and ``url`` says which.

Both bind the socket themselves, to the given host only (127.0.0.1 unless told otherwise), so a
port in use is reported as such before anything else starts.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from tidal.errors import TidalError, UsageError

GRACEFUL_SHUTDOWN_S = 5


def serve(app: ASGIApp, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve ``app`` on host:port until Ctrl-C or SIGTERM."""
    sock = _bind(host, port)
    server = uvicorn.Server(_config(app, log_level, quiet=False))
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
    ) -> None:
        self.app = app
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
        server = self._server = uvicorn.Server(_config(self.app, self.log_level, quiet=True))
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


def _config(app: ASGIApp, log_level: str, *, quiet: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
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
