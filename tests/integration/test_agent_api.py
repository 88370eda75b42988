"""The machine agent's API against a real agent (fake registry, real processes and nginx):
instance logs stamped and followed, one-off runs in the release environment with exit codes,
time limits and kill-on-disconnect, /metrics, and the registry credential."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import psutil

from agent.machine.agent import MachineAgent
from agent.machine.run.supervisor import Policy
from agent.settings import AgentSettings
from common.agent_auth import SignedAuth, api_key
from tests.integration.test_machine_agent import APP_PY, _desired, _free_port, _state
from tests.support.fake_registry import FakeRegistry
from tests.support.prom import metric

CHATTY_PY = APP_PY.replace(
    "HTTPServer((",
    "import sys\nprint('started on', os.environ['PORT'], flush=True)\n"
    "print('to stderr', file=sys.stderr, flush=True)\nHTTPServer((",
)


def _settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="join-secret",
        name="m1",
        state_dir=tmp_path / "state",
        proxy_port=_free_port(),
        heartbeat_interval_s=0.5,
        watch_wait_s=5.0,
        run_timeout_s=20,
    )


def test_agent_api_serves_logs_runs_and_metrics(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    old_bearer = hashlib.sha256(b"host-secret").hexdigest()  # what registry.db holds
    auth = SignedAuth(api_key("host-secret"))

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact(
            {"Procfile": "web: python app.py\n", "app.py": CHATTY_PY.format(version="v1")}
        )
        agent = MachineAgent(
            settings, transport=registry.transport, policy=Policy(backoff_base_s=0.05)
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            await registry.until("first report", lambda: bool(registry.reports))
            port = registry.reports[-1].api_port
            assert port is not None and port == agent.api_server.port
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                metrics = (await http.get(f"{base}/metrics")).text
                reloads_before = metric(
                    metrics, "paas_agent_proxy_reloads_total", result="reloaded"
                )

                registry.set_desired(
                    [_desired(1, sha, serve=True, env={"SOME_CONFIG": "forty-two"})]
                )
                await registry.until("running", lambda: _state(registry, 1) == "running")

                # Credential: none, a wrong one, the old sha256 bearer (derivable from the
                # registry's database), a signature by another key; then the right one.
                assert (await http.get(f"{base}/v1/logs/hello")).status_code == 401
                for header in ("Bearer " + "0" * 64, f"Bearer {old_bearer}"):
                    wrong = {"Authorization": header}
                    got = await http.get(f"{base}/v1/logs/hello", headers=wrong)
                    assert got.status_code == 401
                other = SignedAuth(api_key("another-host-token"))
                assert (await http.get(f"{base}/v1/logs/hello", auth=other)).status_code == 401
                bad = await http.get(f"{base}/v1/logs/Bad..Name", auth=auth)
                assert bad.status_code == 422

                # Logs: the app's stdout and stderr, stamped, with the instance.
                lines = await _until_lines(http, base, auth, "to stderr")
                texts = [item["line"] for item in lines]
                assert any(t.startswith("started on") for t in texts), texts
                item = lines[-1]
                assert item["instance"] == 1 and item["host"] == "m1" and item["app"] == "hello"
                assert item["time"].endswith("Z")

                # Follow: a line the app prints after we started following arrives.
                raw_log = settings.state_dir / "logs" / "hello" / "1.log"
                follow = asyncio.create_task(_first_followed(http, base, auth, "late line 7"))
                await asyncio.sleep(0.5)
                with raw_log.open("a") as out:  # as the app's O_APPEND stdout would
                    out.write("late line 7\n")
                followed = await asyncio.wait_for(follow, timeout=10)
                assert followed["line"] == "late line 7"

                # One-off run: release env (config var, venv python), exit code, both streams.
                code = (
                    "import os, sys; print(os.environ['SOME_CONFIG']); "
                    "print('oops', file=sys.stderr); print(os.path.exists('app.py')); "
                    "print(os.environ.get('PORT')); sys.exit(3)"
                )
                events = await _run(http, base, auth, ["python", "-c", code])
                out = "".join(e["data"] for e in events if e.get("stream") == "stdout")
                err = "".join(e["data"] for e in events if e.get("stream") == "stderr")
                assert out.split() == ["forty-two", "True", "None"]
                assert err.strip() == "oops"
                assert events[-1]["exit"] == 3 and events[-1]["host"] == "m1"

                # No shell: metacharacters are just arguments.
                events = await _run(http, base, auth, ["echo", "a;", "$(id)", "|", "b"])
                out = "".join(e["data"] for e in events if e.get("stream") == "stdout")
                assert out == "a; $(id) | b\n"

                # Unknown app and missing command.
                unknown = await http.post(f"{base}/v1/run/nope", json={"argv": ["true"]}, auth=auth)
                assert unknown.status_code == 404
                missing = await _run(http, base, auth, ["/nonexistent/cmd"])
                assert missing[-1]["exit"] == 127

                # Time limit: killed, exit 124.
                started = time.monotonic()
                events = await _run(
                    http, base, auth, ["python", "-c", "import time; time.sleep(60)"], timeout_s=1
                )
                assert events[-1]["exit"] == 124 and "timed out" in events[-1]["error"]
                assert time.monotonic() - started < 10

                # Caller gone: the command is killed.
                marker = f"sleeper-{os.getpid()}"
                body = {"argv": ["python", "-c", "import time; time.sleep(60)", marker]}
                async with http.stream(
                    "POST", f"{base}/v1/run/hello", json=body, auth=auth
                ) as response:
                    assert response.status_code == 200
                    await _wait_for(lambda: _running(marker), "the sleeper to start")
                await _wait_for(lambda: not _running(marker), "the sleeper to be killed", 15)

                # Metrics: instances by state, reloads counted, render time observed.
                metrics = (await http.get(f"{base}/metrics")).text
                assert metric(metrics, "paas_agent_instances", state="running") == 1
                after = metric(metrics, "paas_agent_proxy_reloads_total", result="reloaded")
                assert after > reloads_before
                assert metric(metrics, "paas_agent_render_seconds_count") > 0
                assert "paas_agent_instance_restarts_total" in metrics
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())


async def _until_lines(
    http: httpx.AsyncClient, base: str, auth: httpx.Auth, text: str
) -> list[dict]:
    deadline = time.monotonic() + 15
    while True:
        response = await http.get(f"{base}/v1/logs/hello", auth=auth)
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        if any(item["line"] == text for item in lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.2)


async def _first_followed(http: httpx.AsyncClient, base: str, auth: httpx.Auth, text: str) -> dict:
    params = {"follow": "1", "lines": "0"}
    async with http.stream("GET", f"{base}/v1/logs/hello", params=params, auth=auth) as resp:
        async for line in resp.aiter_lines():
            if line.strip():
                item = json.loads(line)
                if item.get("line") == text:
                    return item
    raise AssertionError("the follow stream ended")


async def _run(
    http: httpx.AsyncClient,
    base: str,
    auth: httpx.Auth,
    argv: list[str],
    timeout_s: float | None = None,
) -> list[dict]:
    body = {"argv": argv, "timeout_s": timeout_s}
    response = await http.post(f"{base}/v1/run/hello", json=body, auth=auth)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _running(marker: str) -> bool:
    return any(marker in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


async def _wait_for(predicate: object, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
