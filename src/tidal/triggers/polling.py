"""The polling trigger: list ``<store>/incoming/`` and return what is new, with a saved cursor.

What was already queued is kept in the controller database as (key, mtime, size), so a restart
neither loses nor repeats an object; a file rewritten in place (new mtime or size) is new. The
cursor (highest modification time queued) is saved for ``tidal status``. Local files younger
than ``settle_s`` are left for the next poll: a copy in progress is not read half-written.
Names starting with ``.`` or ``_`` (an upload in progress, by convention) and Tidal's own puts
in progress are never queued; ``ignored_because`` says so, and ``tidal ingest`` refuses them.
"""

from __future__ import annotations

import json
import time

from tidal.state import State
from tidal.storage import ObjectInfo, Store, is_temp_name
from tidal.triggers.base import EventSource

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".tsv")


def ignored_because(name: str) -> str | None:
    """Why the trigger never queues an object named ``name``, or None when it does."""
    if name.startswith((".", "_")):
        return "names starting with '.' or '_' are uploads in progress"
    if is_temp_name(name):
        return "names ending in '.tmp-' and 8 hex digits are writes in progress"
    return None


class PollingSource(EventSource):
    def __init__(self, store: Store, state: State, prefix: str, *, settle_s: float = 1.0) -> None:
        self.store = store
        self.state = state
        self.prefix = prefix
        self.name = f"poll:{store.uri(prefix)}"
        self.settle_s = settle_s if store.protocol == "file" else 0.0

    def poll(self) -> list[ObjectInfo]:
        now = time.time()
        fresh = []
        for info in self.store.list(self.prefix):
            if ignored_because(info.name):
                continue
            if self.settle_s and now - info.mtime < self.settle_s:
                continue  # still being written, maybe
            if self.state.is_seen(self.name, info.key, info.mtime, info.size):
                continue
            fresh.append(info)
        return sorted(fresh, key=lambda i: (i.mtime, i.key))

    def ack(self, objects: list[ObjectInfo]) -> None:
        if not objects:
            return
        cursor = json.dumps({"mtime": max(o.mtime for o in objects), "key": objects[-1].key})
        self.state.mark_seen(self.name, [(o.key, o.mtime, o.size) for o in objects], cursor)
