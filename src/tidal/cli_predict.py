"""``tidal predict``: predictions from the champion, through the running endpoint when there
is one (the URL it recorded, or ``--url``), else in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from tidal.cli import JSON_OPT, WS_OPT, _print_json, _workspace, app, err, reported
from tidal.errors import UsageError


def _rows_from_file(path: Path, features: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    from tidal.data.validate import read_table

    frame = read_table(path.read_bytes(), path.name)
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise UsageError(f"{path.name} lacks features {', '.join(repr(m) for m in missing)}")
    ignored = [c for c in frame.columns if c not in features]
    frame = frame[features].astype(object)
    rows = frame.where(frame.notna(), None).to_dict("records")
    return rows, ignored


@app.command()
@reported
def predict(
    data: str | None = typer.Argument(None, help="A JSON object, or a CSV row in feature order."),
    file: Path | None = typer.Option(None, "--file", "-f", help="A CSV or JSON Lines file."),
    url: str | None = typer.Option(None, help="Endpoint URL (default: the workspace endpoint)."),
    api_key: str | None = typer.Option(
        None, envvar="TIDAL_API_KEY", help="Bearer key, if required."
    ),
    workspace: Path | None = WS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Predict with the champion: through the endpoint if it runs, else in-process."""
    from tidal.overview import endpoint_health

    if (data is None) == (file is None):
        raise UsageError(
            "give either DATA or --file", hint="tidal predict '{\"x\": 1}' or --file rows.csv"
        )
    ws = _workspace(workspace)
    target = url or ws.endpoint_url
    health = endpoint_health(target)
    if health.get("ready"):
        result = _predict_http(target, data, file, ws, api_key)
        result["via"] = target
    else:
        if url:
            raise UsageError(f"no endpoint ready at {url}", hint="start one with 'tidal up'")
        result = _predict_local(ws, data, file)
        result["via"] = "in-process (no endpoint running)"
    if as_json:
        _print_json(result)
        return
    err.print(f"[dim]v{result['model_version']} via {result['via']}[/]", highlight=False)
    for p in result["predictions"]:
        sys.stdout.write(f"{p['label']}\t{p['score']:.4f}\n")  # tab-separated, for cut/awk


def _local_predictor(ws: Any) -> Any:
    from tidal.artifact import load_predictor

    deployment = ws.state.current_deployment(ws.model_name)
    if deployment is None:
        raise UsageError("no model is deployed yet", hint="train one with 'tidal run FILE'")
    return deployment, load_predictor(Path(deployment.model_dir), deployment.manifest_sha256)


def _predict_local(ws: Any, data: str | None, file: Path | None) -> dict[str, Any]:
    from tidal.serving.inputs import decode_csv, decode_json

    deployment, predictor = _local_predictor(ws)
    features = predictor.manifest.features
    if file is not None:
        rows, _ = _rows_from_file(file, predictor.manifest.feature_names)
        rows = decode_json(json.dumps({"instances": rows}).encode(), features)
    else:
        assert data is not None
        body, ctype = _argument_payload(data, [{"name": f.name, "type": f.type} for f in features])
        rows = (decode_json if ctype == "application/json" else decode_csv)(body, features)
    return {"model_version": deployment.version, "predictions": predictor.predict(rows)}


def _argument_payload(raw: str, features: list[dict[str, Any]]) -> tuple[bytes, str]:
    """JSON when it looks like JSON, plain text for a one-text-feature model, else a CSV row."""
    raw = raw.strip()
    if raw[:1] in ("{", "[", '"'):
        return raw.encode(), "application/json"
    if len(features) == 1 and features[0]["type"] == "string":
        return json.dumps(raw).encode(), "application/json"
    return raw.encode(), "text/csv"


def _predict_http(
    url: str, data: str | None, file: Path | None, ws: Any, api_key: str | None
) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = httpx.get(f"{url}/model", timeout=5).json()
    if file is not None:
        rows, _ = _rows_from_file(file, [f["name"] for f in model["features"]])
        body, ctype = json.dumps({"instances": rows}).encode(), "application/json"
    else:
        assert data is not None
        body, ctype = _argument_payload(data, model["features"])
    response = httpx.post(
        f"{url}/invocations", content=body, headers={**headers, "Content-Type": ctype}, timeout=30
    )
    payload = response.json()
    if response.status_code >= 400:
        error = payload.get("error", {})
        raise UsageError(
            f"endpoint answered {response.status_code}: {error.get('message', payload)}"
        )
    return {
        "model_version": payload.get("model_version"),
        "predictions": payload["predictions"],
        "inference_id": payload.get("inference_id"),
    }
