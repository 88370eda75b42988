"""Placement per (app, process type): each worker type spreads and sticks on its own."""

from __future__ import annotations

from controller.core.deploys import placement_key, process_counts
from controller.core.placement import HostSlot, place
from controller.store.models import App

A, B, C = HostSlot("a"), HostSlot("b"), HostSlot("c")
WEB, WORKER = placement_key("shop", "web"), placement_key("shop", "worker")


def test_counts_default_to_one_worker_per_type() -> None:
    app = App(name="shop", instances=2, process_counts={"clock": 0})
    procfile = {"web": "w", "release": "r", "worker": "q", "clock": "c"}
    assert process_counts(app, procfile) == {"web": 2, "worker": 1, "clock": 0}
    assert process_counts(App(name="shop", instances=0, process_counts={}), {"web": "w"}) == {
        "web": 0
    }


def test_worker_spreads_apart_from_web() -> None:
    """The web instance on `a` is load, not stickiness, for the worker: it goes to `b`."""
    placed = place(apps_wanting={WORKER: 1}, hosts=[A, B], current=[(WEB, "a")])
    assert placed == {WORKER: ["b"]}


def test_worker_type_sticks_to_its_own_hosts() -> None:
    current = [(WORKER, "c"), (placement_key("other", "web"), "c")]
    placed = place(apps_wanting={WORKER: 1}, hosts=[A, B, C], current=current)
    assert placed == {WORKER: ["c"]}


def test_worker_instances_spread_over_hosts() -> None:
    placed = place(apps_wanting={WORKER: 3}, hosts=[A, B], current=[(WEB, "a"), (WEB, "b")])
    assert sorted(placed[WORKER]) == ["a", "a", "b"] or sorted(placed[WORKER]) == ["a", "b", "b"]
    assert len(set(placed[WORKER][:2])) == 2  # the first two never share a host
