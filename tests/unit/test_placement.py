"""The pure placement function: sticky, spread, least loaded, only up machine hosts."""

from __future__ import annotations

from controller.core.placement import HostSlot, place

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


def test_constraints_pick_hosts_by_label() -> None:
    hosts = [HostSlot("a", labels={"zone": "a"}), HostSlot("b", labels={"zone": "b"}), C]
    placed = place(
        apps_wanting={"web": 2, "other": 1},
        hosts=hosts,
        current=[],
        constraints={"web": {"zone": "b"}},
    )
    assert placed["web"] == ["b", "b"]  # the only matching host, even twice
    assert placed["other"] == ["a"]


def test_no_host_matching_the_constraints_gives_empty() -> None:
    placed = place(
        apps_wanting={"web": 1}, hosts=[A, B], current=[], constraints={"web": {"gpu": "1"}}
    )
    assert placed == {"web": []}


def test_full_hosts_are_skipped_and_overloaded_ones_come_last() -> None:
    full = HostSlot("a", free_memory_mb=10)
    busy = HostSlot("b", load_per_cpu=3.0)
    calm = HostSlot("c", load_per_cpu=0.2, free_memory_mb=4000)
    assert place(apps_wanting={"web": 1}, hosts=[full, busy, calm], current=[]) == {"web": ["c"]}
    assert place(apps_wanting={"web": 2}, hosts=[full, busy], current=[]) == {"web": ["b", "b"]}


def test_a_host_is_never_given_more_than_its_memory_holds() -> None:
    small = HostSlot("a", memory_total_mb=500, free_memory_mb=450)
    big = HostSlot("b", memory_total_mb=4000, free_memory_mb=3500)
    need = {"web": 256, "db": 300}
    # a already runs db (300 of its 500 MiB declared): one 256 MiB instance does not fit.
    placed = place(
        apps_wanting={"web": 3}, hosts=[small, big], current=[("db", "a")], memory_mb=need
    )
    assert placed == {"web": ["b", "b", "b"]}
    # Nothing has room for a 5 GiB instance: the app gets fewer (here none) for now.
    assert place(
        apps_wanting={"huge": 2}, hosts=[small, big], current=[], memory_mb={"huge": 5000}
    ) == {"huge": []}


def test_reported_available_memory_also_limits() -> None:
    tight = HostSlot("a", memory_total_mb=8000, free_memory_mb=300)  # others use it
    roomy = HostSlot("b", memory_total_mb=8000, free_memory_mb=6000)
    placed = place(
        apps_wanting={"web": 2}, hosts=[tight, roomy], current=[], memory_mb={"web": 256}
    )
    assert placed == {"web": ["b", "b"]}


def test_ties_prefer_the_host_with_more_free_room() -> None:
    a = HostSlot("a", memory_total_mb=2000, free_memory_mb=1500)
    b = HostSlot("b", memory_total_mb=8000, free_memory_mb=7000)
    assert place(apps_wanting={"web": 1}, hosts=[a, b], current=[]) == {"web": ["b"]}
    # Spread still comes first: the second instance goes to the smaller host.
    assert sorted(place(apps_wanting={"web": 2}, hosts=[a, b], current=[])["web"]) == ["a", "b"]


def test_undeclared_memory_places_as_before() -> None:
    a = HostSlot("a", memory_total_mb=100, free_memory_mb=90)
    assert place(apps_wanting={"web": 2}, hosts=[a], current=[]) == {"web": ["a", "a"]}
