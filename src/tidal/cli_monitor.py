"""``tidal monitor``: read the new captured traffic, compare it with each version's baseline,
join late labels, and let the retrain policy decide on the alarms that stand."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from tidal.cli import JSON_OPT, WS_OPT, _print_json, _workspace, app, out, reported

monitor_app = typer.Typer(
    help="Drift, live quality and alarms of the served traffic ('tidal monitor' checks now).",
    invoke_without_command=True,
)
app.add_typer(monitor_app, name="monitor")


@monitor_app.callback()
@reported
def monitor(ctx: typer.Context, workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Drift of the served traffic against each version's training baseline (reads only the
    traffic captured since the last check), and live quality from late labels."""
    if ctx.invoked_subcommand is not None:
        return
    ws = _workspace(workspace)
    summary = check(ws)
    if as_json:
        _print_json(summary)
        return
    out.print(
        f"{summary['model']}: {summary['records']} new records in {summary['objects']} "
        "captured files",
        highlight=False,
    )
    if not summary["versions"]:
        out.print("no new traffic captured since the last check")
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
    for alarm in quality.get("alarms", []):
        out.print(
            f"  [bold red]quality alarm[/]: v{alarm['version']} {alarm['metric']} "
            f"{alarm['value']:.3f} under the floor {alarm['floor']:g}",
            highlight=False,
        )
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
    say_decisions(summary["decisions"], fresh=summary["retrain"])


def say_decisions(found: list[dict[str, Any]], *, fresh: dict[str, Any] | None = None) -> None:
    """The retrain policy's latest decisions, newest first (``fresh``: this pass's)."""
    if not found:
        out.print("retrain policy: no decision yet (it decides when an alarm stands)")
        return
    out.print("retrain policy (newest first):")
    for d in found:
        when = datetime.fromtimestamp(d["last_at"] or d["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        color = "green" if d["action"] == "retrain" else "yellow"
        line = f"  {when} UTC  [{color}]{d['action']}[/] ({d['reason']}): {d['message']}"
        if d.get("run_id"):
            line += f"  → run {d['run_id']}"
        if d.get("repeats", 1) > 1:
            line += f"  ×{d['repeats']}"
        if fresh is not None and fresh.get("id") == d.get("id"):
            line += "  [bold](now)[/]"
        out.print(line, highlight=False)


def check(ws: Any) -> dict[str, Any]:
    """One monitoring pass with the workspace's settings: drift of the new traffic, live
    quality, and an alert for each quality floor crossed."""
    from tidal.alerts import send_alert
    from tidal.monitoring.drift import Thresholds
    from tidal.monitoring.job import MonitorJob

    settings = ws.config.monitoring
    thresholds = Thresholds(
        psi=settings.psi,
        ks=settings.ks,
        js=settings.js,
        text_auc=settings.text_auc,
        min_samples=settings.min_samples,
    )
    summary: dict[str, Any] = MonitorJob(
        ws, thresholds=thresholds, window_s=settings.window_s, window_rows=settings.window_rows
    ).run_once()
    quality = live_quality(ws, window_s=settings.window_s)
    for alarm in quality["alarms"]:
        send_alert(
            ws,
            "quality",
            f"{ws.model_name} v{alarm['version']}: live {alarm['metric']} {alarm['value']:.3f} "
            f"under the floor {alarm['floor']:g} ({alarm['samples']} labelled predictions)",
            key=f"quality-v{alarm['version']}-{alarm['metric']}",
            data=alarm,
        )
    summary["quality"] = quality
    from tidal.monitoring.policy import consider, decisions

    decision = consider(ws, summary)
    summary["retrain"] = decision.to_dict() if decision else None
    summary["decisions"] = [d.to_dict() for d in decisions(ws, limit=5)]
    return summary


def monitor_forever(ws: Any, stop: Any) -> None:
    """``check`` every ``monitoring.interval_s`` until ``stop`` (a threading.Event) is set; errors
    are logged and the loop goes on (``tidal up`` runs it in a thread)."""
    import logging

    log = logging.getLogger("tidal.monitoring")
    while not stop.wait(ws.config.monitoring.interval_s):
        try:
            check(ws)
        except Exception:
            log.exception("monitoring pass failed; trying again at the next interval")


def live_quality(ws: Any, *, window_s: float = 3600.0) -> dict[str, Any]:
    """Late labels (POST /feedback, files dropped in <storage>/feedback/) joined to the
    captured predictions: accuracy and macro-F1 per version. Incremental: a pass reads the new
    labels and the capture hours their ids name (``tidal.monitoring.labels``)."""
    from tidal.monitoring.labels import quality_report, sync

    synced = sync(ws)
    joined = quality_report(ws, window_s=window_s)
    report: dict[str, Any] = joined.to_dict() | {"read": asdict(synced)}
    settings = ws.config.monitoring
    report["alarms"] = [
        a.to_dict()
        for a in joined.alarms(
            min_accuracy=settings.min_accuracy,
            min_macro_f1=settings.min_macro_f1,
            min_samples=settings.min_labels,
        )
        if a.group.window_start is None  # per version over all its labels
    ]
    return report


@monitor_app.command("report")
@reported
def monitor_report(
    out_path: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    workspace: Path | None = WS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """One self-contained HTML report: drift, live quality and latency per version."""
    from tidal.monitoring.report import write_report

    drawn = write_report(_workspace(workspace), out_path)
    if as_json:
        _print_json(drawn)
        return
    out.print(f"wrote {drawn['out']}", highlight=False)
