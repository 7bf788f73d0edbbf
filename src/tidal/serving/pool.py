"""Worker pools: one per served model variant, scaled from zero to ``max_workers`` and back.

A ``Pool`` lives on the gateway's event loop. ``await pool.predict(rows)`` queues the request;
the dispatcher sends queued requests to an idle worker as one batch (up to ``max_batch_size``
rows) and splits the answer back. Under load (another batch already at a worker) an idle
worker waits up to ``max_batch_delay_ms`` for its batch to fill; a lone request never waits.

Scaling:
- zero → one: a request that finds no worker is held while one starts (the activator), then
  answered; the start is timed as a cold start.
- one → more: while requests queue and no worker is idle, one more worker starts (one start
  at a time), up to ``max_workers``.
- down: a worker idle ``worker_idle_s`` exits while another remains; after ``idle_timeout_s``
  without requests the last one exits too and the model's memory is freed.

Failures:
- the model raises: that request gets the error (the worker batched it alone on retry, see
  ``launcher.run_batch``); the worker stays up.
- a worker dies (kill -9, out of memory): the requests of its batch are queued again at the
  front, once; a second death fails them. Other requests never notice.
- a worker cannot start (bad files, ``memory_mb`` too small): queued requests fail with the
  reason; the next start is tried after a growing pause, and requests in between fail at once.
- a worker whose private memory grows past ``memory_mb`` is killed and replaced.

``Launcher`` is the gateway's handle on the launcher process (``tidal.serving.launcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidal.errors import InvalidInput, TidalError
from tidal.lifeline import PARENT_ENV
from tidal.serving import protocol
from tidal.serving.launcher import private_mb

if TYPE_CHECKING:
    from pathlib import Path

    from tidal.artifact import Manifest
    from tidal.config import ServingConfig
    from tidal.serving.metrics import ServingMetrics

log = logging.getLogger("tidal.serving")

Row = dict[str, Any]
START_RETRY_FIRST_S = 1.0
START_RETRY_MAX_S = 30.0
JANITOR_S = 0.25
MEMORY_CHECK_S = 2.0
LAUNCHER_START_S = 120.0


class ModelRaised(Exception):
    """The model raised on a request; ``trace`` is its traceback in the worker."""

    def __init__(self, type_name: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.trace = trace


class WorkerFailed(Exception):
    """No worker could answer: it could not start, or it died twice with this request."""

    def __init__(self, message: str, *, status: int = 503, code: str = "worker_unavailable"):
        super().__init__(message)
        self.status = status
        self.code = code


# -- the launcher -----------------------------------------------------------------------------


class Launcher:
    """Starts and talks to the launcher process; ``spawn`` forks a worker from it (blocking).

    ``start`` returns at once; a thread waits for the launcher's imports, and ``ready`` turns
    true when they are done (``/ping`` says 503 until then: a request would wait for them).
    ``retire`` stops an idle launcher to free its memory (``serving.launcher_idle_s``); the
    next ``spawn`` or ``preload`` starts it again and waits for its imports."""

    def __init__(self, flavors: list[str] | None = None) -> None:
        self.flavors = list(flavors or [])
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._ready = False
        self._stopped = False
        self.ready = False  # the first launcher finished importing; stays true after a retire
        self.error: str | None = None  # why the first launcher is not ready, when it failed
        self.last_spawn = 0.0
        self.retired = 0  # launchers stopped for being idle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the launcher process; it imports in the background (``ready`` says when done)."""
        with self._lock:
            self._stopped = False
            self._start_locked()
        threading.Thread(target=self._await_ready, name="tidal-launcher-ready", daemon=True).start()

    def _start_locked(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env[PARENT_ENV] = str(os.getpid())
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tidal.serving.launcher",
                    str(theirs.fileno()),
                    *self.flavors,
                ],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._control = ours
        self._ready = False

    def _await_ready(self) -> None:
        pause = START_RETRY_FIRST_S
        while not self.ready:
            with self._lock:
                if self._stopped:
                    return
                try:
                    self._ready_control()
                except (WorkerFailed, OSError) as exc:
                    if self._stopped:
                        return  # stop() woke us: not a failure
                    self.error = f"the worker launcher failed while importing its libraries: {exc}"
                    log.error("%s; starting it again in %.0f s", self.error, pause)
                else:
                    self.ready, self.error = True, None
                    return
            time.sleep(pause)
            pause = min(pause * 2, START_RETRY_MAX_S)

    def preload(self, flavor: str) -> None:
        """Have the launcher import ``flavor``'s libraries now (a new flavor was deployed), so
        the first request does not wait for the import. Blocking; call off the event loop."""
        if flavor in self.flavors:
            return
        with self._lock:
            control = self._ready_control()
            control.settimeout(LAUNCHER_START_S)
            control.send(protocol.dumps({"op": "preload", "flavor": flavor}))
            control.recv(1 << 16)
            self.flavors.append(flavor)

    def _ready_control(self) -> socket.socket:
        """The control socket of a running launcher that has finished importing (lock held)."""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                log.warning(
                    "the worker launcher exited (code %s); restarting it", self._proc.returncode
                )
                self._close_control()
            self._start_locked()
        control = self._control
        assert control is not None
        if not self._ready:
            control.settimeout(LAUNCHER_START_S)
            hello = control.recv(1 << 16)
            if not hello:
                raise WorkerFailed("the worker launcher exited while importing its libraries")
            self._ready = True
            self.ready = True
        return control

    def spawn(self, spec: dict[str, Any]) -> tuple[int, socket.socket]:
        """Fork a worker for ``spec``; its pid and the gateway's end of its socket."""
        with self._lock:
            self.last_spawn = time.monotonic()
            control = self._ready_control()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                control.settimeout(30)
                socket.send_fds(
                    control, [protocol.dumps({"op": "spawn", "spec": spec})], [theirs.fileno()]
                )
                reply = control.recv(1 << 16)
            except OSError as exc:
                ours.close()
                raise WorkerFailed(f"the worker launcher did not answer: {exc}") from exc
            finally:
                theirs.close()
            if not reply:
                ours.close()
                raise WorkerFailed("the worker launcher exited while starting a worker")
            answer = protocol.loads(reply)
            if "pid" not in answer:
                ours.close()
                raise WorkerFailed(f"the worker launcher refused: {answer.get('error')}")
            return int(answer["pid"]), ours

    def retire(self, idle_since: float) -> bool:
        """Stop the launcher if no worker was spawned since ``idle_since`` (monotonic time);
        True when it stopped. Running workers are not affected (they talk to the gateway)."""
        with self._lock:
            if self.last_spawn > idle_since or not self.running:
                return False
            self._close_control()
            proc, self._proc = self._proc, None
            self.retired += 1
        _wait_or_kill(proc)
        return True

    def stop(self) -> None:
        self._stopped = True
        control = self._control
        if control is not None:  # wakes a thread waiting (lock held) for the launcher's hello
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._close_control()
            proc, self._proc = self._proc, None
        _wait_or_kill(proc)

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None


def _wait_or_kill(proc: subprocess.Popen[bytes] | None) -> None:
    """Wait for a launcher whose control channel was closed to exit (it does at once)."""
    if proc is None:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# -- workers and pools ------------------------------------------------------------------------


@dataclass
class Item:
    rows: list[Row]
    future: asyncio.Future[list[dict[str, Any]]]
    enqueued: float
    attempts: int = 0


@dataclass
class Worker:
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started_at: float
    last_used: float
    batch: list[Item] | None = None
    batch_id: int = 0
    closing: bool = False
    killed_for: str = "crash"
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def idle(self) -> bool:
        return self.batch is None and not self.closing


@dataclass(frozen=True)
class PoolKey:
    model: str
    version: str
    variant: str


class Pool:
    """The workers of one model variant; use from the gateway's event loop."""

    def __init__(
        self,
        key: PoolKey,
        model_dir: Path,
        manifest: Manifest,
        manifest_sha256: str | None,
        trusted: dict[str, list[int]],
        launcher: Launcher,
        config: ServingConfig,
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.key = key
        self.manifest = manifest
        self.spec = {
            "model_dir": str(model_dir),
            "manifest_sha256": manifest_sha256,
            "trusted": trusted,
            "flavor": manifest.flavor,
            "memory_mb": config.memory_mb,
            "threads": config.worker_threads,
            "name": f"tidal-w-{key.variant}"[:15],
        }
        self.launcher = launcher
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.workers: list[Worker] = []
        self.queue: deque[Item] = deque()
        self.queued_rows = 0
        self.at_workers = 0  # items sent to a worker and not answered yet
        self.in_flight = 0
        self.starting = 0
        self.last_request = clock()
        self.cold_starts = 0
        self.last_cold_start_s: float | None = None
        self.start_error: str | None = None
        self._retry_at = 0.0
        self._retry_s = START_RETRY_FIRST_S
        self._next_batch_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._next_memory_check = 0.0
        self._loop = loop
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- requests -------------------------------------------------------------------------------

    async def predict(self, rows: list[Row]) -> list[dict[str, Any]]:
        if self._closed:
            raise WorkerFailed("this model version was replaced; send the request again")
        loop = self._bind()
        now = self.clock()
        self.last_request = now
        if not self.workers and not self.starting and now < self._retry_at:
            raise WorkerFailed(f"the model could not start: {self.start_error}")
        item = Item(rows, loop.create_future(), now)
        self.queue.append(item)
        self.queued_rows += len(rows)
        self.in_flight += 1
        try:
            self._dispatch()
            return await item.future
        finally:
            self.in_flight -= 1
            self.last_request = self.clock()  # idle counts from the last answer, not the ask

    def _bind(self) -> asyncio.AbstractEventLoop:
        if self._janitor is None:
            self._loop = self._loop or asyncio.get_running_loop()
            self._janitor = self._loop.create_task(self._janitor_loop())
        assert self._loop is not None
        return self._loop

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        max_rows = self.config.max_batch_size
        delay = self.config.max_batch_delay_ms / 1000
        while self.queue:
            worker = next((w for w in self.workers if w.idle), None)
            if worker is None:
                self._scale_up()
                return
            if delay and self.at_workers and self.queued_rows < max_rows:
                # under load: let the batch fill a little, bounded by the oldest request's wait
                due = self.queue[0].enqueued + delay
                if due > self.clock():
                    assert self._loop is not None
                    self._timer = self._loop.call_later(due - self.clock(), self._dispatch)
                    return
            self._send(worker, self._take(max_rows))

    def _take(self, max_rows: int) -> list[Item]:
        items = [self.queue.popleft()]
        rows = len(items[0].rows)
        while self.queue and rows + len(self.queue[0].rows) <= max_rows:
            item = self.queue.popleft()
            items.append(item)
            rows += len(item.rows)
        self.queued_rows -= rows
        return items

    def _send(self, worker: Worker, items: list[Item]) -> None:
        self._next_batch_id += 1
        rows: list[Row] = []
        sizes = []
        for item in items:
            rows.extend(item.rows)
            sizes.append(len(item.rows))
        worker.batch, worker.batch_id = items, self._next_batch_id
        self.at_workers += len(items)
        worker.writer.write(protocol.frame({"id": worker.batch_id, "rows": rows, "sizes": sizes}))
        if self.metrics is not None:
            self.metrics.batch(*self._labels, len(rows))

    @property
    def _labels(self) -> tuple[str, str, str]:
        return (self.key.model, self.key.version, self.key.variant)

    # -- worker lifecycle -----------------------------------------------------------------------

    def _scale_up(self) -> None:
        if self._closed or self.starting or len(self.workers) >= self.config.max_workers:
            return
        if not self.workers and self.clock() < self._retry_at:
            self._fail_queue(WorkerFailed(f"the model could not start: {self.start_error}"))
            return
        self.starting += 1
        self._spawn_task(self._start_worker())

    def _spawn_task(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_worker(self) -> Worker | None:
        """Start one worker (``starting`` already counts it); None when it could not start."""
        started = self.clock()
        cold = not self.workers
        pid = None
        try:
            pid, sock = await asyncio.to_thread(self.launcher.spawn, self.spec)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            hello = await asyncio.wait_for(_read(reader), self.config.start_timeout_s)
            if hello is None or "failed" in hello:
                why = hello["failed"] if hello else "the worker exited while loading the model"
                writer.close()
                raise WorkerFailed(why)
        except Exception as exc:
            self.starting -= 1
            if pid is not None:
                _kill(pid)
            self._start_failed(exc, pid)
            return None
        self.starting -= 1
        now = self.clock()
        worker = Worker(int(hello["pid"]), reader, writer, now, now)
        if self._closed:
            writer.close()
            return None
        self.workers.append(worker)
        self.start_error, self._retry_s, self._retry_at = None, START_RETRY_FIRST_S, 0.0
        worker.task = self._loop.create_task(self._read_loop(worker)) if self._loop else None
        seconds = now - started
        log.info(
            "%s worker %d started for %s version %s (%s) in %.3f s (model load %.3f s, %.0f MB)",
            "cold" if cold else "extra",
            worker.pid,
            self.key.model,
            self.key.version,
            self.key.variant,
            seconds,
            hello.get("load_s", 0.0),
            hello.get("memory_mb", 0.0),
        )
        if self.metrics is not None:
            if cold:
                self.metrics.cold_start(*self._labels, seconds)
            self.metrics.workers(*self._labels, len(self.workers))
        if cold:
            self.cold_starts += 1
            self.last_cold_start_s = seconds
        self._dispatch()
        return worker

    def _start_failed(self, exc: Exception, pid: int | None) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            message = (
                f"the worker did not load the model within serving.start_timeout_s = "
                f"{self.config.start_timeout_s:g} s"
            )
        else:
            message = str(exc) or type(exc).__name__
        log.error(
            "a worker for %s version %s (%s) could not start: %s",
            self.key.model,
            self.key.version,
            self.key.variant,
            message,
        )
        self.start_error = message
        self._retry_at = self.clock() + self._retry_s
        self._retry_s = min(self._retry_s * 2, START_RETRY_MAX_S)
        if not self.workers:
            self._fail_queue(WorkerFailed(f"the model could not start: {message}"))

    def _fail_queue(self, exc: Exception) -> None:
        while self.queue:
            item = self.queue.popleft()
            if not item.future.done():
                item.future.set_exception(exc)
        self.queued_rows = 0

    async def _read_loop(self, worker: Worker) -> None:
        try:
            while True:
                message = await _read(worker.reader)
                if message is None:
                    break
                self._answered(worker, message)
        except (ConnectionError, asyncio.IncompleteReadError, protocol.FrameError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from worker %d failed", worker.pid)
        self._worker_gone(worker)

    def _answered(self, worker: Worker, message: dict[str, Any]) -> None:
        items = worker.batch
        if items is None or message.get("id") != worker.batch_id:
            log.error("worker %d answered batch %s it was not sent", worker.pid, message.get("id"))
            return
        worker.batch = None
        worker.last_used = self.clock()
        self.at_workers -= len(items)
        for item, result in zip(items, message["results"], strict=True):
            if item.future.done():
                continue
            if "p" in result:
                item.future.set_result(result["p"])
            else:
                item.future.set_exception(worker_error(result["e"]))
        if not worker.closing:
            self._dispatch()

    def _worker_gone(self, worker: Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        worker.writer.close()
        items, worker.batch = worker.batch, None
        if items:
            self.at_workers -= len(items)
        if not worker.closing:
            log.error(
                "worker %d of %s version %s (%s) died%s",
                worker.pid,
                self.key.model,
                self.key.version,
                self.key.variant,
                f" with {len(items)} requests in flight; retrying them once" if items else "",
            )
            if self.metrics is not None:
                self.metrics.worker_restart(*self._labels, worker.killed_for)
        if self.metrics is not None:
            self.metrics.workers(*self._labels, len(self.workers))
        for item in reversed(items or []):
            if item.future.done():
                continue
            item.attempts += 1
            if item.attempts > 1 or self._closed:
                item.future.set_exception(
                    WorkerFailed(
                        "the worker serving this request died twice while answering it; "
                        "the endpoint's log has the details",
                        status=500,
                        code="worker_crashed",
                    )
                )
            else:
                self.queue.appendleft(item)
                self.queued_rows += len(item.rows)
        if self.queue:
            self._dispatch()

    def _stop_worker(self, worker: Worker) -> None:
        worker.closing = True
        if worker in self.workers:
            self.workers.remove(worker)
        worker.writer.close()  # the worker reads EOF and exits
        if self.metrics is not None:
            self.metrics.workers(*self._labels, len(self.workers))

    async def _janitor_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(JANITOR_S, self.config.idle_timeout_s / 4))
            try:
                self._tidy()
            except Exception:
                log.exception("tidying the workers of %s failed", self.key)

    def _tidy(self) -> None:
        now = self.clock()
        if (
            not self.in_flight
            and self.workers
            and now - self.last_request >= (self.config.idle_timeout_s)
        ):
            log.info(
                "%s version %s (%s): no request for %.0f s, scaling to zero",
                self.key.model,
                self.key.version,
                self.key.variant,
                now - self.last_request,
            )
            for worker in list(self.workers):
                self._stop_worker(worker)
            return
        idle = [
            w for w in self.workers if w.idle and now - w.last_used >= self.config.worker_idle_s
        ]
        for worker in idle[: max(0, len(self.workers) - 1)]:
            self._stop_worker(worker)
        if now >= self._next_memory_check and self.workers:
            self._next_memory_check = now + MEMORY_CHECK_S
            for worker in list(self.workers):
                used = private_mb(worker.pid)
                if used > self.config.memory_mb:
                    log.error(
                        "worker %d uses %.0f MB, over serving.memory_mb = %d MB; replacing it",
                        worker.pid,
                        used,
                        self.config.memory_mb,
                    )
                    worker.killed_for = "memory"
                    _kill(worker.pid)

    # -- state and shutdown ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "variant": self.key.variant,
            "version": self.key.version,
            "workers": [
                {"pid": w.pid, "busy": not w.idle, "idle_s": round(now - w.last_used, 3)}
                for w in self.workers
            ],
            "starting": self.starting,
            "queued": len(self.queue),
            "in_flight": self.in_flight,
            "cold_starts": self.cold_starts,
            "last_cold_start_s": self.last_cold_start_s,
            "start_error": self.start_error,
            "idle_s": round(now - self.last_request, 3),
        }

    async def warm(self, timeout_s: float | None = None) -> None:
        """Start a worker now if none runs (blue/green before a switch); raise if it cannot."""
        self._bind()
        if self.workers:
            return
        self.starting += 1
        worker = await asyncio.wait_for(
            self._start_worker(), timeout_s or self.config.start_timeout_s + 5
        )
        if worker is None:
            raise WorkerFailed(f"the model could not start: {self.start_error}")

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let those in flight finish (up to ``grace_s``), stop workers."""
        self._closed = True
        deadline = self.clock() + grace_s
        while self.in_flight and self.clock() < deadline:
            await asyncio.sleep(0.01)
        self._fail_queue(WorkerFailed("this model version was replaced; send the request again"))
        for worker in list(self.workers):
            self._stop_worker(worker)
        if self._timer is not None:
            self._timer.cancel()
        tasks = [t for t in (self._janitor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def has_workers(self) -> bool:
        return bool(self.workers or self.starting)

    def warm_blocking(self, timeout_s: float | None = None) -> None:
        """``warm`` from another thread (the refresher, before a swap)."""
        if self._loop is None:
            raise WorkerFailed("the pool has no event loop to start a worker on")
        timeout = timeout_s or self.config.start_timeout_s + 10
        asyncio.run_coroutine_threadsafe(self.warm(timeout), self._loop).result(timeout)

    def retire(self) -> None:
        """``close`` from any thread (a swap in the refresher thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._closed = True
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            asyncio.run_coroutine_threadsafe(self.close(), loop)


async def _read(reader: asyncio.StreamReader) -> Any | None:
    try:
        head = await reader.readexactly(protocol.HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    (size,) = protocol.HEADER.unpack(head)
    return protocol.loads(await reader.readexactly(size))


def worker_error(error: dict[str, Any]) -> Exception:
    """The exception a worker's error result stands for."""
    if error.get("kind") == "invalid":
        exc = InvalidInput(error.get("message", "the rows do not fit the model"))
        exc.code = error.get("code", InvalidInput.code)
        return exc
    return ModelRaised(
        error.get("type", "Exception"), error.get("message", ""), error.get("trace", "")
    )


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


__all__ = ["Launcher", "ModelRaised", "Pool", "PoolKey", "TidalError", "WorkerFailed"]
