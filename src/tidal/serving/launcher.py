"""The launcher: a model-free process that imports the model libraries once and forks workers.

Cold start is the product. Importing scikit-learn takes ~0.5 s and torch with transformers
~2 s, longer than the whole cold-start budget, so the gateway starts one launcher when it
starts; the launcher imports what the served flavors need (``Predictor.preload``) and then
waits. Each worker is a ``fork()`` of it: it starts with every library already imported and
pays only for loading its model. The launcher holds no model, runs no threads (forking a
threaded process is unsafe) and never touches torch's thread pools.

Control channel (a SOCK_SEQPACKET socketpair, so each message is one packet):
    gateway → launcher   {"op": "spawn", "spec": {...}} with the worker's socket as an fd
                         {"op": "preload", "flavor": "sklearn"} when a new flavor is deployed
    launcher → gateway   {"launcher": "ready", "pid"} once, then {"pid": n} per spawn and
                         {"preloaded": true|false} per preload
A worker exits when its socket closes; the launcher exits when the control channel closes.
Neither reacts to Ctrl-C: the gateway, which does, closes their sockets. Exited workers are
reaped by the kernel (SIGCHLD ignored). When the gateway's process dies, even by kill -9, the
launcher exits at once (a parent death signal, ``tidal.lifeline``), imports or not.

Worker spec: model_dir, manifest_sha256, trusted (file stamps the gateway hashed), memory_mb,
threads, name (shown as the process name).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tidal.lifeline import PARENT_ENV, follow_parent
from tidal.serving import protocol

log = logging.getLogger("tidal.serving.worker")
MB = 1024 * 1024


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    _name("tidal-launcher")
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit():
        follow_parent(int(parent))  # a kill -9 of the gateway does not leave us running
    control = socket.socket(fileno=int(sys.argv[1]))
    preloaded = [flavor for flavor in sys.argv[2:] if _preload(flavor)]
    control.send(protocol.dumps({"launcher": "ready", "pid": os.getpid(), "flavors": preloaded}))
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 4)
        except (ConnectionError, OSError):
            break
        if not message:
            break  # the gateway closed the channel: it is gone or stopping
        request = protocol.loads(message)
        if request.get("op") == "preload" and not fds:
            done = _preload(request.get("flavor", ""))
            control.send(protocol.dumps({"preloaded": done}))
            continue
        if request.get("op") != "spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            control.send(protocol.dumps({"error": f"unknown request {request!r}"}))
            continue
        spec = request["spec"]
        _preload(spec.get("flavor", ""))
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                control.close()
                code = _worker(fds[0], spec)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(fds[0])
        control.send(protocol.dumps({"pid": pid}))


def _preload(flavor: str) -> bool:
    """Import a flavor's predictor and its libraries; False (and quiet) when they are missing."""
    from tidal.artifact import FLAVORS, flavor_class

    if flavor not in FLAVORS:
        return False
    try:
        cls = flavor_class(flavor)
        for module in cls.preload:
            importlib.import_module(module)
    except ImportError:
        return False  # the worker reports the error when it loads its model
    return True


def _name(name: str) -> None:
    """Name the process (what ps -o comm, top and psutil's name() show)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


# -- the worker -------------------------------------------------------------------------------


def _worker(fd: int, spec: dict[str, Any]) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _name(spec.get("name", "tidal-worker"))
    sock = socket.socket(fileno=fd)
    started = time.perf_counter()
    memory_mb = int(spec["memory_mb"])
    try:
        predictor = _load(spec, memory_mb)
    except Exception as exc:
        protocol.send(sock, {"failed": _load_failure(exc, memory_mb)})
        return 1
    used = private_mb(os.getpid())
    if used > memory_mb:
        protocol.send(
            sock,
            {
                "failed": f"the model needs {used:.0f} MB in its worker, more than "
                f"serving.memory_mb = {memory_mb} MB; raise serving.memory_mb"
            },
        )
        return 1
    load_s = time.perf_counter() - started
    protocol.send(sock, {"ready": True, "pid": os.getpid(), "load_s": load_s, "memory_mb": used})
    while True:
        try:
            message = protocol.recv(sock)
        except (ConnectionError, protocol.FrameError):
            return 0
        if message is None:
            return 0  # the gateway closed our socket: scale-down or shutdown
        results = run_batch(predictor, message["rows"], message["sizes"])
        protocol.send(sock, {"id": message["id"], "results": results})


def _load(spec: dict[str, Any], memory_mb: int) -> Any:
    from tidal.artifact import load_predictor

    _limit_memory(memory_mb)
    threads = int(spec.get("threads", 1))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return load_predictor(Path(spec["model_dir"]), spec.get("manifest_sha256"), spec.get("trusted"))


def _limit_memory(memory_mb: int) -> None:
    """Cap the worker's address space at what it has now plus ``memory_mb``: an allocation past
    it fails with MemoryError instead of pushing the machine into swap."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    current = pages * resource.getpagesize()
    # thread stacks and allocator arenas reserve address space they never use: leave room
    limit = current + (memory_mb + 512) * MB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _load_failure(exc: Exception, memory_mb: int) -> str:
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return (
            f"the model did not fit in serving.memory_mb = {memory_mb} MB "
            f"({type(exc).__name__} while loading it); raise serving.memory_mb"
        )
    return str(exc) or type(exc).__name__


def run_batch(predictor: Any, rows: list[dict[str, Any]], sizes: list[int]) -> list[Any]:
    """One result per request: its predictions, or the error its rows caused.

    The whole batch goes to the model in one call; when that raises, each request is tried
    alone, so one bad request fails itself and not the requests batched with it."""
    try:
        predictions = _checked(predictor.predict(rows), len(rows))
    except Exception as exc:
        if len(sizes) == 1:
            return [_error(exc)]
    else:
        out, start = [], 0
        for size in sizes:
            out.append({"p": predictions[start : start + size]})
            start += size
        return out
    results, start = [], 0
    for size in sizes:
        part = rows[start : start + size]
        start += size
        try:
            results.append({"p": _checked(predictor.predict(part), size)})
        except Exception as exc:
            results.append(_error(exc))
    return results


def _checked(predictions: Any, count: int) -> list[Any]:
    if not isinstance(predictions, list) or len(predictions) != count:
        got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise BadAnswer(f"the model returned {got} predictions for {count} rows")
    return predictions


class BadAnswer(Exception):
    pass


def _error(exc: Exception) -> dict[str, Any]:
    from tidal.errors import InvalidInput

    if isinstance(exc, InvalidInput):
        return {"e": {"kind": "invalid", "code": exc.code, "message": str(exc)}}
    return {
        "e": {
            "kind": "raised",
            "type": type(exc).__name__,
            "message": str(exc)[:1000],
            "trace": traceback.format_exc(),
        }
    }


def private_mb(pid: int) -> float:
    """Memory the process does not share with its launcher (private pages), in MB; 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


if __name__ == "__main__":
    main()
