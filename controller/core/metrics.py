"""The registry's Prometheus collector and the counters the core updates (deploy results,
scheduling time); controller/api/metrics.py adds the HTTP ones and serves them all at
`GET /metrics`. No HTTP here, so the core can count without importing the web layer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DEPLOYS = Counter(
    "paas_registry_deploys",
    "Releases that finished deploying, by result (succeeded: became active; failed).",
    ["result"],
    registry=REGISTRY,
)
SCHEDULING_SECONDS = Histogram(
    "paas_registry_scheduling_seconds",
    "Time to place a release's instances on hosts (the placement function and its reads).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
for _result in ("succeeded", "failed"):
    DEPLOYS.labels(_result)  # present from the start, at 0
