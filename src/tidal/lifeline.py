"""A child process's tie to its parent: when the parent dies, even by ``kill -9``, the child
goes too, instead of running on as an orphan until the next start cleans up after it.

On Linux the kernel does it: ``prctl(PR_SET_PDEATHSIG, sig)`` asks for ``sig`` when the parent
dies. The catch: "parent" is the *thread* that forked the child, so the signal also comes when
that thread exits while the process lives on (a thread pool's worker, say). Two forms:

- ``follow_parent(pid)``, called by a child Tidal wrote (the worker launcher) at its start: the
  signal is SIGUSR2, and its handler exits only when ``getppid()`` is no longer ``pid``, that is
  when the parent *process* died; a thread's exit is ignored.
- ``job_preexec()``, a ``preexec_fn`` for a command Tidal did not write (a training job): the
  signal is SIGKILL, set only when forking from the main thread, which lives as long as the
  process. Elsewhere it returns None and the next start's orphan check is the only cleanup.

Elsewhere than Linux both do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

PR_SET_PDEATHSIG = 1
PARENT_ENV = "TIDAL_PARENT_PID"


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def follow_parent(parent: int) -> bool:
    """Exit when process ``parent`` dies; True when armed. Call early in the child's main."""
    prctl = _prctl()
    if prctl is None:
        return False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        if os.getppid() != parent:
            os._exit(0)  # the parent process died; its sockets closed, nothing to flush

    signal.signal(signal.SIGUSR2, on_signal)
    if prctl(PR_SET_PDEATHSIG, int(signal.SIGUSR2), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(0)
    return True


def job_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies, or None
    (not Linux, or not on the main thread: see the module's docstring)."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: no imports, no allocation
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
