"""Prometheus metrics (`GET /metrics`) and the per-request middleware that counts and logs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from projector import health, stats
from projector.config import Settings
from projector.http import Handler
from projector.storage.port import Reads, Storage, StorageStatus

access_logger = structlog.get_logger("projector.access")
logger = structlog.get_logger("projector.metrics")

# A route no resource matched (a 404): one label value, never the raw path.
UNMATCHED_ROUTE = "unmatched"
# Group commit batches hold 1..256 deliveries (writer.MAX_BATCH).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Appends take a few milliseconds (one fsync) unless the disk or the writer is slow.
APPEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StorageCollector(Collector):
    """Log head, positions, lag and fold errors, from the status the last scrape read."""

    def __init__(self) -> None:
        self.status: StorageStatus | None = None

    def collect(self) -> Iterable[Metric]:
        status = self.status
        if status is None:
            return
        yield GaugeMetricFamily(
            "projector_log_head_seq", "The last seq in the log.", value=status.log_head
        )
        position = GaugeMetricFamily(
            "projector_projection_position",
            "The last seq each projection processed.",
            labels=["projection"],
        )
        lag = GaugeMetricFamily(
            "projector_projection_lag_seconds",
            "Age of the oldest delivery a projection has not folded yet; 0 when caught up.",
            labels=["projection"],
        )
        # The count of the projection's current generation: a rebuild starts it at 0 again,
        # which Prometheus' rate() and increase() read as a counter reset.
        errors = CounterMetricFamily(
            "projector_fold_errors",
            "Deliveries a projection's fold raised on (current generation).",
            labels=["projection"],
        )
        for projection in status.projections:
            position.add_metric([projection.name], projection.position)
            lag.add_metric([projection.name], projection.lag_seconds)
            errors.add_metric([projection.name], projection.errors)
        yield from (position, lag, errors)


class Metrics:
    """Every metric of one app, in a registry of its own (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.storage = StorageCollector()
        registry.register(self.storage)
        self.deliveries = Counter(
            "projector_deliveries",
            "Deliveries stored, by environment and outcome (new, duplicate or flagged).",
            ["environment", "outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "projector_deliveries_refused",
            "Deliveries refused, by HTTP status and error code (reason).",
            ["status", "reason"],
            registry=registry,
        )
        self.append_seconds = Histogram(
            "projector_append_seconds",
            "From a delivery's body received to its durable commit.",
            buckets=APPEND_BUCKETS,
            registry=registry,
        )
        # 1 in the one process folding the log (on PostgreSQL, the projector lease's holder).
        self.folding = Gauge(
            "projector_folding",
            "1 when this process folds the log into the read models, else 0.",
            registry=registry,
        )
        self.commit_batch_size = Histogram(
            "projector_commit_batch_size",
            "Deliveries per group commit.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # Alerting (projector.alerting), counted by the process that sends.
        self.alerts_sent = Counter(
            "projector_alerts_sent",
            "Alerts POSTed to PROJECTOR_ALERT_URL and answered 2xx, by kind (a summary's count).",
            ["kind"],
            registry=registry,
        )
        self.alerts_failed = Counter(
            "projector_alerts_failed",
            "Alerts given up on after every retry failed, by kind.",
            ["kind"],
            registry=registry,
        )
        self.alerts_pending = Gauge(
            "projector_alerts_pending",
            "Alerts waiting to be sent, as the sending process last read them (else 0).",
            registry=registry,
        )
        self.http_requests = Counter(
            "projector_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        # The operator page's chart: refusals are never stored, so only the process counts them.
        self.per_minute = stats.DeliveryMinutes()
        self.http_seconds = Histogram(
            "projector_http_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=registry,
        )

    def stored(self, environment: str, *, duplicate: bool, flagged: bool) -> None:
        """Count one stored delivery; a flagged one counts as flagged only."""
        outcome = "flagged" if flagged else "duplicate" if duplicate else "new"
        self.deliveries.labels(environment, outcome).inc()
        self.per_minute.count(outcome)

    def refusal(self, status: int, reason: str) -> None:
        """Count one refused delivery."""
        self.refused.labels(str(status), reason).inc()
        self.per_minute.count("refused")

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_of(request: web.Request) -> str:
    """The route template that matched (`/v1/events/{seq}`), never the path with its values."""
    resource = request.match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


def observe_requests(metrics: Metrics, access_log: bool) -> Middleware:
    """Count and time every request by route; with `access_log`, log one line for each."""

    def observe(request: web.Request, status: int, started: float, timed: bool = True) -> None:
        elapsed = time.perf_counter() - started
        route = route_of(request)
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        if timed:
            metrics.http_seconds.labels(route).observe(elapsed)
        if access_log:
            # The template, not the path: no account id, and never a header or the body.
            access_logger.info(
                "request",
                route=route,
                method=request.method,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                remote=request.remote,
            )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            observe(request, exc.status, started)
            raise
        except Exception:  # one the inner middlewares did not turn into an answer: aiohttp's 500
            observe(request, 500, started)
            raise
        # A cancelled handler (only at shutdown: a hang-up does not cancel it) answers nothing
        # and is not counted. A streamed answer (GET /v1/changes) is counted but not timed:
        # its duration is the life of the stream, which would swamp the latency histogram.
        observe(request, response.status, started, timed=isinstance(response, web.Response))
        return response

    return middleware


def make_metrics_handler(metrics: Metrics, reads: Reads) -> Handler:
    """`GET /metrics`: the storage gauges read now (one statement of index lookups), then all."""

    async def metrics_endpoint(request: web.Request) -> web.Response:
        try:
            metrics.storage.status = await reads.storage_status(datetime.now(UTC))
        except Exception as exc:
            # The counters matter most when storage fails (storage_unavailable refusals): serve
            # them, without the storage gauges, rather than a 500 that hides everything.
            logger.warning("metrics_storage_unreadable", error=str(exc))
            metrics.storage.status = None
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics_endpoint


def install(
    app: web.Application,
    settings: Settings,
    metrics: Metrics,
    storage: Storage,
    projector: health.ProjectorWatch,
) -> None:
    """Add /metrics and /readyz, and count (and maybe log) every request, outermost."""
    # First in the chain: it sees the final status of every answer, errors and 401s included.
    app.middlewares.insert(0, observe_requests(metrics, settings.access_log))
    app[METRICS] = metrics
    app[health.PROJECTOR] = projector
    metrics.folding.set_function(lambda: float(storage.projector.active))
    app.router.add_get("/metrics", make_metrics_handler(metrics, storage.reads))
    app.router.add_get("/v1/stats", stats.make_stats_handler(metrics.per_minute, storage.reads))
    max_lag = settings.ready_max_lag_seconds
    app.router.add_get("/readyz", health.make_readyz(storage, projector, max_lag))
