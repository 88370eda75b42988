"""Prometheus metrics of an agent, served by agent/api_server.py at `GET /metrics`.

Counters are process-wide (one agent per process in production; tests that run several
agents in one process compare deltas). Instances by state are read from the running agent
when scraped, so they are never stale.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

RESTARTS = Counter(
    "paas_agent_instance_restarts",
    "App processes started again after they exited or failed to start.",
    registry=REGISTRY,
)
PROXY_RELOADS = Counter(
    "paas_agent_proxy_reloads",
    "Proxy configs applied, by result: reloaded, or failed (refused by the validator or the"
    " reload failed; the last good config stays).",
    ["result"],
    registry=REGISTRY,
)
RENDER_SECONDS = Histogram(
    "paas_agent_render_seconds",
    "Time to render, validate and apply a proxy config.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
for _result in ("reloaded", "failed"):
    PROXY_RELOADS.labels(_result)


class InstanceStates(Collector):
    """`paas_agent_instances{state=...}` from whatever `states()` returns at scrape time."""

    def __init__(self) -> None:
        self.states: Callable[[], Iterable[str]] = lambda: ()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "paas_agent_instances", "App instances on this host, by state.", labels=["state"]
        )
        for state, count in sorted(Tally(self.states()).items()):
            family.add_metric([state], count)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


INSTANCE_STATES = InstanceStates()
REGISTRY.register(INSTANCE_STATES)
