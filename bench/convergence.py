"""Convergence: how fast the frontend follows a scale change and a host kill, with 3 real
machine hosts (network namespaces on a bridge, else 127.0.N.x), and how fast one change fans
out to many watchers (blocking queries) of one registry.

    .venv/bin/python bench/convergence.py [--tries 20] [--kills 20] [--watchers 200]
        [--write docs/BENCHMARKS.md]

Scale: from `PATCH instances` to the first answer through the frontend from the new host
(2 -> 3), or to the start of 20 answers in a row without the removed host (3 -> 2).
Host kill: from SIGKILL of every process of a host running an instance to 20 answers in a
row from the remaining hosts with the app back to 2 running instances (includes the heartbeat
TTL). Fan-out: `--watchers` concurrent `GET /v1/routing?index=N&wait=60s`; time from the
change's commit (the PATCH answered) until every watcher has returned with the new index.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import write_section  # noqa: E402
from tests.conftest import short_dir  # noqa: E402
from tests.system.multihost.cluster import BIN, FRONTEND, REGISTRY, TTL_S, MultiHostCluster  # noqa: E402
from tests.system.multihost.net import test_network  # noqa: E402
from tests.system.multihost.test_multihost import APP, APP_PY  # noqa: E402

MACHINES = ["m1", "m2", "m3"]
STREAK = 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Prober:
    def __init__(self, cluster: MultiHostCluster) -> None:
        self.url = cluster.https_url + "/"
        self.host = f"{APP}.{cluster.domain}"
        self.http = httpx.Client(verify=False, timeout=5)

    def who(self) -> str:
        try:
            r = self.http.get(
                self.url, headers={"Host": self.host}, extensions={"sni_hostname": self.host}
            )
        except httpx.HTTPError as exc:
            return f"error {type(exc).__name__}"
        text = r.text.strip()
        return text.removeprefix("host=") if r.status_code == 200 else f"status {r.status_code}"

    def until_answer_from(self, host: str, limit_s: float = 60) -> float:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.who() == host:
                return time.monotonic()
        raise RuntimeError(f"{host} never answered")

    def until_only(self, hosts: set[str], limit_s: float = 60) -> float:
        """The time the first of STREAK answers in a row from `hosts` only was received."""
        deadline = time.monotonic() + limit_s
        start, streak = 0.0, 0
        while time.monotonic() < deadline:
            got = self.who()
            now = time.monotonic()
            if got in hosts:
                start, streak = (now, 1) if streak == 0 else (start, streak + 1)
                if streak >= STREAK:
                    return start
            else:
                streak = 0
        raise RuntimeError(f"never served only from {hosts}")


def scale(cluster: MultiHostCluster, count: int) -> None:
    with cluster.client() as api:
        api.scale_app(APP, {"web": count})


def running_hosts(cluster: MultiHostCluster) -> set[str]:
    with cluster.client() as api:
        return {i.host for i in api.list_instances(APP) if i.state == "running"}


def wait_settled(cluster: MultiHostCluster, count: int, prober: Prober) -> set[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with cluster.client() as api:
            every = api.list_instances(APP)
        hosts = {i.host for i in every if i.state == "running"}
        if len(hosts) == count and cluster.routing().get(APP) == hosts:
            prober.until_only(hosts)
            return hosts
        time.sleep(0.1)
    raise RuntimeError(f"never settled at {count}\n{cluster.logs()}")


def bench_scale(cluster: MultiHostCluster, prober: Prober, tries: int) -> list[float]:
    # Warm-up, not counted: every host has run the app once (artifact unpacked, venv cached).
    wait_settled(cluster, 2, prober)
    scale(cluster, 3)
    wait_settled(cluster, 3, prober)
    scale(cluster, 2)
    times = []
    for n in range(tries):
        before = wait_settled(cluster, 2 if n % 2 == 0 else 3, prober)
        if n % 2 == 0:
            started = time.monotonic()
            scale(cluster, 3)
            [new] = set(MACHINES) - before
            times.append(prober.until_answer_from(new) - started)
        else:
            with cluster.client() as api:
                newest = max(api.list_instances(APP), key=lambda i: i.id)
            started = time.monotonic()
            scale(cluster, 2)
            times.append(prober.until_only(before - {newest.host}) - started)
        kind = "up" if n % 2 == 0 else "down"
        print(f"scale try {n} ({kind}) at {stamp(started)}: {times[-1]:.3f} s")
    return times


def stamp(monotonic: float) -> str:
    """A monotonic time as the wall-clock time the logs print, to find a try in them."""
    wall = datetime.now(UTC).timestamp() - (time.monotonic() - monotonic)
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S.%f")[:-3]


def bench_kill(
    cluster: MultiHostCluster, prober: Prober, kills: int
) -> tuple[list[float], list[float]]:
    """(time until traffic is off the dead host, time until back to 2 and served only by the
    others) per kill. The first is HAProxy's checks and retries (before the heartbeat TTL)."""
    times, off_times = [], []
    for n in range(kills):
        hosts = wait_settled(cluster, 2, prober)
        victim = sorted(hosts)[n % 2]
        started = time.monotonic()
        cluster.kill_host(victim)
        off_times.append(prober.until_only(set(MACHINES) - {victim}) - started)
        deadline = started + 120
        while True:
            alive = running_hosts(cluster) - {victim}
            if len(alive) == 2 and cluster.routing().get(APP) == alive:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no convergence after killing {victim}\n{cluster.logs()}")
            time.sleep(0.02)
        times.append(prober.until_only(alive) - started)
        print(
            f"kill try {n} ({victim}) at {stamp(started)}: traffic off it {off_times[-1]:.3f} s,"
            f" converged {times[-1]:.3f} s"
        )
        cluster.start_agent(victim)  # the host reboots: it joins again and runs nothing stale
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with cluster.client() as api:
                if next(h.state for h in api.list_hosts() if h.name == victim) == "up":
                    break
            time.sleep(0.1)
    return off_times, times


async def raw_watch(host: str, port: int, path: str, token: str) -> int:
    """One blocking query on its own connection, HTTP/1.1 by hand: a lightweight watcher
    (httpx's pool costs more CPU than the registry with hundreds of connections in one
    process, and would measure the client instead). Returns the answer's index."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        if " 200 " not in head[0] + " ":
            raise RuntimeError(f"watch answered {head[0]}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        await reader.readexactly(int(fields.get("content-length", "0")))
        return int(fields["x-paas-index"])
    finally:
        writer.close()


async def fanout_once(cluster: MultiHostCluster, watchers: int, count: int) -> float:
    token = cluster.tokens["admin_token"]
    host, port = cluster.registry_url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(
        base_url=cluster.registry_url, headers={"Authorization": f"Bearer {token}"}, timeout=90
    ) as http:
        first = await http.get("/v1/routing")
        index = int(first.headers["X-Paas-Index"])
        done_at: list[float] = []
        errors: list[str] = []
        path = f"/v1/routing?index={index}&wait=60s"

        async def watch() -> None:
            for _ in range(3):  # a dropped connection is retried (and counted)
                try:
                    seen = await raw_watch(host, int(port), path, token)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(type(exc).__name__)
                    continue
                assert seen > index, (seen, index)
                done_at.append(time.monotonic())
                return

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await asyncio.sleep(1.0)  # all parked in their blocking query
        r = await http.patch(f"/v1/apps/{APP}", json={"instances": count})
        r.raise_for_status()
        committed = time.monotonic()
        await asyncio.gather(*tasks)
        if errors:
            print(f"fan-out: {len(errors)} watcher connections dropped and retried: {errors[:3]}")
        return max(done_at) - committed


def bench_fanout(
    cluster: MultiHostCluster, prober: Prober, tries: int, watchers: int
) -> tuple[list[float], float]:
    times = []
    rss = 0.0
    registry_pid = cluster.procs[REGISTRY].popen.pid
    procs = [psutil.Process(registry_pid), *psutil.Process(registry_pid).children(recursive=True)]
    for n in range(tries):
        wait_settled(cluster, 2 if n % 2 == 0 else 3, prober)
        times.append(asyncio.run(fanout_once(cluster, watchers, 3 if n % 2 == 0 else 2)))
        rss = max(rss, sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20)
    return times, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--write", type=Path)
    parser.add_argument(
        "--only",
        choices=["scale", "kill", "fanout"],
        action="append",
        help="run only these parts (repeatable); default: all three",
    )
    parser.add_argument("--logs", type=Path, help="copy the cluster's logs here at the end")
    args = parser.parse_args()
    parts = set(args.only or ["scale", "kill", "fanout"])
    with test_network([REGISTRY, FRONTEND, *MACHINES]) as network, short_dir("paas-cv-") as state:
        cluster = MultiHostCluster(network=network, state=state, machines=list(MACHINES))
        try:
            cluster.start()
            app = state / "app"
            app.mkdir()
            (app / "Procfile").write_text("web: python app.py\n")
            (app / "app.py").write_text(APP_PY)
            (app / "paas.toml").write_text(f'[app]\nname = "{APP}"\ninstances = 2\n')
            done = subprocess.run(
                [str(BIN / "paas"), "deploy", str(app)],
                capture_output=True,
                text=True,
                timeout=300,
                env=cluster.env(),
            )
            if done.returncode != 0:
                raise SystemExit(done.stdout + done.stderr)
            prober = Prober(cluster)
            scale_times = bench_scale(cluster, prober, args.tries) if "scale" in parts else []
            fan_times, rss = [], 0.0
            if "fanout" in parts:
                fan_times, rss = bench_fanout(cluster, prober, args.tries, args.watchers)
            scale(cluster, 2)
            off_times, kill_times = [], []
            if "kill" in parts:
                off_times, kill_times = bench_kill(cluster, prober, args.kills)
        finally:
            cluster.close()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in state.glob("*.log"):
                    shutil.copy2(log, args.logs / log.name)
    ups, downs = scale_times[0::2], scale_times[1::2]
    rows = [
        (f"scale change -> frontend serves the new set ({args.tries} tries)", scale_times),
        (f"of these, 2 -> 3: a new instance on the third host ({len(ups)} tries)", ups),
        (f"of these, 3 -> 2: the frontend drops a host ({len(downs)} tries)", downs),
        (f"host kill -> no more answers from it ({args.kills} tries)", off_times),
        (f"host kill -> served only by the others, back to 2 ({args.kills} tries)", kill_times),
        (f"fan-out to {args.watchers} blocking watchers ({args.tries} tries)", fan_times),
    ]
    body = "\n".join(
        [
            "## Convergence (many hosts)",
            "",
            "Produced by `.venv/bin/python bench/convergence.py"
            f" --tries {args.tries} --kills {args.kills} --watchers {args.watchers}"
            + "".join(f" --only {part}" for part in args.only or [])
            + f" --write docs/BENCHMARKS.md` on {platform.node()} ({platform.platform()},"
            f" {psutil.cpu_count()} CPUs), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            f"3 machine hosts + registry + frontend, each in its own {network.kind} host;"
            f" heartbeat TTL {TTL_S:g} s, agents report every 0.5 s. Load average (1, 5, 15 min)"
            f" at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
            "",
            "| what | p50 | p99 | max |",
            "| --- | ---: | ---: | ---: |",
            *[
                f"| {name} | {statistics.median(v):.3f} s | {pct(v, 0.99):.3f} s | {max(v):.3f} s |"
                for name, v in rows
                if v
            ],
            "",
            *(
                [
                    f"Registry RSS during the fan-out ({args.watchers} watchers parked):"
                    f" {rss:.0f} MiB."
                ]
                if fan_times
                else []
            ),
            "A scale-up includes starting the instance (after one untimed 2 -> 3 -> 2 warm-up, so",
            "the artifact and venv are cached) and its first health check;",
            "server-set changes reach HAProxy through its runtime API (no reload).",
            '"No more answers from it" is HAProxy\'s second line (failed connections retried on',
            'another server, checks 250 ms apart after an error); "back to 2" includes the',
            "heartbeat TTL and starting the replacement. Fan-out: from the change's commit",
            "(PATCH answered) until every watcher (raw HTTP/1.1 long polls) has the new index.",
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "convergence", body)


if __name__ == "__main__":
    main()
