"""The endpoint's Prometheus metrics: recorded here, exposed by ``prometheus_client``.

    registry = Registry()
    hits = registry.counter("tidal_hits_total", "Requests answered.", ["route", "code"])
    hits.labels("/predict", 200).inc()
    registry.render()  # b'# HELP tidal_hits_total Requests answered.\\n# TYPE ...'

Recording stays here because it is the per-request path: ``labels(*values)`` returns a child
cached under the exact values given (label values are rendered with ``str``), so recording is
one dict lookup and one locked add. On this project's 2-core VM an ``observe`` costs about
0.4 µs and ``ServingMetrics.request`` 1.0 µs, against 1.7 µs and 3.1 µs with
``prometheus_client``'s own Counter and Histogram (bench/metrics_bench.py). Each child has its
own lock, because ``+=`` from two threads can lose an update (``Gauge.set`` is a single store
and takes none). The exposition is ``prometheus_client``'s: ``Registry`` is a collector whose
``collect`` hands every child's value to its metric families, and ``render`` is
``generate_latest`` (text format 0.0.4, escaping and number formatting as Prometheus reads
them). That costs the scrape, not the request: about 4 ms for the
~500 samples of two versions × two variants (0.2 ms when this module wrote the text itself),
once per Prometheus scrape interval. ``render`` may run in any thread; a histogram is read
under its lock, so its ``_count`` always equals its ``+Inf`` bucket.

``ServingMetrics`` is the endpoint's set, the names a dashboard and alert rules rely on: every
per-variant series carries ``model``, ``version`` and ``variant`` (empty for a request refused
before a variant was chosen), and ``forget_version`` drops the series of a version no longer
served, so retired versions do not linger as stale gauges.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# -- children: one per label set ----------------------------------------------------------------


class CounterChild:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up; inc({amount}) is negative (use a gauge)")
        lock = self._lock  # acquire + try/finally: the same safety as `with` at half its cost
        lock.acquire()
        try:
            self.value += amount
        finally:
            lock.release()


class GaugeChild:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self._lock.acquire()
        try:
            self.value += amount
        finally:
            self._lock.release()

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)


class HistogramChild:
    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum: float = 0.0

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)  # the first bound >= value: le is inclusive
        lock = self._lock
        lock.acquire()
        try:
            self.counts[index] += 1
            self.sum += value
        finally:
            lock.release()

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.sum


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


# -- metrics: a name, its help, its label names and its children --------------------------------


class _Metric(Generic[C]):
    kind: ClassVar[str]
    reserved: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}: use letters, digits, '_' and ':'")
        for label in labelnames:
            if not _LABEL.fullmatch(label) or label.startswith("__") or label in self.reserved:
                raise ValueError(f"invalid label name {label!r} for metric {name}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], C] = {}  # by label values as rendered
        self._cache: dict[tuple[object, ...], C] = {}  # by the values as passed to labels()
        if not self.labelnames:
            self.labels()

    def _new(self) -> C:
        raise NotImplementedError

    def labels(self, *values: object) -> C:
        """The child for these label values (in ``labelnames`` order), created on first use."""
        try:
            return self._cache[values]
        except KeyError:
            return self._add(values)

    def _add(self, values: tuple[object, ...]) -> C:
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"{self.name} takes {len(self.labelnames)} label values "
                f"({', '.join(self.labelnames) or 'none'}), got {len(values)}"
            )
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new()
            self._cache[values] = child
        return child

    def remove_where(self, **match: str) -> int:
        """Drop every child whose labels equal ``match``; the number dropped."""
        where = [(self.labelnames.index(n), v) for n, v in match.items() if n in self.labelnames]
        if len(where) != len(match):
            return 0
        with self._lock:
            gone = [k for k in self._children if all(k[i] == v for i, v in where)]
            for key in gone:
                del self._children[key]
            if gone:  # rebuild the alias cache without the dropped children
                kept = set(map(id, self._children.values()))
                self._cache = {k: c for k, c in self._cache.items() if id(c) in kept}
        return len(gone)

    def _items(self) -> list[tuple[list[str], C]]:
        with self._lock:
            return [(list(k), c) for k, c in self._children.items()]

    def family(self) -> Metric:
        """This metric and every child's value, as a ``prometheus_client`` metric family."""
        raise NotImplementedError


class Counter(_Metric[CounterChild]):
    kind = "counter"

    def _new(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def family(self) -> Metric:
        from prometheus_client.metrics_core import CounterMetricFamily

        found = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._items():
            found.add_metric(values, child.value)
        return found


class Gauge(_Metric[GaugeChild]):
    kind = "gauge"

    def _new(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self.labels().set(value)

    def family(self) -> Metric:
        from prometheus_client.metrics_core import GaugeMetricFamily

        found = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._items():
            found.add_metric(values, child.value)
        return found


class Histogram(_Metric[HistogramChild]):
    kind = "histogram"
    reserved = frozenset({"le"})

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name} needs increasing, distinct bucket bounds")
        self.bounds = bounds
        self._les = [repr(b) for b in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames)

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def family(self) -> Metric:
        from prometheus_client.metrics_core import HistogramMetricFamily

        found = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._items():
            counts, total = child.snapshot()
            found.add_metric(
                values, list(zip(self._les, itertools.accumulate(counts), strict=True)), total
            )
        return found


M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    """The metrics one endpoint exposes, rendered together in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, documentation, labelnames))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, documentation, labelnames))

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._register(Histogram(name, documentation, labelnames, buckets=buckets))

    def metrics(self) -> list[Counter | Gauge | Histogram]:
        return list(self._metrics.values())

    def collect(self) -> Iterator[Metric]:
        """Every metric's family, in registration order (the ``prometheus_client`` collector
        interface: a ``CollectorRegistry`` can register this registry)."""
        for metric in self.metrics():
            yield metric.family()

    def render(self) -> bytes:
        """The text exposition format 0.0.4, written by ``prometheus_client``."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self)  # type: ignore[arg-type]


# -- the endpoint's metrics -------------------------------------------------------------------

VARIANT = ("model", "version", "variant")


class ServingMetrics:
    """What the gateway records, one method per event; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "tidal_requests_total", "Requests answered, by route and status code.",
            [*VARIANT, "route", "code"],
        )  # fmt: skip
        self.duration = r.histogram(
            "tidal_request_duration_seconds", "Time from request to answer.", VARIANT,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.errors = r.counter(
            "tidal_errors_total", "Requests answered with a 5xx status.", [*VARIANT, "code"]
        )
        self.rejections = r.counter(
            "tidal_rejected_total", "Requests refused before a model saw them.", ["reason"]
        )
        self.cold_starts = r.counter(
            "tidal_cold_starts_total", "Model workers started from nothing.", VARIANT
        )
        self.cold_start_seconds = r.histogram(
            "tidal_cold_start_seconds", "Time for a worker to load its model and be ready.",
            VARIANT, buckets=COLD_START_BUCKETS,
        )  # fmt: skip
        self.worker_count = r.gauge("tidal_workers", "Model workers running now.", VARIANT)
        self.restarts = r.counter(
            "tidal_worker_restarts_total", "Model workers restarted, by reason (crash, memory).",
            [*VARIANT, "reason"],
        )  # fmt: skip
        self.batch_size = r.histogram(
            "tidal_batch_size", "Rows per call to the model.", VARIANT, buckets=BATCH_BUCKETS
        )
        self.in_flight_requests = r.gauge(
            "tidal_in_flight_requests", "Requests being answered now."
        )
        self.capture_records = r.counter(
            "tidal_capture_records_total", "Captured request rows written to the store.", VARIANT
        )
        self.capture_drops = r.counter(
            "tidal_capture_dropped_total",
            "Captured request rows lost, by reason (buffer_full, store_error, shutdown).",
            [*VARIANT, "reason"],
        )
        # one lookup per request instead of three: (total, duration, errors or None) by key
        self._per_request: dict[
            tuple[str, str, str, str, int], tuple[CounterChild, HistogramChild, CounterChild | None]
        ] = {}

    def request(
        self, model: str, version: str, variant: str, route: str, status: int, seconds: float
    ) -> None:
        key = (model, version, variant, route, status)
        children = self._per_request.get(key)
        if children is None:
            children = self._per_request[key] = (
                self.requests.labels(model, version, variant, route, status),
                self.duration.labels(model, version, variant),
                self.errors.labels(model, version, variant, status) if status >= 500 else None,
            )
        total, duration, errors = children
        total.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def cold_start(self, model: str, version: str, variant: str, seconds: float) -> None:
        self.cold_starts.labels(model, version, variant).inc()
        self.cold_start_seconds.labels(model, version, variant).observe(seconds)

    def workers(self, model: str, version: str, variant: str, n: int) -> None:
        self.worker_count.labels(model, version, variant).set(n)

    def worker_restart(self, model: str, version: str, variant: str, reason: str) -> None:
        self.restarts.labels(model, version, variant, reason).inc()

    def batch(self, model: str, version: str, variant: str, size: int) -> None:
        self.batch_size.labels(model, version, variant).observe(size)

    def in_flight(self, n: int) -> None:
        self.in_flight_requests.set(n)

    def captured(self, model: str, version: str, variant: str, n: int) -> None:
        self.capture_records.labels(model, version, variant).inc(n)

    def capture_dropped(self, model: str, version: str, variant: str, n: int, reason: str) -> None:
        self.capture_drops.labels(model, version, variant, reason).inc(n)

    def forget_version(self, model: str, version: str) -> int:
        """Drop every series of ``model`` ``version`` (retired); the number dropped."""
        self._per_request = {
            k: c for k, c in self._per_request.items() if (k[0], k[1]) != (model, version)
        }
        return sum(m.remove_where(model=model, version=version) for m in self.registry.metrics())

    def render(self) -> bytes:
        return self.registry.render()
