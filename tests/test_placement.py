"""The pure placement function: sticky, spread, least loaded, only up machine hosts."""

from __future__ import annotations

from controller.placement import HostSlot, place

A, B, C = HostSlot("a"), HostSlot("b"), HostSlot("c")


def test_least_loaded_first() -> None:
    placed = place(apps_wanting={"web": 1}, hosts=[A, B], current=[("x", "a")])
    assert placed == {"web": ["b"]}


def test_sticky_prefers_hosts_running_the_app() -> None:
    current = [("web", "b"), ("x", "c"), ("y", "c")]
    placed = place(apps_wanting={"web": 1}, hosts=[A, B, C], current=current)
    assert placed == {"web": ["b"]}


def test_spread_beats_sticky() -> None:
    placed = place(apps_wanting={"web": 2}, hosts=[A, B], current=[("web", "a")])
    assert sorted(placed["web"]) == ["a", "b"]


def test_two_on_one_host_only_when_no_other_host() -> None:
    placed = place(apps_wanting={"web": 3}, hosts=[A, B], current=[])
    assert sorted(placed["web"]) == ["a", "a", "b"]
    assert place(apps_wanting={"web": 2}, hosts=[A], current=[]) == {"web": ["a", "a"]}


def test_only_up_machine_hosts() -> None:
    hosts = [HostSlot("a", state="down"), HostSlot("f", role="frontend"), HostSlot("m")]
    assert place(apps_wanting={"web": 2}, hosts=hosts, current=[]) == {"web": ["m", "m"]}


def test_no_eligible_host_gives_empty() -> None:
    hosts = [HostSlot("f", role="frontend")]
    assert place(apps_wanting={"web": 1}, hosts=hosts, current=[]) == {"web": []}


def test_staying_instances_count_for_spread() -> None:
    placed = place(
        apps_wanting={"web": 1},
        hosts=[A, B],
        current=[("web", "a")],
        staying={"web": ["a"]},
    )
    assert placed == {"web": ["b"]}


def test_several_apps_share_load() -> None:
    placed = place(apps_wanting={"p": 1, "q": 1}, hosts=[A, B], current=[])
    assert placed == {"p": ["a"], "q": ["b"]}
