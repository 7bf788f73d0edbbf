"""What the endpoint's Prometheus metrics cost: per observation, per request, per scrape.

    .venv/bin/python bench/metrics_bench.py [--n 200000] [--repeats 7] [--json FILE]

Times, in this process, Tidal's recording (``tidal.serving.metrics``: a ``HistogramChild``
``observe`` and ``ServingMetrics.request``, a counter add and a histogram observe with cached
children) and its scrape (``ServingMetrics.render``) with the series of two versions × two
variants × three routes × four status codes, workers, cold starts and batches. Beside them,
the same work with ``prometheus_client``'s own ``Counter`` and ``Histogram`` (children cached
the same way) and ``generate_latest`` on their registry. Each figure is the best of
``--repeats`` loops (the least disturbed by the other work of a shared machine); the median
is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidal.serving.metrics import LATENCY_BUCKETS, ServingMetrics

VARIANTS = [("iris", v, var) for v in ("3", "4") for var in ("blue", "green")]
ROUTES = ("/invocations", "/predict", "/v2/models/iris/infer")
CODES = (200, 400, 429, 500)


def timed(loop: Callable[[int], None], n: int, repeats: int) -> dict[str, float]:
    """ns per iteration: the best and the median of ``repeats`` loops of ``n``."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        loop(n)
        runs.append((time.perf_counter() - started) / n * 1e9)
    return {"best_ns": round(min(runs), 1), "median_ns": round(statistics.median(runs), 1)}


def tidal_figures(n: int, repeats: int) -> dict[str, Any]:
    metrics = ServingMetrics()
    child = metrics.duration.labels("iris", "3", "blue")

    def observe(k: int) -> None:
        record = child.observe
        for _ in range(k):
            record(0.0042)

    def request(k: int) -> None:
        record = metrics.request
        for _ in range(k):
            record("iris", "3", "blue", "/predict", 200, 0.0042)

    figures = {"observe": timed(observe, n, repeats), "request": timed(request, n, repeats)}
    for model, version, variant in VARIANTS:
        for route in ROUTES:
            for code in CODES:
                metrics.request(model, version, variant, route, code, 0.003)
        metrics.workers(model, version, variant, 2)
        metrics.cold_start(model, version, variant, 1.2)
        metrics.batch(model, version, variant, 4)
    body = metrics.render()

    def scrape(k: int) -> None:
        for _ in range(k):
            metrics.render()

    figures["scrape"] = timed(scrape, max(1, n // 100), repeats)
    figures["scrape_bytes"] = len(body)
    return figures


def prometheus_client_figures(n: int, repeats: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    variant = ["model", "version", "variant"]
    requests = Counter(
        "tidal_requests", "Requests.", [*variant, "route", "code"], registry=registry
    )
    duration = Histogram(
        "tidal_request_duration_seconds", "Time.", variant, buckets=LATENCY_BUCKETS,
        registry=registry,
    )  # fmt: skip
    workers = Gauge("tidal_workers", "Workers.", variant, registry=registry)
    child = duration.labels("iris", "3", "blue")
    cached: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def observe(k: int) -> None:
        record = child.observe
        for _ in range(k):
            record(0.0042)

    def request(k: int) -> None:
        for _ in range(k):
            key = ("iris", "3", "blue", "/predict", 200)
            children = cached.get(key)
            if children is None:
                children = cached[key] = (requests.labels(*key), duration.labels(*key[:3]))
            children[0].inc()
            children[1].observe(0.0042)

    figures = {"observe": timed(observe, n, repeats), "request": timed(request, n, repeats)}
    for labels in VARIANTS:
        for route in ROUTES:
            for code in CODES:
                requests.labels(*labels, route, code).inc()
                duration.labels(*labels).observe(0.003)
        workers.labels(*labels).set(2)

    def scrape(k: int) -> None:
        for _ in range(k):
            generate_latest(registry)

    figures["scrape"] = timed(scrape, max(1, n // 100), repeats)
    figures["scrape_bytes"] = len(generate_latest(registry))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="iterations per timed loop")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "tidal": tidal_figures(args.n, args.repeats),
        "prometheus_client": prometheus_client_figures(args.n, args.repeats),
    }
    for who in ("tidal", "prometheus_client"):
        f = result[who]
        print(
            f"{who:<18} observe {f['observe']['best_ns']:>7.0f} ns (median "
            f"{f['observe']['median_ns']:.0f})   request {f['request']['best_ns']:>7.0f} ns "
            f"(median {f['request']['median_ns']:.0f})   scrape "
            f"{f['scrape']['best_ns'] / 1000:>7.0f} µs (median "
            f"{f['scrape']['median_ns'] / 1000:.0f}, {f['scrape_bytes']} bytes)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
