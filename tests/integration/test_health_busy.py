"""Issue 15 item 1: busy is not dead. The supervisor's rule (fake clock, fake process) and
the checker's outcomes against real sockets: a refused connection, a listening socket that
never answers (a single worker stuck in a slow request), an answer."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from agent.machine.health import HealthChecker, listener_uids
from agent.machine.rollout import needs_restart
from agent.machine.run.supervisor import Policy, Supervisor
from common.wire import DesiredInstance, RouteOptions
from tests.support.ports import free_port as _free_port


class Process:
    pid = 4242

    def poll(self) -> int | None:
        return None

    def signal(self, sig: int) -> None:
        pass


class Launcher:
    def spawn(self) -> Process:
        return Process()

    def log_tail(self) -> str:
        return ""


def running(threshold: int = 3) -> Supervisor:
    sup = Supervisor(
        "web#1", Launcher(), policy=Policy(unhealthy_after=threshold, running_check_interval_s=3)
    )
    sup.start(0.0)
    sup.record_health(True, 0.1, generation=sup.generation)
    assert sup.state == "running"
    return sup


def test_busy_checks_keep_the_instance_routed_until_the_threshold() -> None:
    sup = running(threshold=3)
    for n, now in enumerate((5.0, 13.0), start=1):
        sup.record_health(False, now, generation=sup.generation, detail="no answer", verdict="busy")
        assert sup.state == "running" and sup.busy
        assert (sup.reason or "").startswith(f"busy: {n} health check(s)"), sup.reason
    sup.record_health(True, 14.0, generation=sup.generation)  # the slow request ended
    assert sup.state == "running" and not sup.busy and sup.reason is None
    for now in (20.0, 28.0, 36.0):  # unresponsive for good: out after 3 in a row
        sup.record_health(False, now, generation=sup.generation, detail="no answer", verdict="busy")
    assert sup.state == "unhealthy"


def test_a_refused_connection_is_dead_at_once() -> None:
    sup = running(threshold=3)
    sup.record_health(False, 5.0, generation=sup.generation, detail="refused", verdict="dead")
    assert sup.state == "unhealthy" and sup.reason == "refused"


def test_a_failing_answer_counts_to_the_threshold() -> None:
    sup = running(threshold=2)
    sup.record_health(False, 5.0, generation=sup.generation, detail="answered 500")
    assert sup.state == "running" and not sup.busy
    sup.record_health(False, 8.0, generation=sup.generation, detail="answered 500")
    assert sup.state == "unhealthy"


@pytest.fixture
def stuck() -> Iterator[int]:
    """A listening socket nobody accepts on: what a single worker busy for 8 s looks like."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def answering() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def probe(port: int, timeout_s: float = 0.5) -> str:
    async def run() -> str:
        checker = HealthChecker()
        try:
            return (await checker.probe(port, "/health", timeout_s=timeout_s)).outcome
        finally:
            await checker.aclose()

    return asyncio.run(run())


def test_checker_tells_refused_from_busy_from_answered(stuck: int, answering: int) -> None:
    assert probe(_free_port()) == "refused"
    assert probe(stuck) == "timeout"
    assert listener_uids(stuck)  # ...and the agent sees its socket listening: busy
    assert probe(answering) == "pass"


def _inst(**extra: object) -> DesiredInstance:
    fields: dict[str, object] = {
        "id": 1,
        "app": "shop",
        "release": 1,
        "process": "web",
        "command": "python app.py",
        "artifact_sha256": "a" * 64,
        "env": {"A": "1"},
        "health_path": "/",
        "domains": ["shop.paas.test"],
        "serve": True,
    }
    fields.update(extra)
    return DesiredInstance.model_validate(fields)


def test_only_what_the_process_sees_needs_a_restart() -> None:
    base = _inst()
    assert not needs_restart(base, _inst(serve=False, domains=["x.paas.test"]))
    assert not needs_restart(base, _inst(routing=RouteOptions(max_body_mb=5)))
    assert not needs_restart(base, _inst(health_threshold=5, health_check_timeout_s=10))
    assert needs_restart(base, _inst(env={"A": "1", "USERS_URL": "http://127.0.0.1:24001"}))
    assert needs_restart(base, _inst(memory_mb=256))
