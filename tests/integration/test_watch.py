"""Blocking queries: the pure parts, the wait logic, and the real API behaviour."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import Invalid
from controller.sync.watch import LocalNotifier, parse_wait, wait_past
from tests.support.registry_app import TestRegistry, test_registry


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("7", 7.0),
        ("0s", 0.0),
        ("301s", 300.0),
        ("99999s", 300.0),
        (None, 30.0),
    ],
)
def test_parse_wait(text: str | None, seconds: float) -> None:
    assert parse_wait(text) == seconds


@pytest.mark.parametrize("text", ["-1s", "1h", "abc", "1.5s", "s", "10 s"])
def test_parse_wait_rejects(text: str) -> None:
    with pytest.raises(Invalid, match="invalid wait"):
        parse_wait(text)


def test_wait_past_returns_at_once_when_behind() -> None:
    async def main() -> int:
        return await wait_past(3, lambda: 5, notifier=LocalNotifier(), wait_s=10)

    assert asyncio.run(main()) == 5


def test_wait_past_index_zero_answers_now() -> None:
    async def main() -> int:
        return await wait_past(0, lambda: 0, notifier=LocalNotifier(), wait_s=10)

    assert asyncio.run(main()) == 0


def test_wait_past_wakes_on_notify_from_another_thread() -> None:
    notifier, value = LocalNotifier(), [4]

    def commit_later() -> None:
        time.sleep(0.05)
        notifier.notify()  # nothing changed yet: the watcher goes back to waiting
        time.sleep(0.05)
        value[0] = 5
        notifier.notify()

    async def main() -> int:
        thread = threading.Thread(target=commit_later)
        thread.start()
        try:
            return await wait_past(4, lambda: value[0], notifier=notifier, wait_s=10)
        finally:
            thread.join()

    assert asyncio.run(main()) == 5


def test_wait_past_times_out_with_same_index() -> None:
    async def main() -> int:
        return await wait_past(4, lambda: 4, notifier=LocalNotifier(), wait_s=0.05)

    assert asyncio.run(main()) == 4


def test_wait_past_answers_at_once_after_a_reset() -> None:
    async def main() -> int:
        return await wait_past(9, lambda: 2, notifier=LocalNotifier(), wait_s=10)

    assert asyncio.run(main()) == 2


# ---- over the API ---------------------------------------------------------------------


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        yield registry


def test_api_watch_returns_at_once_when_index_behind(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    started = time.monotonic()
    response = reg.client.get("/v1/hosts/m1/desired?index=1&wait=20s", headers=reg.headers(token))
    assert time.monotonic() - started < 10  # did not wait out the 20 s
    index = int(response.headers["X-Paas-Index"])
    assert index > 1 and response.json()["index"] == index


def test_api_watch_times_out_with_same_index(reg: TestRegistry) -> None:
    token = reg.join("m1")
    index = reg.desired("m1", token)["index"]
    response = reg.client.get(
        f"/v1/hosts/m1/desired?index={index}&wait=100ms", headers=reg.headers(token)
    )
    assert response.status_code == 200
    assert int(response.headers["X-Paas-Index"]) == index == response.json()["index"]


def test_api_watch_wakes_on_change(reg: TestRegistry) -> None:
    token = reg.join("m1")
    index = reg.desired("m1", token)["index"]
    result: dict = {}

    def watcher() -> None:
        response = reg.client.get(
            f"/v1/hosts/m1/desired?index={index}&wait=20s", headers=reg.headers(token)
        )
        result["response"] = response

    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        time.sleep(0.2)
        assert "response" not in result  # still waiting
        reg.create_app("hello")
        reg.deploy("hello")
    finally:
        thread.join(timeout=10)
    response = result["response"]
    assert response.json()["index"] > index
    # it woke on the first change (app created), possibly before the deploy
    assert int(response.headers["X-Paas-Index"]) == response.json()["index"]


def test_api_reports_do_not_wake_desired_watches(reg: TestRegistry) -> None:
    token = reg.join("m1")
    index = reg.desired("m1", token)["index"]
    reg.report("m1", token, instances=[])
    response = reg.client.get(
        f"/v1/hosts/m1/desired?index={index}&wait=100ms", headers=reg.headers(token)
    )
    assert response.json()["index"] == index


def test_api_release_watch_wakes_on_report(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    release = reg.deploy("hello")
    [iid] = [i["id"] for i in release["instances"]]
    first = reg.client.get("/v1/apps/hello/releases/1", headers=reg.admin)
    seq = int(first.headers["X-Paas-Index"])
    result: dict = {}

    def watcher() -> None:
        result["response"] = reg.client.get(
            f"/v1/apps/hello/releases/1?index={seq}&wait=20s", headers=reg.admin
        )

    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        time.sleep(0.1)
        reg.report("m1", token, instances=[{"id": iid, "state": "installing"}])
    finally:
        thread.join(timeout=10)
    response = result["response"]
    assert int(response.headers["X-Paas-Index"]) > seq
    assert response.json()["stage"] == "installing"


def test_api_bad_wait_is_422(reg: TestRegistry) -> None:
    response = reg.client.get("/v1/routing?wait=forever", headers=reg.admin)
    assert response.status_code == 422 and "invalid wait" in response.json()["detail"]
    assert reg.client.get("/v1/routing?index=-1", headers=reg.admin).status_code == 422


def test_answer_cache_builds_once_per_index_for_concurrent_watchers(reg: TestRegistry) -> None:
    """Many watchers woken by one change share one build and the same bytes."""
    from common.wire import RoutingTable
    from controller.sync.answer_cache import AnswerCache

    db = reg.client.app.state.ctx.db  # type: ignore[attr-defined]
    cache = AnswerCache()
    builds: list[int] = []

    def build(_session: object, index: int) -> RoutingTable:
        builds.append(index)
        time.sleep(0.05)  # a slow build: the others must wait for it, not build again
        return RoutingTable(index=index, apps=[])

    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.get(db, "routing", build).body))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(builds) == 1 and len(set(answers)) == 1 and len(answers) == 20
    first = cache.get(db, "routing", build, current=builds[0])
    assert first.index == builds[0] and len(builds) == 1  # the index read: no database read
    reg.create_app("hello")  # a change: the next answer is built for the new index
    assert cache.get(db, "routing", build).index > first.index and len(builds) == 2


def test_api_routing_answers_are_shared_bytes(reg: TestRegistry) -> None:
    reg.create_app("hello")
    first = reg.client.get("/v1/routing", headers=reg.admin)
    second = reg.client.get("/v1/routing", headers=reg.admin)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.headers["X-Paas-Index"] == second.headers["X-Paas-Index"]
    assert first.headers["content-type"] == "application/json"
    assert first.json()["index"] == int(first.headers["X-Paas-Index"])
