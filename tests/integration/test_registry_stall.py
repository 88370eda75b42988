"""Issue 14: host loss is judged against the registry's own liveness. A registry that was
stalled, just started or just became leader gives every host one TTL of grace first."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from controller.sync.liveness import Liveness, new_liveness, stall_threshold, watchdog_tick
from tests.support.registry_proc import registry_process

TTL_S = 2.0


def test_judging_waits_one_ttl_after_start_and_after_a_stall() -> None:
    ttl = 10.0
    live = new_liveness(ttl, now=100.0)
    tick = watchdog_tick(ttl)
    t = 100.0
    while t + tick < 110:  # the watchdog looks every tick; no judging within a TTL of start
        t += tick
        assert not live.may_judge(t, ttl), t
    t = 110.0
    live.look(t)
    assert live.may_judge(t, ttl)

    # The loop stalls for 30 s: the first look after it grants a full TTL from then on.
    t += 30
    assert not live.may_judge(t, ttl)  # the stall is seen by the judge itself
    stalled_until = t
    while t < stalled_until + ttl - tick:
        t += tick
        assert not live.may_judge(t, ttl), t
    t = stalled_until + ttl + tick
    assert live.may_judge(t, ttl)

    # A gap just under the threshold is no stall (a slow tick on a busy machine).
    t += stall_threshold(ttl) * 0.9
    assert live.may_judge(t, ttl)

    # Impaired (worker threads exhausted, a report failing, a new leadership): grace again.
    live.impaired(t)
    impaired_at = t
    while t + tick < impaired_at + ttl:
        t += tick
        assert not live.may_judge(t, ttl), t
    assert live.may_judge(impaired_at + ttl, ttl)


def test_a_stall_seen_first_by_the_watchdog_also_grants_grace() -> None:
    live = Liveness(started=0.0, stall_s=2.0)
    live.look(20.0)  # the watchdog woke first after a 20 s freeze
    judged = [t / 10 for t in range(200, 320, 5) if live.may_judge(t / 10, 10.0)]
    assert judged[0] == 30.0  # one full TTL after the freeze ended, not at once


def test_a_registry_stopped_longer_than_the_ttl_marks_no_live_host_down(tmp_path: Path) -> None:
    with (
        registry_process(tmp_path, heartbeat_ttl_s=TTL_S) as registry,
        httpx.Client(timeout=2) as client,
    ):
        tokens = {name: registry.join(name, client) for name in ("m1", "m2")}
        beating = {"m1", "m2"}
        stop = threading.Event()

        def heartbeats() -> None:
            """Each live host reports every 0.3 s, as its agent would (failures retried)."""
            with httpx.Client(timeout=1) as beats:
                while not stop.is_set():
                    for name in list(beating):
                        with contextlib.suppress(httpx.HTTPError):  # stopped: try again
                            beats.post(
                                f"{registry.url}/v1/hosts/{name}/report",
                                json={"instances": []},
                                headers={"Authorization": f"Bearer {tokens[name]}"},
                            )
                    stop.wait(0.3)

        beater = threading.Thread(target=heartbeats, daemon=True)
        beater.start()
        try:
            time.sleep(TTL_S * 1.5)  # past the start grace: the sweep is judging
            assert registry.hosts(client) == {"m1": "up", "m2": "up"}
            os.kill(registry.pid, signal.SIGSTOP)  # frozen for 2.5 TTLs
            time.sleep(TTL_S * 2.5)
            os.kill(registry.pid, signal.SIGCONT)
            deadline = time.monotonic() + TTL_S * 2.5
            while time.monotonic() < deadline:
                assert registry.hosts(client) == {"m1": "up", "m2": "up"}, registry.log()
                time.sleep(0.1)
            assert "missed its heartbeats" not in registry.log()
            # Seen as a stall ("was stalled"), or, when the stop came while the watchdog timed
            # a trip through the worker threads, as threads that were busy: grace either way.
            assert "every host gets one heartbeat TTL" in registry.log()

            # The judgement still works: a host that really went silent is marked down.
            beating.discard("m2")
            deadline = time.monotonic() + TTL_S * 5
            while registry.hosts(client)["m2"] != "down":
                assert time.monotonic() < deadline, "a silent host was never marked down"
                time.sleep(0.1)
            assert registry.hosts(client)["m1"] == "up"
        finally:
            stop.set()
            beater.join(timeout=10)


def test_hosts_shut_out_by_a_full_connection_cap_are_not_marked_down(tmp_path: Path) -> None:
    """A flood of served connections (long-poll watches, heads complete: nothing the edge may
    evict) fills the total connection cap, so the hosts' reports are refused too: the registry
    could not hear them, which is its trouble, not theirs."""
    with (
        registry_process(
            tmp_path,
            heartbeat_ttl_s=TTL_S,
            max_connections=40,
            max_connections_per_client=1000,
            header_timeout_s=TTL_S * 2,
        ) as registry,
        httpx.Client(timeout=2) as client,
    ):
        tokens = {name: registry.join(name, client) for name in ("m1", "m2")}
        index = client.get(f"{registry.url}/v1/hosts/m1/desired", headers=registry.admin)
        watch_head = (
            f"GET /v1/hosts/m1/desired?index={index.headers['x-paas-index']}&wait=60s HTTP/1.1"
            f"\r\nHost: registry\r\nAuthorization: Bearer {registry.admin_token}\r\n\r\n"
        ).encode()
        stop = threading.Event()
        refused = 0

        def heartbeats() -> None:
            """A new connection per report (an agent whose kept-alive one was closed)."""
            nonlocal refused
            while not stop.is_set():
                for name, token in tokens.items():
                    try:
                        httpx.post(
                            f"{registry.url}/v1/hosts/{name}/report",
                            json={"instances": []},
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=1,
                        )
                    except httpx.HTTPError:
                        refused += 1
                stop.wait(0.3)

        beater = threading.Thread(target=heartbeats, daemon=True)
        beater.start()
        flood: list[socket.socket] = []
        try:
            time.sleep(TTL_S * 1.5)
            assert registry.hosts(client) == {"m1": "up", "m2": "up"}
            until = time.monotonic() + TTL_S * 2.5  # the cap stays full for 2.5 TTLs
            while time.monotonic() < until:
                flood = [s for s in flood if s.fileno() != -1]
                while len(flood) < 200:
                    sock = socket.create_connection(
                        ("127.0.0.1", registry.port), timeout=5, source_address=("127.0.0.2", 0)
                    )
                    with contextlib.suppress(OSError):  # refused at once: closed
                        sock.sendall(watch_head)
                    flood.append(sock)
                time.sleep(0.2)
                for sock in flood[:100]:  # the registry aborted most of them: make room
                    sock.close()
            for sock in flood:
                sock.close()
            assert refused > 0  # the hosts really were shut out
            # Asked on new connections: the registry may have closed this client's idle one
            # to make room during the flood, as it may any idle keep-alive connection, and
            # may refuse a new one while the flood's closed sockets still count against the
            # cap. Only the hosts' states are judged, whenever it answers.
            client.close()
            deadline = time.monotonic() + TTL_S * 2.5
            answered = 0
            while time.monotonic() < deadline:
                try:
                    with httpx.Client(timeout=2) as after:
                        seen = registry.hosts(after)
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                assert seen == {"m1": "up", "m2": "up"}, registry.log()
                answered += 1
                time.sleep(0.1)
            assert answered >= 5, answered
            assert "missed its heartbeats" not in registry.log()
            assert "over the total connection cap" in registry.log()
        finally:
            stop.set()
            beater.join(timeout=10)
            for sock in flood:
                sock.close()


def test_slow_sockets_evicted_at_the_pending_cap_grant_no_grace(tmp_path: Path) -> None:
    """Slow sockets over the pending cap are evicted, not the hosts' reports: the registry
    hears its hosts all along, so a host that really went silent is still marked down while
    the flood goes on, and one that reports stays up."""
    sources = [f"127.0.0.{n}" for n in range(30, 34)]
    with (
        registry_process(
            tmp_path,
            heartbeat_ttl_s=TTL_S,
            max_connections=200,
            max_pending_connections=20,
            header_timeout_s=60,
        ) as registry,
        httpx.Client(timeout=2) as client,
    ):
        tokens = {name: registry.join(name, client) for name in ("m1", "m2")}
        stop = threading.Event()
        failed = 0

        def heartbeats(names: list[str]) -> None:
            nonlocal failed
            while not stop.is_set():
                for name in names:
                    try:
                        answer = httpx.post(
                            f"{registry.url}/v1/hosts/{name}/report",
                            json={"instances": []},
                            headers={"Authorization": f"Bearer {tokens[name]}"},
                            timeout=1,
                        )
                        failed += answer.status_code != 204
                    except httpx.HTTPError:
                        failed += 1
                stop.wait(0.3)

        both = threading.Thread(target=heartbeats, args=(["m1", "m2"],), daemon=True)
        both.start()
        flood: list[socket.socket] = []
        try:
            time.sleep(TTL_S * 1.5)
            assert registry.hosts(client) == {"m1": "up", "m2": "up"}
            stop.set()
            both.join(timeout=10)
            stop.clear()
            m1_only = threading.Thread(target=heartbeats, args=(["m1"],), daemon=True)
            m1_only.start()  # m2 goes silent as the flood starts
            silent_since = time.monotonic()
            state = {}
            while time.monotonic() < silent_since + TTL_S * 5:
                for n in range(20):  # 20 more slow sockets a second: each lives about 1 s
                    sock = socket.create_connection(
                        ("127.0.0.1", registry.port),
                        timeout=5,
                        source_address=(sources[n % len(sources)], 0),
                    )
                    with contextlib.suppress(OSError):
                        sock.sendall(b"POST /v1/apps HTTP/1.1\r\nHost: registry\r\n")
                    flood.append(sock)
                    time.sleep(0.05)  # the flood's pace, not a wait for a condition
                with httpx.Client(timeout=2) as once:  # a kept-alive idle one may be evicted
                    state = registry.hosts(once)
                if state.get("m2") == "down":
                    break
            assert state == {"m1": "up", "m2": "down"}, state
            assert failed == 0
            assert "evicted: oldest still waiting for its headers" in registry.log()
        finally:
            stop.set()
            for sock in flood:
                sock.close()
