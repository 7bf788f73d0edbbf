"""``tidal monitor``: read the new captured traffic, compare it with each version's baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.cli import JSON_OPT, WS_OPT, _print_json, _workspace, app, out, reported


@app.command()
@reported
def monitor(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Drift of the served traffic against each version's training baseline (reads only the
    traffic captured since the last check)."""
    from tidal.monitoring.job import MonitorJob

    summary: dict[str, Any] = MonitorJob(_workspace(workspace)).run_once()
    if as_json:
        _print_json(summary)
        return
    out.print(
        f"{summary['model']}: {summary['records']} new records in {summary['objects']} "
        "captured files",
        highlight=False,
    )
    if not summary["versions"]:
        out.print("no traffic captured yet for a version (requests to the endpoint are)")
    for version, found in sorted(summary["versions"].items()):
        status = found["status"]
        line = f"  v{version}  {status}"
        if found.get("rows") is not None:
            line += f"  ({found['rows']} rows in the current window)"
        if found.get("drifted"):
            line += f"  drifted: {', '.join(found['drifted'])}"
        if status == "no_baseline":
            line += "  (versions trained before monitoring have none)"
        out.print(line, highlight=False)
