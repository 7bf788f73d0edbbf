"""What the workspace looks like now: the data behind ``tidal status`` and ``tidal models``.

Every function returns plain data (dicts and lists) for the CLI's ``--json`` and tables, and
for the dashboard later.
"""

from __future__ import annotations

import json
from typing import Any

from tidal.registry import VersionInfo
from tidal.state import Run
from tidal.workspace import Workspace


def endpoint_health(url: str, timeout: float = 0.5) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.get(f"{url}/ping", timeout=timeout)
    except httpx.HTTPError:
        return {"url": url, "up": False}
    body = (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    return {
        "url": url,
        "up": True,
        "ready": response.status_code == 200,
        "model_version": body.get("model_version"),
        **_worker_metrics(url, timeout),
    }


def _worker_metrics(url: str, timeout: float) -> dict[str, Any]:
    """Workers running and cold starts so far, from the endpoint's /metrics (no key needed)."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout).text
    except httpx.HTTPError:
        return {}
    totals = {"tidal_workers": 0.0, "tidal_cold_starts_total": 0.0}
    for line in text.splitlines():
        name = line.partition("{")[0].partition(" ")[0]
        if name in totals:
            try:
                totals[name] += float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                continue
    return {
        "workers": int(totals["tidal_workers"]),
        "cold_starts": int(totals["tidal_cold_starts_total"]),
    }


def run_summary(run: Run) -> dict[str, Any]:
    record = run.record or {}
    return {
        "run_id": run.id,
        "source": run.uri,
        "status": run.status.value,
        "step": run.step,
        "decision": run.decision,
        "version": record.get("version"),
        "seconds": record.get("seconds"),
        "attempts": run.attempts,
        "error": run.error,
    }


def status(ws: Workspace, *, check_endpoint: bool = True) -> dict[str, Any]:
    state = ws.state
    deployment = state.current_deployment(ws.model_name)
    champion = None
    if deployment is not None:
        # a rollback's record has no run: the metrics are those of the run that made the version
        run_id = deployment.run_id or next(
            (
                d.run_id
                for d in state.deployments(ws.model_name)
                if d.version == deployment.version and d.run_id
            ),
            None,
        )
        run = state.run(run_id) if run_id else None
        record = (run.record or {}) if run else {}
        combined = ((record.get("metrics") or {}).get("candidate") or {}).get("combined")
        champion = {
            "version": deployment.version,
            "deployed_at": deployment.created_at,
            "reason": deployment.reason,
            "metrics": combined,
        }
    cursor = state.cursor(f"poll:{ws.store.uri('incoming')}")
    active = [
        run_summary(r) | {"progress": state.progress(r.id)}
        for r in state.runs(ws.model_name, limit=50)
        if r.status.value in ("queued", "running")
    ]
    return {
        "workspace": str(ws.root),
        "project": ws.config.project,
        "model": ws.model_name,
        "storage": ws.store.root,
        "champion": champion,
        "endpoint": endpoint_health(ws.endpoint_url)
        if check_endpoint
        else {"url": ws.endpoint_url},
        "queue": state.counts(),
        "active_runs": active,
        "recent_runs": [run_summary(r) for r in state.runs(ws.model_name, limit=10)],
        "cursor": json.loads(cursor) if cursor else None,
        "events": [
            {"ts": e["ts"], "kind": e["kind"], "message": e["message"]} for e in state.events(10)
        ],
        "retrain": next(iter(state.retrain_decisions(ws.model_name, limit=1)), None),
    }


def list_models(ws: Workspace) -> list[dict[str, Any]]:
    deployment = ws.state.current_deployment(ws.model_name)
    out = []
    for info in ws.registry.versions():
        data = ws.registry.run_data(info)
        out.append(
            {
                "version": info.version,
                "decision": info.tags.get("tidal.decision"),
                "aliases": info.aliases,
                "serving": deployment is not None and deployment.version == info.version,
                "accuracy": data["metrics"].get("candidate.combined.accuracy"),
                "macro_f1": data["metrics"].get("candidate.combined.macro_f1"),
                "source": info.tags.get("tidal.source_uri"),
                "created_at": info.created_at,
            }
        )
    return out


def show_model(ws: Workspace, version: str) -> dict[str, Any]:
    info: VersionInfo = ws.registry.version(version)
    data = ws.registry.run_data(info)
    deployments = [
        {"deployed_at": d.created_at, "reason": d.reason, "rolled_back": d.rolled_back}
        for d in ws.state.deployments(ws.model_name)
        if d.version == info.version
    ]
    tags = info.tags
    return {
        **info.to_dict(),
        "metrics": data["metrics"],
        "params": data["params"],
        "decision_record": ws.registry.decision_record(info),
        "lineage": {
            "source_uri": tags.get("tidal.source_uri"),
            "source_sha256": tags.get("tidal.source_sha256"),
            "dataset_version": tags.get("tidal.dataset_version"),
            "training_sets": json.loads(tags.get("tidal.training_sets", "[]")),
            "tidal_run_id": tags.get("tidal.run_id"),
            "mlflow_run_id": info.run_id,
            "model_version": info.version,
            "manifest_sha256": tags.get("tidal.manifest_sha256"),
            "code_version": tags.get("tidal.code_version"),
            "deployments": deployments,
        },
    }


# -- one-line readings for 'tidal status' ------------------------------------------------------


QUEUE_ORDER = ("queued", "running", "done", "failed")


def queue_line(counts: dict[str, int]) -> str:
    """``{'done': 3, 'queued': 1}`` as ``1 queued, 3 done``; ``empty`` when there are no runs."""
    known = [s for s in QUEUE_ORDER if counts.get(s)]
    other = sorted(s for s in counts if s not in QUEUE_ORDER and counts[s])
    return ", ".join(f"{counts[s]} {s}" for s in [*known, *other]) or "empty"


def cursor_line(cursor: dict[str, Any] | None) -> str:
    """Where the poll of incoming/ stands: the newest file it picked up, and that file's time."""
    if not cursor:
        return "nothing picked up from incoming/ yet"
    return f"{cursor.get('key')} (modified {clock(cursor.get('mtime'))})"


def clock(ts: Any) -> str:
    import datetime as dt

    if not isinstance(ts, int | float):
        return "?"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
