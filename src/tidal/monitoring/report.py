"""The monitoring report: one self-contained HTML file of a model's drift, quality and latency.

``write_report(ws, out)`` reads what the monitoring already stored and draws it; it changes
nothing in the workspace (dropped label files are left for ``tidal monitor`` to take in):

- per version, the newest drift report (``_tidal/monitor/v<version>/report-latest.json``) and
  the stored windows (``window-<start>.json``), each judged again against the version's
  baseline for the drift-over-time plot (the worst PSI per window, numeric and text features);
- the received late labels joined to the captured predictions (``feedback.join``): accuracy
  per window with its number of labelled samples;
- the captured records' ``latency_ms``, one value per request: p50 and p99 per window.

The plots are inline SVG drawn here (no plotting library, no script, font or URL fetched), so
the file opens anywhere and can be mailed or attached to a ticket. A plot without data is drawn
as an explicit "no data yet" panel saying what would fill it. Reads every capture object, as
``live_quality`` does: fine for the volumes a report covers, not yet incremental.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidal.errors import NotFound
from tidal.monitoring.baseline import OTHER
from tidal.monitoring.drift import Thresholds, WindowStats, compare
from tidal.monitoring.job import CAPTURE_PREFIX, MONITOR, WINDOW_S, load_baseline

if TYPE_CHECKING:
    from pathlib import Path

    from tidal.workspace import Workspace

BASELINE_COLOUR = "#0072B2"  # Okabe–Ito: readable for colour-blind eyes and in grey print
CURRENT_COLOUR = "#E69F00"
THRESHOLD_COLOUR = "#C0392B"
SERIES_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#000000"]
WIDTH = 1040
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"


# -- reading ----------------------------------------------------------------------------------


@dataclass
class _Version:
    version: str
    report: dict[str, Any] | None = None
    windows: list[tuple[float, float | None, int]] = field(default_factory=list)  # start, psi, rows
    psi_threshold: float = Thresholds().psi


def _versions(ws: Workspace) -> list[_Version]:
    """Every version with stored monitoring, its newest report and its windows' worst PSI."""
    found: dict[str, _Version] = {}
    for info in ws.store.list(MONITOR):
        parts = info.key[len(MONITOR) :].strip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("v"):
            continue
        entry = found.setdefault(parts[0][1:], _Version(parts[0][1:]))
        if parts[1] == "report-latest.json":
            entry.report = json.loads(ws.store.get_bytes(info.key))
    for entry in found.values():
        thresholds = Thresholds(**(entry.report or {}).get("thresholds", {}))
        entry.psi_threshold = thresholds.psi
        baseline = load_baseline(ws, entry.version)
        if baseline is None:
            continue
        for info in ws.store.list(f"{MONITOR}/v{entry.version}"):
            if not (info.name.startswith("window-") and info.name.endswith(".json")):
                continue
            doc = json.loads(ws.store.get_bytes(info.key))
            stats = WindowStats.from_json(json.dumps(doc["stats"]))
            if stats.fingerprint != baseline.fingerprint:
                continue  # binned against an older baseline
            report = compare(baseline, stats, thresholds)
            psis = [
                v
                for f in report.features
                for k, v in f.metrics.items()
                if k in ("psi", "length_psi") and v is not None and math.isfinite(v)
            ]
            name = info.name[len("window-") : -len(".json")]
            start = float(doc["first_ts"] if name.startswith("n") else name)  # count: n<index>
            entry.windows.append((start, max(psis, default=None), stats.rows))
        entry.windows.sort()
    return sorted(found.values(), key=lambda v: _version_key(v.version))


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _quality(ws: Workspace) -> dict[str, Any] | None:
    from tidal.monitoring.labels import quality_report, sync

    sync(ws)
    report = quality_report(ws, window_s=WINDOW_S)
    return report.to_dict() if report.labels else None


def _latency(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float, int]]]:
    """Per version: (window start, p50, p99, requests) per window, one value per request."""
    import numpy as np

    per: dict[tuple[str, float], dict[str, float]] = {}
    for r in records:
        ms, ts = r.get("latency_ms"), r.get("ts")
        if not isinstance(ms, (int, float)) or not isinstance(ts, (int, float)):
            continue
        start = ts // WINDOW_S * WINDOW_S
        per.setdefault((str(r.get("version")), start), {})[str(r.get("inference_id"))] = ms
    found: dict[str, list[tuple[float, float, float, int]]] = {}
    for (version, start), by_request in sorted(per.items()):
        values = np.fromiter(by_request.values(), dtype=np.float64)
        p50, p99 = np.percentile(values, [50, 99])
        found.setdefault(version, []).append((start, float(p50), float(p99), len(values)))
    return found


# -- drawing ----------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _when(ts: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime(fmt) + " UTC"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = 12,
    anchor: str = "middle",
    weight: str = "normal",
    fill: str = "#222",
    rotate: float | None = None,
) -> str:
    turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}"{turn}>{_e(text)}</text>'
    )


def _svg(height: int, body: list[str], label: str) -> str:
    return (
        f'<svg width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(label)}" '
        f'font-family="{_e(FONT)}"><rect width="100%" height="100%" fill="#fff"/>'
        + "".join(body)
        + "</svg>"
    )


def _no_data(title: str, why: str) -> str:
    """The panel drawn where a plot has no data: its title and what would fill it."""
    body = [
        _text(WIDTH / 2, 28, title, size=16, weight="bold"),
        f'<rect x="20" y="44" width="{WIDTH - 40}" height="96" rx="8" fill="#f4f4f4" '
        'stroke="#bbb" stroke-dasharray="6 4"/>',
        _text(WIDTH / 2, 86, "No data yet", size=18, weight="bold", fill="#666"),
        _text(WIDTH / 2, 114, why, size=13, fill="#666"),
    ]
    return _svg(160, body, f"{title}: no data yet")


def _legend(x: float, y: float, items: Sequence[tuple[str, str, str]]) -> list[str]:
    """Legend entries (label, colour, "bar" | "line" | "dash") from (x, y) rightwards."""
    out = []
    for label, colour, mark in items:
        if mark == "bar":
            out.append(
                f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="14" height="12" fill="{colour}"/>'
            )
        else:
            dash = ' stroke-dasharray="6 4"' if mark == "dash" else ""
            out.append(
                f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" '
                f'stroke="{colour}" stroke-width="2.5"{dash}/>'
            )
        out.append(_text(x + 28, y, label, size=12, anchor="start"))
        x += 40 + 7 * len(label)
    return out


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def axis_ticks(ymax: float, most: int = 6) -> list[tuple[float, str]]:
    """Ticks from 0 to ``ymax`` at a round step (1, 2, 2.5 or 5 × 10^k), at most ``most``
    intervals, each label with just the decimals the step needs: never 0.1, 0.1, 0.2, 0.2."""
    if ymax <= 0:
        return [(0.0, "0")]
    power = 10 ** math.floor(math.log10(ymax / most))
    step = next(
        (m * power for m in (1, 2, 2.5, 5, 10, 20) if ymax / (m * power) <= most + 1e-9),
        ymax,
    )
    decimals = next((d for d in range(10) if abs(round(step, d) - step) < step * 1e-6), 9)
    count = math.floor(ymax / step + 1e-9)
    return [(i * step, f"{i * step:.{decimals}f}") for i in range(count + 1)]


def _y_axis(
    left: float, top: float, bottom: float, right: float, ymax: float, label: str
) -> list[str]:
    out = []
    for value, text in axis_ticks(ymax):
        y = bottom - (bottom - top) * value / ymax
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(_text(left - 8, y + 4, text, size=11, anchor="end"))
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>')
    out.append(_text(18, (top + bottom) / 2, label, size=12, rotate=-90))
    return out


def _bin_labels(bins: dict[str, list[Any]]) -> list[str]:
    if "categories" in bins:
        return ["(other)" if c == OTHER else str(c) for c in bins["categories"]]
    edges = [float(e) for e in bins["edges"]]
    labels = [f"< {edges[0]:.3g}"] if edges else []
    labels += [f"{a:.3g} – {b:.3g}" for a, b in itertools.pairwise(edges)]
    return labels + ([f"≥ {edges[-1]:.3g}"] if edges else [])


def distribution_svg(feature: dict[str, Any], version: str) -> str:
    """Paired bars: the baseline's and the current window's share of rows per bin."""
    bins = feature["bins"]
    base, cur = bins["baseline"], bins["current"]
    labels = _bin_labels(bins)
    m = feature["metrics"]
    if feature["kind"] == "categorical":
        numbers = f"JS {_num(m.get('js'))}"
        xlabel = "category"
    elif feature["kind"] == "text":
        numbers = f"PSI {_num(m.get('length_psi'))} · KS {_num(m.get('length_ks'))}"
        if m.get("embedding_auc") is not None:
            numbers += f" · embedding AUC {_num(m.get('embedding_auc'))}"
        xlabel = "tokens per text (bin)"
    else:
        numbers = f"PSI {_num(m.get('psi'))} · KS {_num(m.get('ks'))}"
        xlabel = f"{feature['name']} (bin of values)"
    title = f"{feature['name']} (v{version}) — {numbers} — {feature['status']}"
    left, right, top, bottom, height = 70, WIDTH - 20, 62, 250, 340
    ymax = _nice_max(100 * max([*base, *cur, 0.01]))
    body = [
        _text(WIDTH / 2, 24, title, size=16, weight="bold"),
        *_legend(
            left,
            48,
            [
                ("baseline (training)", BASELINE_COLOUR, "bar"),
                (f"current window ({feature['samples']} values)", CURRENT_COLOUR, "bar"),
            ],
        ),
        *_y_axis(left, top, bottom, right, ymax, "share of rows (%)"),
    ]
    slot = (right - left) / max(1, len(labels))
    bar = min(28.0, slot * 0.38)
    for i, (label, b, c) in enumerate(zip(labels, base, cur, strict=False)):
        x = left + slot * i + slot / 2
        for offset, share, colour in ((-bar, b, BASELINE_COLOUR), (0.0, c, CURRENT_COLOUR)):
            h = (bottom - top) * 100 * share / ymax
            body.append(
                f'<rect x="{x + offset:.1f}" y="{bottom - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{_e(label)}: '
                f"{100 * share:.1f}%</title></rect>"
            )
        body.append(_text(x, bottom + 14, label, size=11, anchor="end", rotate=-35))
    body.append(_text((left + right) / 2, height - 8, xlabel, size=12))
    return _svg(height, body, title)


@dataclass
class Series:
    label: str
    colour: str
    points: list[tuple[float, float, str]]  # (unix time, value, note written above the point)
    dashed: bool = False


def line_svg(
    title: str,
    ylabel: str,
    series: list[Series],
    *,
    ymax: float | None = None,
    threshold: tuple[float, str] | None = None,
) -> str:
    """Values per window over time, one point per window; an optional threshold line."""
    left, right, top, bottom, height = 70, WIDTH - 30, 84, 290, 350
    times = sorted({t for s in series for t, _, _ in s.points})
    top_value = max(
        [v for s in series for _, v, _ in s.points] + [threshold[0] if threshold else 0]
    )
    ymax = ymax if ymax is not None else _nice_max(top_value * 1.15)
    legend = [(s.label, s.colour, "dash" if s.dashed else "line") for s in series]
    if threshold:
        legend.append((threshold[1], THRESHOLD_COLOUR, "dash"))
    body = [
        _text(WIDTH / 2, 24, title, size=16, weight="bold"),
        *_legend(left, 48, legend),
        *_y_axis(left, top, bottom, right, ymax, ylabel),
    ]
    span = times[-1] - times[0] if times else 0.0
    pad = 70.0

    def x_of(t: float) -> float:
        if span <= 0:
            return (left + right) / 2
        return left + pad + (right - left - 2 * pad) * (t - times[0]) / span

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * min(v, ymax) / ymax

    step = max(1, math.ceil(len(times) / 8))
    for t in times[::step]:
        x = x_of(t)
        body.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#444"/>'
        )
        body.append(_text(x, bottom + 18, _when(t, "%m-%d %H:%M"), size=11))
    body.append(_text((left + right) / 2, height - 12, "window start (UTC)", size=12))
    if threshold:
        y = y_of(threshold[0])
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
    for s in series:
        points = sorted(s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        path = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v, _ in points)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2.5"{dash}/>'
        )
        for t, v, note in points:
            x, y = x_of(t), y_of(v)
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{s.colour}"/>')
            if note:
                body.append(_text(x, y - 10, note, size=11, fill=s.colour))
    return _svg(height, body, title)


# -- the report -------------------------------------------------------------------------------


def _quality_row(quality: dict[str, Any] | None, version: str) -> str:
    groups = [g for g in (quality or {}).get("totals", []) if g["version"] == version]
    if not groups:
        return "<td>—</td><td>—</td>"
    samples = sum(g["samples"] for g in groups)
    accuracy = sum(g["correct"] for g in groups) / samples
    f1 = sum(g["macro_f1"] * g["samples"] for g in groups) / samples
    return f"<td>{accuracy:.3f} <small>(n={samples})</small></td><td>{f1:.3f}</td>"


def _summary(versions: list[_Version], quality: dict[str, Any] | None) -> str:
    head = (
        "<tr><th>version</th><th>drift status</th><th>window</th><th>rows</th>"
        "<th>drifted features</th><th>live accuracy</th><th>live macro-F1</th></tr>"
    )
    rows = []
    for v in versions:
        r = v.report or {}
        status = r.get("status", "no report")
        drifted = ", ".join(r.get("drifted") or []) or "none"
        rows.append(
            f"<tr><td>v{_e(v.version)}</td><td class='{_e(status)}'>{_e(status)}</td>"
            f"<td>{_e(_when(r.get('window_start')))}</td><td>{_e(r.get('rows', '—'))}</td>"
            f"<td>{_e(drifted)}</td>{_quality_row(quality, v.version)}</tr>"
        )
    if not rows:
        rows.append(
            "<tr><td colspan='7'>No monitored version yet: run <code>tidal monitor"
            "</code> once traffic is captured.</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _decisions(ws: Workspace) -> str:
    """The retrain policy's latest decisions, newest first."""
    found = ws.state.retrain_decisions(ws.model_name, limit=10)
    if not found:
        return "<p>No decision yet: the policy decides while a drift or quality alarm stands.</p>"
    head = "<tr><th>when</th><th>action</th><th>reason</th><th>why</th><th>run</th></tr>"
    rows = [
        f"<tr><td>{_e(_when(d.get('last_at') or d['at'], '%Y-%m-%d %H:%M:%S'))}</td>"
        f"<td class='{'drifted' if d['action'] == 'retrain' else ''}'>{_e(d['action'])}</td>"
        f"<td>{_e(d['reason'])}{' ×' + str(d['repeats']) if d.get('repeats', 1) > 1 else ''}</td>"
        f"<td>{_e(d['message'])}</td><td>{_e(d.get('run_id') or '—')}</td></tr>"
        for d in found
    ]
    return f"<table>{head}{''.join(rows)}</table>"


STYLE = f"""
body {{ font-family: {FONT}; margin: 24px auto; max-width: {WIDTH + 40}px; color: #222; }}
h1 {{ margin-bottom: 4px; }} .meta {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 12px 0 28px; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 6px 10px; text-align: left; }}
th {{ background: #f2f2f2; }} td.drifted {{ color: #b00; font-weight: bold; }}
td.ok {{ color: #070; }} td.insufficient_data {{ color: #a60; }}
figure {{ margin: 0 0 24px; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }}
svg {{ display: block; max-width: 100%; height: auto; }}
"""


def write_report(ws: Workspace, out: Path, *, now: float | None = None) -> dict[str, Any]:
    """Write the monitoring report of ``ws``'s model to ``out`` (one HTML file); what it drew.

    ``{"out", "model", "generated_at", "versions", "features": [{"version", "name"}],
    "plots": {"distributions", "drift_over_time", "quality_over_time", "latency": bool}}``; a
    plot is False when its panel says "no data yet".
    """
    from tidal.serving.capture import read_capture

    now = time.time() if now is None else now
    versions = _versions(ws)
    try:
        records = list(read_capture(ws.store, CAPTURE_PREFIX, ws.model_name))
    except NotFound:
        records = []
    quality = _quality(ws)
    latency = _latency(records)
    figures: list[str] = []
    drawn: dict[str, bool] = {}
    features: list[dict[str, str]] = []

    for v in versions:  # the most drifted features first, as the report ranked them
        ranked = {name: i for i, name in enumerate((v.report or {}).get("drifted", []))}
        plotted = [f for f in (v.report or {}).get("features", []) if f.get("bins")]
        plotted.sort(key=lambda f: (ranked.get(f["name"], len(ranked)), -(f["score"] or 0.0)))
        for feature in plotted[:5]:
            figures.append(distribution_svg(feature, v.version))
            features.append({"version": v.version, "name": feature["name"]})
    drawn["distributions"] = bool(features)
    if not features:
        figures.append(
            _no_data(
                "Baseline vs current distribution",
                "run `tidal monitor` after traffic is captured to judge a window",
            )
        )

    drift = [
        Series(
            f"v{v.version} worst PSI",
            SERIES_COLOURS[i % len(SERIES_COLOURS)],
            [(t, psi, f"{psi:.2f}") for t, psi, _ in v.windows if psi is not None],
        )
        for i, v in enumerate(versions)
    ]
    drift = [s for s in drift if s.points]
    drawn["drift_over_time"] = bool(drift)
    threshold = versions[0].psi_threshold if versions else Thresholds().psi
    figures.append(
        line_svg(
            "Drift over time: worst feature PSI per window",
            "PSI (unitless)",
            drift,
            threshold=(threshold, f"drift threshold PSI {threshold:g}"),
        )
        if drift
        else _no_data("Drift over time", "no stored window with numeric or text features yet")
    )

    windows = (quality or {}).get("windows", [])
    by_version: dict[str, list[tuple[float, float, str]]] = {}
    f1s: dict[str, list[tuple[float, float, str]]] = {}
    for g in windows:
        key = g["version"] + ("" if g["variant"] == "default" else f" ({g['variant']})")
        by_version.setdefault(key, []).append(
            (g["window_start"], 100 * g["accuracy"], f"{100 * g['accuracy']:.0f}% n={g['samples']}")
        )
        f1s.setdefault(key, []).append((g["window_start"], 100 * g["macro_f1"], ""))
    accuracy = []
    for i, (k, pts) in enumerate(sorted(by_version.items())):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        accuracy.append(Series(f"v{k} accuracy", colour, pts))
        accuracy.append(Series(f"v{k} macro-F1", colour, f1s[k], dashed=True))
    drawn["quality_over_time"] = bool(accuracy)
    figures.append(
        line_svg(
            "Live quality per window (n = labelled predictions)",
            "accuracy, macro-F1 (%)",
            accuracy,
            ymax=100.0,
        )
        if accuracy
        else _no_data(
            "Live quality over time",
            "no late labels matched to captured predictions yet (POST /feedback)",
        )
    )

    lat: list[Series] = []
    for i, (version, points) in enumerate(sorted(latency.items())):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        lat.append(
            Series(f"v{version} p50", colour, [(t, p50, f"{p50:.0f}") for t, p50, _, _ in points])
        )
        lat.append(
            Series(
                f"v{version} p99",
                colour,
                [(t, p99, f"{p99:.0f} ms · {n} req") for t, _, p99, n in points],
                dashed=True,
            )
        )
    drawn["latency"] = bool(lat)
    figures.append(
        line_svg("Latency per window (captured requests)", "latency (ms)", lat)
        if lat
        else _no_data("Latency over time", "no captured request with latency_ms yet")
    )

    model = ws.model_name
    names = ", ".join(f"v{v.version}" for v in versions) or "none monitored yet"
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(model)} monitoring report</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(model)}: monitoring report</h1>"
        f"<p class='meta'>versions: {_e(names)} · generated {_e(_when(now, '%Y-%m-%d %H:%M:%S'))}"
        f" · {len(records)} captured rows</p><h2>Summary</h2>{_summary(versions, quality)}"
        f"<h2>Retrain decisions</h2>{_decisions(ws)}<h2>Plots</h2>"
        + "".join(f"<figure>{f}</figure>" for f in figures)
        + "</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return {
        "out": str(out),
        "model": model,
        "generated_at": now,
        "versions": [v.version for v in versions],
        "features": features,
        "plots": drawn,
    }
