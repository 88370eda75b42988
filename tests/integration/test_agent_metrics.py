"""Agent metrics: proxy reloads and failures counted where configs are applied, restarts
counted by the supervisor, and the frontend's metrics-only API serving them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.exposition import generate_latest

from agent import metrics
from agent.api_server import ApiServer, metrics_only_app
from agent.errors import ValidationFailed
from agent.machine.run.supervisor import Policy, Supervisor
from agent.proxy.config_apply import ConfigApplier
from tests.support.ports import free_port
from tests.support.prom import metric


def scrape() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_reloads_and_refusals_are_counted(tmp_path: Path) -> None:
    refuse = {"on": False}

    def validate(_staged: Path) -> None:
        if refuse["on"]:
            raise ValidationFailed("unknown keyword")

    applier = ConfigApplier(tmp_path / "conf", "main.conf", validate=validate, reload=lambda: None)
    before = scrape()
    applier.apply({"main.conf": "one\n"})
    applier.apply({"main.conf": "one\n"})  # unchanged: no reload, not counted
    refuse["on"] = True
    applier.apply({"main.conf": "two\n"})
    after = scrape()
    key = "paas_agent_proxy_reloads_total"
    assert metric(after, key, result="reloaded") == metric(before, key, result="reloaded") + 1
    assert metric(after, key, result="failed") == metric(before, key, result="failed") + 1


class Exits:
    """A launcher whose processes have exited already (status 1)."""

    pid = 4242

    def spawn(self) -> Exits:
        return self

    def poll(self) -> int | None:
        return 1

    def signal(self, sig: int) -> None:
        pass

    def log_tail(self) -> str:
        return ""


def test_restarts_are_counted() -> None:
    sup = Supervisor("t#1", Exits(), policy=Policy(backoff_base_s=0.1, max_failed_starts=5))
    before = metric(scrape(), "paas_agent_instance_restarts_total")
    sup.start(0.0)
    for tick in range(1, 20):
        sup.transition(tick * 1.0)
    assert metric(scrape(), "paas_agent_instance_restarts_total") >= before + 3


def test_frontend_metrics_api_serves_the_registry() -> None:
    async def scenario() -> None:
        port = free_port()
        server = ApiServer(metrics_only_app(), "127.0.0.1", port)
        task = asyncio.create_task(server.serve())
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                for _ in range(50):
                    try:
                        response = await http.get(f"http://127.0.0.1:{port}/metrics")
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)
                assert response.status_code == 200
                assert "paas_agent_proxy_reloads_total" in response.text
                assert (await http.get(f"http://127.0.0.1:{port}/v1/logs/x")).status_code == 404
        finally:
            await server.stop()
            await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
