"""Event sources: how Tidal learns that an object landed.

Contract: ``poll()`` returns objects not returned before (by this source, across restarts),
oldest first; it never returns an object that is still being written. Push sources (an S3
event webhook, SQS) are wake-ups: the polling cursor stays the truth, because push events can
be lost while the receiver is down.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from tidal.storage import ObjectInfo


class EventSource(ABC):
    name: str

    @abstractmethod
    def poll(self) -> list[ObjectInfo]: ...

    @abstractmethod
    def ack(self, objects: list[ObjectInfo]) -> None:
        """Record ``objects`` as handled (queued), so they are never returned again."""
