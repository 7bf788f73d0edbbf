"""Alerts: what a person must hear about (a rollout rolled back, later drift and quality).

Every alert is a line in the log (WARNING, logger ``tidal.alerts``) and an event in the
controller database (``tidal status`` lists them) with a stable id a person can quote. The
monitoring issue adds webhook and Slack sinks behind this same function.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidal.workspace import Workspace

log = logging.getLogger("tidal.alerts")


def send_alert(
    ws: Workspace, kind: str, message: str, *, data: dict[str, Any] | None = None
) -> str:
    """Send an alert through every sink; returns its id."""
    alert_id = "alert_" + uuid.uuid4().hex[:12]
    log.warning("%s [%s]: %s", kind, alert_id, message)
    ws.state.event(
        "alert",
        message,
        model=ws.model_name,
        data={"alert_id": alert_id, "kind": kind, **(data or {})},
    )
    return alert_id
