"""Capacity through the API: agents report psutil figures, `GET /v1/hosts` shows them, and a
deploy of an app declaring `memory` keeps every host within the memory it reported."""

from __future__ import annotations

from pathlib import Path

from agent.machine.capacity import measure
from tests.support.registry_app import TestRegistry, test_registry


def capacity(total: int, available: int, *, cpus: int = 2, load: float = 0.1) -> dict[str, object]:
    return {
        "cpu_count": cpus,
        "memory_total_mb": total,
        "memory_available_mb": available,
        "load_1m": load,
        # Disk figures (issue 15 item 7) are optional: a report without them shows none.
        "state_disk_mb": None,
        "disk_free_mb": None,
        "disk_total_mb": None,
    }


def _hosts(reg: TestRegistry) -> dict[str, dict[str, object]]:
    return {h["name"]: h for h in reg.client.get("/v1/hosts", headers=reg.admin).json()}


def test_reported_capacity_is_shown_and_kept_by_reports_without_it(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        token = reg.join("m1")
        assert _hosts(reg)["m1"]["capacity"] is None
        reg.report("m1", token, capacity=capacity(4096, 3000, cpus=4, load=0.5))
        assert _hosts(reg)["m1"]["capacity"] == capacity(4096, 3000, cpus=4, load=0.5)
        reg.report("m1", token)  # a report without figures keeps the last ones
        assert _hosts(reg)["m1"]["capacity"]["memory_total_mb"] == 4096  # type: ignore[index]


def test_a_hostile_capacity_is_refused(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        token = reg.join("m1")
        for bad in (capacity(-1, 0), capacity(10, 5, cpus=0), {"cpu_count": "2; rm"}):
            response = reg.client.post(
                "/v1/hosts/m1/report", json={"capacity": bad}, headers=reg.headers(token)
            )
            assert response.status_code == 422, response.text


def test_memory_declared_in_paas_toml_keeps_hosts_within_their_memory(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        tokens = {name: reg.join(name) for name in ("small", "big")}
        reg.report("small", tokens["small"], capacity=capacity(1024, 900))
        reg.report("big", tokens["big"], capacity=capacity(8192, 7000))
        reg.create_app("shop", instances=3)
        files = {"Procfile": "web: python app.py\n", "paas.toml": 'memory = "768M"\n'}
        hosts = sorted(i["host"] for i in reg.deploy("shop", files)["instances"])
        # Spread would give small one instance; it has room for exactly one 768 MiB instance.
        assert hosts == ["big", "big", "small"]
        reg.create_app("cache", instances=1)
        files = {"Procfile": "web: python app.py\n", "paas.toml": 'memory = "512M"\n'}
        [placed] = reg.deploy("cache", files)["instances"]
        assert placed["host"] == "big"  # small's 1024 MiB already hold 768 declared


def test_measure_reads_this_machine() -> None:
    figures = measure()
    assert figures.cpu_count >= 1
    assert 0 < figures.memory_available_mb <= figures.memory_total_mb
