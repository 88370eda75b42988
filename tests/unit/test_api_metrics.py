"""Registry /metrics: requests by route template, watch waiters, deploys by result,
scheduling time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.support.prom import metric
from tests.support.registry_app import TestRegistry, test_registry


def scrape(reg: TestRegistry) -> str:
    response = reg.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_registry_metrics_move(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        before = scrape(reg)
        reg.create_app("web")
        after = scrape(reg)
        key = {"method": "POST", "route": "/v1/apps", "status": "201"}
        assert metric(after, "paas_registry_requests_total", **key) == (
            metric(before, "paas_registry_requests_total", **key) + 1
        )
        assert "/v1/apps/web" not in after  # templates, never raw paths

        # A blocking query counts as a waiter while it waits.
        token = reg.join("m1")
        index = reg.desired("m1", token)["index"]
        waiting = threading.Thread(
            target=lambda: reg.client.get(
                f"/v1/hosts/m1/desired?index={index}&wait=3s", headers=reg.headers(token)
            ),
            daemon=True,
        )
        waiting.start()
        deadline = time.monotonic() + 5
        seen = 0.0
        while time.monotonic() < deadline and seen < 1:
            seen = metric(scrape(reg), "paas_registry_watch_waiters")
            time.sleep(0.05)
        assert seen >= 1
        waiting.join(timeout=10)

        # A deploy: placed (scheduling observed), then succeeded once its instance runs.
        counts = scrape(reg)
        placed_before = metric(counts, "paas_registry_scheduling_seconds_count")
        ok_before = metric(counts, "paas_registry_deploys_total", result="succeeded")
        failed_before = metric(counts, "paas_registry_deploys_total", result="failed")
        release = reg.deploy("web")
        iid = release["instances"][0]["id"]
        reg.report("m1", token, instances=[{"id": iid, "state": "running", "port": 20001}])
        after = scrape(reg)
        assert metric(after, "paas_registry_scheduling_seconds_count") == placed_before + 1
        assert metric(after, "paas_registry_deploys_total", result="succeeded") == ok_before + 1

        release = reg.deploy("web", {"Procfile": "web: python other.py\n"})
        iid = release["instances"][0]["id"]
        reg.report("m1", token, instances=[{"id": iid, "state": "failed", "error": "boom"}])
        after = scrape(reg)
        assert metric(after, "paas_registry_deploys_total", result="failed") == failed_before + 1
