"""The executor interface: where a training job runs.

A job follows SageMaker's training-container contract, so one spec fits every backend:
the command runs in ``code/`` (a copy of ``code_dir`` when given);
channels (name → object URIs) appear as folders named by ``SM_CHANNEL_<NAME>``; the model is
written to ``SM_MODEL_DIR``; hyperparameters arrive as ``SM_HPS`` (JSON) and as
``--name value`` arguments; checkpoints go to a folder synced with ``checkpoint_uri``.

Contract:
    submit(spec) -> JobHandle      start the job; returns at once
    logs(handle) -> Iterator[str]  log lines as they come, ending when the job ends
    poll(handle) -> JobStatus      current status, without blocking
    cancel(handle)                 ask the job to stop (SIGTERM first: it may checkpoint)
    collect(handle) -> JobResult   wait for the end; on success the model folder has been
                                   uploaded to ``spec.output_uri``

Exit codes of the job: 0 success; 75 (tidal.errors.EXIT_RETRY) retryable, e.g. interrupted
after a checkpoint; anything else a failure whose last log lines explain it.

Detached backends (``detached = True``: a SageMaker training job) run without the process
that submitted them, so a run need not wait for them in memory (a Lambda must not):
    handle_doc(handle) -> dict     JSON that names the job, kept in the run's state
    attach(spec, doc) -> JobHandle the handle again, in another process, from that JSON
    describe(handle) -> JobInfo    status plus the backend's own detail (SageMaker's
                                   SecondaryStatus, FailureReason, billable seconds)
A run parks (``state.park``) while its job is pending or running, and is woken by the job's
state-change event or a reconciliation tick; then ``collect`` returns at once.

Backends are named in ``EXECUTORS`` (``tidal.training.executors``) and built on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped in a resumable way (retry exit code)


@dataclass
class JobSpec:
    name: str
    command: list[str]
    channels: dict[str, list[str]]
    hyperparameters: dict[str, Any]
    output_uri: str
    checkpoint_uri: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: int = 3600
    cpus: int | None = None
    gpus: int = 0
    code_dir: str | None = None  # local folder copied to the job's code/ folder (its cwd)


@dataclass
class JobHandle:
    id: str
    spec: JobSpec
    backend_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobInfo:
    status: JobStatus
    detail: str | None = None  # the backend's own word for where the job is (SecondaryStatus)
    failure_reason: str | None = None
    billable_s: float | None = None  # what was paid for (spot: less than training_s)
    training_s: float | None = None


@dataclass
class JobResult:
    status: JobStatus
    exit_code: int | None
    seconds: float
    output_uri: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)


class Executor(ABC):
    name: str
    detached: bool = False  # True: the job outlives this process (see the module docstring)

    @abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle: ...

    @abstractmethod
    def logs(self, handle: JobHandle) -> Iterator[str]: ...

    @abstractmethod
    def poll(self, handle: JobHandle) -> JobStatus: ...

    @abstractmethod
    def cancel(self, handle: JobHandle) -> None: ...

    @abstractmethod
    def collect(self, handle: JobHandle) -> JobResult: ...

    def handle_doc(self, handle: JobHandle) -> dict[str, Any]:
        """JSON naming the job, from which ``attach`` rebuilds its handle."""
        return {"id": handle.id}

    def attach(self, spec: JobSpec, doc: dict[str, Any]) -> JobHandle:
        raise NotImplementedError(f"the {self.name} executor's jobs end with their process")

    def describe(self, handle: JobHandle) -> JobInfo:
        return JobInfo(self.poll(handle))
