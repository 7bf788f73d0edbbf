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

    ws = _workspace(workspace)
    summary: dict[str, Any] = MonitorJob(ws).run_once()
    summary["quality"] = live_quality(ws)
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
    quality = summary["quality"]
    out.print(
        f"live quality: {quality['labels']} late labels, {quality['matched']} matched to "
        f"predictions, {quality['unmatched']} unmatched",
        highlight=False,
    )
    for group in quality["totals"]:
        out.print(
            f"  v{group['version']} ({group['variant']})  accuracy {group['accuracy']:.3f}  "
            f"macro-F1 {group['macro_f1']:.3f}  on {group['samples']} labelled predictions",
            highlight=False,
        )


def live_quality(ws: Any) -> dict[str, Any]:
    """Late labels (POST /feedback, files dropped in <storage>/feedback/) joined to the
    captured predictions: accuracy and macro-F1 per version. Reads every capture file: the
    incremental join is still to come."""
    from tidal.monitoring.feedback import FeedbackStore, join
    from tidal.monitoring.job import CAPTURE_PREFIX
    from tidal.serving.capture import read_capture

    feedback = FeedbackStore(ws.store)
    feedback.ingest_dropped()
    labels = feedback.labels()
    if not labels:
        return {"labels": 0, "matched": 0, "unmatched": 0, "totals": [], "windows": []}
    report: dict[str, Any] = join(
        read_capture(ws.store, CAPTURE_PREFIX, ws.model_name), labels
    ).to_dict()
    return report
