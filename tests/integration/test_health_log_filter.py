"""Issue 15 item 8: `paas logs` leaves out the access-log lines of health checks.

A real machine agent runs an app whose access log records the User-Agent (as gunicorn's
does); the agent's own checks land in it as `paas-health/1` lines. Its API leaves them out
of history and of followed lines unless `health=1`; the registry forwards `--health`; the CLI
asks for them only with --health, and drops any that an older host still sends.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from agent.machine.agent import MachineAgent
from agent.machine.run.logs import LogStore, is_health_check
from agent.machine.run.supervisor import Policy
from cli import logs as cli_logs
from common.agent_auth import SignedAuth, api_key
from common.wire import LogEvent
from tests.integration.test_agent_api import _settings
from tests.integration.test_machine_agent import _desired, _state
from tests.support.fake_registry import FakeRegistry

# Gunicorn's default access log format: h l u t "r" s b "f" "a" (the User-Agent last).
ACCESS_LOG_APP = """
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        ua = self.headers.get("User-Agent", "-")
        print(f'127.0.0.1 - - [-] "GET {self.path} HTTP/1.1" 200 2 "-" "{ua}"', flush=True)

    def log_message(self, *args):
        pass

print("app started", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

CHECK_LINE = '127.0.0.1 - - [-] "GET / HTTP/1.1" 200 2 "-" "paas-health/1"'
USER_LINE = '127.0.0.1 - - [-] "GET /cart HTTP/1.1" 200 2 "-" "Mozilla/5.0"'


def test_history_leaves_health_checks_out_only_when_asked(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    raw = tmp_path / "web" / "1.log"
    raw.parent.mkdir()
    raw.write_text("".join(f"{line}\n" for line in [USER_LINE, CHECK_LINE, CHECK_LINE, "done"]))
    store.drain_all()
    assert [e.line for e in store.history("web", health=False)] == [USER_LINE, "done"]
    assert len(store.history("web")) == 4
    # `lines` counts the app's own lines: the last 2 of them, not 2 of the checks.
    assert [e.line for e in store.history("web", lines=2, health=False)] == [USER_LINE, "done"]
    assert is_health_check(CHECK_LINE) and not is_health_check(USER_LINE)


def test_a_real_agent_hides_its_own_check_lines_unless_asked(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    auth = SignedAuth(api_key("host-secret"))

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": ACCESS_LOG_APP})
        agent = MachineAgent(
            settings, transport=registry.transport, policy=Policy(backoff_base_s=0.05)
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            await registry.until("first report", lambda: bool(registry.reports))
            base = f"http://127.0.0.1:{agent.api_server.port}"
            registry.set_desired([_desired(1, sha, serve=True)])
            await registry.until("running", lambda: _state(registry, 1) == "running")
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                # The agent's real checks, as the app logged them (User-Agent included).
                every = await _until(http, base, auth, {"health": "1"}, "paas-health/1")
                checks = [item for item in every if "paas-health/1" in item["line"]]
                assert checks and checks[0]["line"].endswith('"paas-health/1"')
                shown = await _history(http, base, auth, {})
                texts = [item["line"] for item in shown]
                assert "app started" in texts
                assert not any("paas-health/" in text for text in texts), texts

                # Followed lines: a check line is dropped, the user's request arrives.
                raw_log = settings.state_dir / "logs" / "hello" / "1.log"
                follow = asyncio.create_task(_followed(http, base, auth, {}))
                await asyncio.sleep(0.5)
                with raw_log.open("a") as out:  # as the app's O_APPEND stdout would
                    out.write(f"{CHECK_LINE}\n{USER_LINE}\n")
                followed = await asyncio.wait_for(follow, timeout=10)
                assert followed == [USER_LINE]
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())


async def _history(
    http: httpx.AsyncClient, base: str, auth: SignedAuth, params: dict[str, str]
) -> list[dict[str, Any]]:
    got = await http.get(f"{base}/v1/logs/hello", params={"lines": "1000", **params}, auth=auth)
    assert got.status_code == 200, got.text
    return [json.loads(line) for line in got.text.splitlines() if line.strip()]


async def _until(
    http: httpx.AsyncClient, base: str, auth: SignedAuth, params: dict[str, str], text: str
) -> list[dict[str, Any]]:
    for _ in range(200):
        items = await _history(http, base, auth, params)
        if any(text in item["line"] for item in items):
            return items
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never showed in the logs")


async def _followed(
    http: httpx.AsyncClient, base: str, auth: SignedAuth, params: dict[str, str]
) -> list[str]:
    """The lines followed after the history, up to the user's request line."""
    seen: list[str] = []
    live = False
    query = {"follow": "1", "lines": "1", **params}
    async with http.stream("GET", f"{base}/v1/logs/hello", params=query, auth=auth) as response:
        async for raw in response.aiter_lines():
            if not raw.strip():
                continue
            item = json.loads(raw)
            if "live" in item:
                live = True
            elif live:
                seen.append(item["line"])
                if item["line"] == USER_LINE:
                    return seen
    return seen


# ---- the registry forwards --health; the CLI asks for it and filters old hosts' lines ----


def test_the_registry_forwards_health_to_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.api.routes import logs as routes_logs
    from tests.support.registry_app import test_registry

    asked: list[dict[str, Any]] = []

    async def fake_read(client, link, path, params, queue):  # type: ignore[no-untyped-def]
        asked.append(dict(params))
        await queue.put((link.host, None))

    class Link:
        host = "m1"

    monkeypatch.setattr(routes_logs, "_read", fake_read)
    monkeypatch.setattr(routes_logs, "_links", lambda ctx, app, host: ([Link()], []))
    with test_registry(tmp_path) as reg:
        reg.create_app("web")
        assert reg.client.get("/v1/apps/web/logs", headers=reg.admin).status_code == 200
        assert reg.client.get("/v1/apps/web/logs?health=true", headers=reg.admin).status_code == 200
    assert "health" not in asked[0]
    assert asked[1]["health"] == "1"


class FakeOps:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.params: dict[str, Any] = {}

    def __enter__(self) -> FakeOps:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def logs(self, app: str, params: dict[str, Any]) -> list[LogEvent]:
        self.params = params
        return [LogEvent.model_validate(item) for item in self.items]


@pytest.mark.parametrize("flag", [None, "--health", "--all"])
def test_cli_shows_health_check_lines_only_with_the_flag(
    monkeypatch: pytest.MonkeyPatch, flag: str | None
) -> None:
    import click

    line = {"time": "2026-12-03T10:00:00.000Z", "app": "web", "instance": 1, "host": "m1"}
    ops = FakeOps([{**line, "line": CHECK_LINE}, {**line, "line": USER_LINE}])
    monkeypatch.setattr(cli_logs.RegistryClient, "from_login", classmethod(lambda cls: ops))
    group = click.Group()
    cli_logs.register(group)
    result = CliRunner().invoke(group, ["logs", "web", *([flag] if flag else [])])
    assert result.exit_code == 0, result.output
    assert USER_LINE in result.output
    if flag is None:
        assert "paas-health/" not in result.output and "health" not in ops.params
    else:
        assert CHECK_LINE in result.output and ops.params["health"] is True
