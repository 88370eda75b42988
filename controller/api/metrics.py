"""Prometheus metrics of the registry, served at `GET /metrics` (text exposition format).

Counters live in one process-wide `CollectorRegistry` (controller/core/metrics.py, with the
deploy counters the core updates; not prometheus_client's global one, so importing this
module never exports anything by itself). With several registry replicas
each one counts what it served and decided; sum over replicas in PromQL.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.core.metrics import REGISTRY

REQUESTS = Counter(
    "paas_registry_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "paas_registry_request_seconds",
    "Time to answer a request that is not a blocking query, by route template.",
    ["route"],
    registry=REGISTRY,
)
WATCH_WAITERS = Gauge(
    "paas_registry_watch_waiters",
    "Blocking queries (GET ...?index=N&wait=...) in flight right now.",
    registry=REGISTRY,
)


def metrics_endpoint(_request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _is_watch(scope: Scope) -> bool:
    query = scope.get("query_string", b"")
    return b"wait=" in query and scope.get("method") == "GET"


class MetricsMiddleware:
    """Counts every answered request by its route template (never the raw path: a path holds
    names, and one series per name would grow without bound)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        watch = _is_watch(scope)
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if watch:
            WATCH_WAITERS.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if watch:
                WATCH_WAITERS.dec()
            route = route_template(scope)
            REQUESTS.labels(method_label(scope["method"]), route, str(status)).inc()
            if not watch:
                REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """One of a fixed set: HTTP lets a client make up methods, and one series per made-up
    method grew /metrics from 61 KB to 1 MB under bench/hostile.py."""
    return method if method in METHODS else "other"


def route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "(unmatched)"
