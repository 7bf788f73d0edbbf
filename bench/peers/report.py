"""The serving bench's report: figures per server, ratios to the best peer, goals, markdown.

``report`` is what ``serving_bench.py`` collects (also written as JSON): ``machine``,
``settings``, ``peers`` and, per suite (``tabular``, ``text``), ``levels`` (the concurrencies),
``predict_in_process`` and ``servers``: per server ``load`` (wrk's figures per concurrency),
``launch_s``, ``memory`` and, for Tidal, ``cold_from_zero``. Ratios are to the best peer: the
lowest latency, time or memory, the highest req/s, Tidal left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

TIDAL_AT_ZERO = "tidal, all at zero"  # the table's row of Tidal's memory with no worker
GOALS = {
    "tabular_p50_c1_over_fastapi_ms": 0.3,
    "tabular_rps_c64_vs_best_peer": 1.5,
    "tabular_cold_from_zero_s": 0.25,
    "text_rps_c32_vs_fastapi": 3.0,
    "text_cold_from_zero_s": 0.8,
}


# -- figures, ratios, goals -------------------------------------------------------------------


def columns(levels: list[int]) -> list[tuple[str, str, bool]]:
    """(key, heading, lower is better) for each figure of a suite's table."""
    cols = [(f"p50@{levels[0]}", f"p50 c={levels[0]} ms", True)]
    cols.append((f"p99@{levels[0]}", f"p99 c={levels[0]} ms", True))
    for c in levels[1:]:
        cols += [(f"rps@{c}", f"req/s c={c}", False), (f"p99@{c}", f"p99 c={c} ms", True)]
    cols += [("launch", "launch → answer s", True), ("cold", "cold from zero s", True)]
    return [*cols, ("rss", "RSS MB", True), ("uss", "USS MB", True), ("pss", "PSS MB", True)]


def figures(server: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c, run in server.get("load", {}).items():
        out[f"p50@{c}"], out[f"p99@{c}"], out[f"rps@{c}"] = run["p50_ms"], run["p99_ms"], run["rps"]
    out["launch"] = server.get("launch_median_s")
    out["cold"] = server.get("cold_from_zero", {}).get("median_s")
    memory = server.get("memory") or {}
    out["rss"], out["uss"], out["pss"] = (memory.get(f"{k}_mb") for k in ("rss", "uss", "pss"))
    return out


def table(suite: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each server's figures by column key; for Tidal also a row of its memory at zero."""
    rows = {name: figures(server) for name, server in suite["servers"].items()}
    zero = suite["servers"].get("tidal", {}).get("cold_from_zero", {}).get("memory_at_zero")
    if zero:
        rows[TIDAL_AT_ZERO] = {k: zero[f"{k}_mb"] for k in ("rss", "uss", "pss")}
    return rows


def ratios(suite: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each row's figures as a ratio to the best peer's (Tidal is not a peer)."""
    rows = table(suite)
    out: dict[str, dict[str, float | None]] = {name: {} for name in rows}
    for key, _, lower in columns(suite["levels"]):
        peer_values = [
            value for n, f in rows.items() if not n.startswith("tidal") and (value := f.get(key))
        ]
        best = (min if lower else max)(peer_values) if peer_values else None
        for name, f in rows.items():
            value = f.get(key)
            out[name][key] = round(value / best, 3) if value is not None and best else None
    return out


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with its figure and verdict (ok, MISSED, not measured)."""
    out: list[dict[str, Any]] = []

    def verdict(goal: str, figure: float | None, text: str, ok: bool, note: str = "") -> None:
        state = "not measured" if figure is None else ("ok" if ok else "MISSED")
        out.append({"goal": goal, "figure": text if figure is not None else "-", "verdict": state})
        out[-1]["note"] = note if figure is None else ""

    suites = report["suites"]
    tidal_p50 = _figure(suites, "tabular", "tidal", "p50@1")
    fastapi_p50 = _figure(suites, "tabular", "fastapi", "p50@1")
    gap = tidal_p50 - fastapi_p50 if tidal_p50 is not None and fastapi_p50 is not None else None
    limit = GOALS["tabular_p50_c1_over_fastapi_ms"]
    verdict(
        f"tabular: p50 at c=1 within {limit} ms of plain FastAPI",
        gap,
        f"{gap or 0:+.3f} ms",
        gap is not None and gap <= limit,
    )
    tidal_rps = _figure(suites, "tabular", "tidal", "rps@64")
    best = _best_peer(suites, "tabular", "rps@64")
    best_rps = _figure(suites, "tabular", best, "rps@64") if best else None
    ratio = tidal_rps / best_rps if tidal_rps and best_rps else None
    tidal_p99 = _figure(suites, "tabular", "tidal", "p99@64")
    best_p99 = _figure(suites, "tabular", best, "p99@64") if best else None
    p99_ok = tidal_p99 is not None and best_p99 is not None and tidal_p99 <= best_p99
    limit = GOALS["tabular_rps_c64_vs_best_peer"]
    verdict(
        f"tabular: req/s at c=64 >= {limit}x the best peer (tuned ones included), p99 no worse",
        ratio,
        f"{ratio or 0:.2f}x {best}; p99 {tidal_p99 or 0:.1f} ms vs {best_p99 or 0:.1f} ms",
        ratio is not None and ratio >= limit and p99_ok,
    )
    _cold_goal(verdict, suites, "tabular", GOALS["tabular_cold_from_zero_s"])
    tidal_rps = _figure(suites, "text", "tidal", "rps@32")
    fastapi_rps = _figure(suites, "text", "fastapi", "rps@32")
    ratio = tidal_rps / fastapi_rps if tidal_rps and fastapi_rps else None
    limit = GOALS["text_rps_c32_vs_fastapi"]
    verdict(
        f"text: req/s at c=32 >= {limit}x plain FastAPI",
        ratio,
        f"{ratio or 0:.2f}x",
        ratio is not None and ratio >= limit,
    )
    _cold_goal(verdict, suites, "text", GOALS["text_cold_from_zero_s"])
    zero = {kind: _tidal_cold(suites, kind) for kind in suites}
    zero = {kind: cold for kind, cold in zero.items() if cold.get("at_zero")}
    text = "; ".join(
        f"{kind}: {cold['at_zero']['workers']} workers, "
        f"{cold['memory_at_zero']['processes']} processes, "
        f"{cold['memory_at_zero']['rss_mb']:.0f} MB RSS / "
        f"{cold['memory_at_zero']['uss_mb']:.0f} MB USS"
        for kind, cold in zero.items()
    )
    verdict(
        "idle (all variants at zero): no worker processes; memory stated",
        len(zero) or None,
        text,
        all(cold["at_zero"]["workers"] == 0 for cold in zero.values()),
        "no scale-to-zero measured",
    )
    return out


def _figure(suites: dict[str, Any], kind: str, server: str, key: str) -> float | None:
    found = suites.get(kind, {}).get("servers", {}).get(server)
    return figures(found).get(key) if found else None


def _best_peer(suites: dict[str, Any], kind: str, key: str) -> str | None:
    """The peer with the highest ``key`` (a req/s figure) in a suite, or None."""
    values = {
        name: value
        for name in suites.get(kind, {}).get("servers", {})
        if name != "tidal" and (value := _figure(suites, kind, name, key))
    }
    return max(values, key=values.__getitem__) if values else None


def _tidal_cold(suites: dict[str, Any], kind: str) -> dict[str, Any]:
    cold: dict[str, Any] = (
        suites.get(kind, {}).get("servers", {}).get("tidal", {}).get("cold_from_zero", {})
    )
    return cold


def _cold_goal(verdict: Any, suites: dict[str, Any], kind: str, limit: float) -> None:
    cold = _tidal_cold(suites, kind)
    median = cold.get("median_s")
    tidal = suites.get(kind, {}).get("servers", {}).get("tidal")
    if kind not in suites or tidal is None:
        note = f"Tidal not run in the {kind} suite"
    else:
        note = cold.get("skipped") or cold.get("error") or "Tidal failed, see above"
    name = f"{kind}: cold start from zero <= {limit} s"
    verdict(name, median, f"{median or 0:.3f} s", median is not None and median <= limit, note)


# -- output -----------------------------------------------------------------------------------


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.startswith("rps") or key in ("rss", "uss", "pss"):
        return f"{value:,.0f}"
    return f"{value:.2f}" if key in ("launch", "cold") or value >= 10 else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [
        f"# Serving bench, {report['date']}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}; "
        f"{m['wrk']}; load average {m['loadavg_before']} before, {m['loadavg_after']} after.",
        f"Load: wrk -t1, keep-alive, single-row JSON POST, {s['warmup_s']} s warm-up then "
        f"{s['duration_s']} s per level; launch → answer: median of {s['launches']} launches; "
        f"cold from zero: median of {s['cold_repeats']} "
        f"(idle_timeout_s = {s['tidal_cold_idle_s']:g}).",
        f"Compute threads per model process: peers {s['peer_threads']} (OMP/MKL/OpenBLAS), "
        f"Tidal its serving.worker_threads; Tidal settings from the environment: "
        f"{s['tidal_env'] or 'none (defaults)'}.",
        "",
    ]
    for kind, suite in report["suites"].items():
        cols = columns(suite["levels"])
        lines += [f"## {kind}: {suite['model']['description']}", ""]
        probe = suite["predict_in_process"]
        if "one_row_us" in probe:
            lines += [
                f"In-process `predict` (the floor): one row {probe['one_row_us']:,.0f} µs, "
                f"a {probe['batch']}-row batch {probe['batch_per_row_us']:,.1f} µs per row.",
                "",
            ]
        lines += _markdown_table(cols, table(suite), _fmt)
        lines += [
            "",
            "Ratio to the best peer (latency, time, memory: below 1 is better; req/s: "
            "above 1 is better):",
            "",
        ]
        lines += _markdown_table(cols, ratios(suite), lambda k, v: f"{v:.2f}x")
        lines += ["", "How each server gets the model:", ""]
        for name, srv in suite["servers"].items():
            note = f" — FAILED: {' '.join(srv['error'].split())[:300]}" if "error" in srv else ""
            lines.append(f"- **{name}** (`POST {srv['route']}`): {srv['how']}{note}")
        for name, why in suite["missing"].items():
            lines.append(f"- **{name}**: {why}")
        lines += _tidal_notes(suite)
        lines.append("")
    lines += ["## Goals", "", "| goal | figure | verdict |", "|---|---|---|"]
    for g in report["goals"]:
        note = f" ({g['note']})" if g["note"] else ""
        lines.append(f"| {g['goal']} | {g['figure']} | {g['verdict']}{note} |")
    lines += ["", f"Peers venv: {json.dumps(report['peers'])}", ""]
    return "\n".join(lines)


def _markdown_table(
    cols: list[tuple[str, str, bool]],
    rows: dict[str, dict[str, float | None]],
    fmt: Callable[[str, float], str],
) -> list[str]:
    lines = ["| server | " + " | ".join(heading for _, heading, _ in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        cells = [fmt(k, v) if (v := row.get(k)) is not None else "-" for k, _, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _tidal_notes(suite: dict[str, Any]) -> list[str]:
    tidal = suite["servers"].get("tidal")
    if not tidal:
        return []
    out = []
    cold = tidal.get("cold_from_zero", {})
    if "median_s" in cold:
        mem = cold.get("memory_at_zero") or {}
        out.append(
            f"- Tidal cold starts from zero: {cold['seconds']} s; at zero: "
            f"{cold['at_zero']['workers']} workers, {cold['at_zero']['launchers']} launcher, "
            f"tidal_workers = {cold['at_zero']['gauge']}; what stays up: "
            f"{mem.get('processes')} processes, {mem.get('rss_mb')} MB RSS, "
            f"{mem.get('uss_mb')} MB USS, {mem.get('pss_mb')} MB PSS"
        )
    elif cold:
        out.append(
            f"- Tidal cold start from zero not measured: {cold.get('skipped') or cold.get('error')}"
        )
    if tidal.get("workers_warm"):
        out.append(f"- Tidal after the load: {tidal['workers_warm']}")
    for name, srv in suite["servers"].items():
        for c, run in srv.get("load", {}).items():
            if run["errors"]:
                out.append(f"- {name} at c={c}: errors {run['errors']} (its figures are suspect)")
    return out
