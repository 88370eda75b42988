"""Hostile clients against the registry while apps serve (issue 14), on a LocalCluster with
free ports.

    .venv/bin/python bench/hostile.py [--duration 60] [--slowloris 20000] [--body-mb 1024]
        [--bombs 40] [--write docs/BENCHMARKS.md]

Two apps (examples/hello) answer a request loop each through the frontend (HTTPS, HAProxy ->
nginx -> app). Then, one after another, each for `--duration` seconds and each from its own
process (bench/hostile_attacks.py): `--slowloris` slow connections to the registry from
127.0.0.2..127.0.0.41, `--body-mb` of oversized bodies without a token (50 MB each, 4 at
once), and `--bombs` concurrent gzip-bomb uploads and releases with one app's deploy token.
Measured for each: failed requests of the loops, hosts marked down (GET /v1/hosts every
second and the registry's log), instances restarted (the machine agent's run records, pid
and start time, before and after), the registry's peak RSS (VmHWM, reset per attack) and a
legitimate `GET /v1/apps` with the admin token every 100 ms on a new connection, as the CLI
makes one (p50/p99/max; a refused probe counts as an infinite latency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import hostile_attacks as attacks  # noqa: E402
from bench.ports import free_ports  # noqa: E402
from bench.report import write_section  # noqa: E402
from cli.local import FRONTEND, MACHINE, REGISTRY, LocalCluster, Ports  # noqa: E402
from tests.support.request_loop import RequestLoop  # noqa: E402

PAAS = str(Path(sys.executable).parent / "paas")
APPS = ("alpha", "beta")
BOMB_APP = "beta"  # its deploy token uploads the bombs
SLOW_SOURCES = [f"127.0.0.{n}" for n in range(2, 42)]
SLOW_PROCESSES = 4
BODY_MB, BODY_PARALLEL = 50, 4
PROBE_EVERY_S = 0.1
RSS_LIMIT_MB, P99_LIMIT_S = 300, 1.0
AGENT_MISSES = ("registry unreachable", "unreachable (", "could not report")
EDGE_LINE = re.compile(r"(\d+) (over the total connection cap|over the per-client connection cap"
                       r"|closed: headers not complete in time"
                       r"|evicted: oldest still waiting for its headers)")  # fmt: skip


def deploy(cluster: LocalCluster, base: Path, name: str) -> None:
    app = base / name
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "paas.toml").write_text(f'[app]\nname = "{name}"\nhealth_path = "/health"\n')
    done = subprocess.run(
        [PAAS, "deploy", str(app), "--timeout", "300"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=320,
    )
    if done.returncode != 0:
        raise SystemExit(f"deploy of {name} failed:\n{done.stdout}{done.stderr}")


def deploy_token(cluster: LocalCluster, app: str) -> str:
    response = httpx.post(
        f"{cluster.registry_url}/v1/tokens",
        json={"scope": "deploy", "app": app, "name": "hostile-bench"},
        headers={"Authorization": f"Bearer {cluster.tokens()['admin_token']}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["token"])


def run_records(cluster: LocalCluster) -> dict[str, tuple[int, float]]:
    """Instance id -> (pid, start time) from the machine agent's run records."""
    found = {}
    for path in (cluster.state_dir / MACHINE / "run").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            found[path.stem] = (int(record["pid"]), float(record["create_time"]))
    return found


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


# ---- measuring -------------------------------------------------------------------------------

Probe = tuple[float, float | None, str]  # (started, seconds or None if failed, failure)


@dataclass
class Latency:
    count: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    p50_s: float = 0.0  # a failed probe counts as an infinite latency
    p99_s: float = 0.0
    max_s: float = 0.0
    answered_p99_s: float = 0.0  # the probes that got an answer only

    @classmethod
    def of(cls, window: list[Probe]) -> Latency:
        latencies = [took if took is not None else float("inf") for _, took, _ in window]
        answered = [took for _, took, _ in window if took is not None]
        return cls(
            count=len(window),
            failures=Counter(why for _, _, why in window if why),
            p50_s=quantile(latencies, 0.5),
            p99_s=quantile(latencies, 0.99),
            max_s=max(latencies, default=0.0),
            answered_p99_s=quantile(answered, 0.99),
        )

    def text(self) -> str:
        failed = sum(self.failures.values())
        return f"{ms(self.p50_s)} / {ms(self.p99_s)} / {ms(self.max_s)} ({failed} of {self.count})"


class Watch:
    """In a thread: a new-connection GET /v1/apps every PROBE_EVERY_S, the registry's RSS and
    open descriptors at the same pace, GET /v1/hosts every second. Samples are timestamped so
    each attack reads its own window."""

    def __init__(self, cluster: LocalCluster, pid: int, *, max_s: float) -> None:
        self.url = cluster.registry_url
        self.auth = {"Authorization": f"Bearer {cluster.tokens()['admin_token']}"}
        self.pid = pid
        self.max_s = max_s
        self.probes: list[Probe] = []  # new connection each: what the CLI does
        self.kept: list[Probe] = []  # one kept-alive connection: what an agent does
        self.resources: list[tuple[float, int, int]] = []  # (at, VmRSS kB, open fds)
        self.hosts: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def reset_peak(self) -> None:
        """Start the registry's VmHWM again from its current RSS (clear_refs, as root)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self, t0: float, t1: float) -> float:
        sampled = max((kb for at, kb, _ in self.resources if t0 <= at <= t1), default=0)
        return max(sampled, proc_status_kb(self.pid, "VmHWM")) / 1024

    def _probe(self, client: httpx.Client | None, into: list[Probe]) -> None:
        """One GET /v1/apps: on a new connection (client None) or on `client`'s."""
        started = time.monotonic()
        try:
            if client is None:
                answer = httpx.get(f"{self.url}/v1/apps", headers=self.auth, timeout=10)
            else:
                answer = client.get("/v1/apps")
            failure = "" if answer.status_code == 200 else f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        took = time.monotonic() - started
        into.append((started, None if failure else took, failure))

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        next_hosts = 0.0
        with httpx.Client(base_url=self.url, headers=self.auth, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                tick = time.monotonic()
                self._probe(None, self.probes)
                self._probe(client, self.kept)
                with contextlib.suppress(OSError, ValueError):
                    fds = len(os.listdir(f"/proc/{self.pid}/fd"))
                    self.resources.append((tick, proc_status_kb(self.pid, "VmRSS"), fds))
                if tick >= next_hosts:
                    next_hosts = tick + 1.0
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        listed = client.get("/v1/hosts").json()
                        self.hosts.append((tick, {h["name"]: h["state"] for h in listed}))
                self._stop.wait(max(0.0, tick + PROBE_EVERY_S - time.monotonic()))


@dataclass
class Phase:
    name: str
    attacker: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    hosts_down_seen: set[str] = field(default_factory=set)
    marked_down_lines: int = 0
    restarted: list[str] = field(default_factory=list)
    instances: int = 0  # run records compared (instance pids before and after)
    host_polls: int = 0  # answers of GET /v1/hosts in the window
    rss_peak_mb: float = 0.0
    fds_peak: int = 0
    api: Latency = field(default_factory=Latency)  # new connection per probe
    kept: Latency = field(default_factory=Latency)  # one kept-alive connection
    edge: Counter[str] = field(default_factory=Counter)
    agent_misses: int = 0  # agents' log lines: the registry could not be reached

    def passed(self) -> bool:
        return (
            not self.failed
            and not self.hosts_down_seen
            and not self.marked_down_lines
            and not self.restarted
            and self.api.p99_s < P99_LIMIT_S
            and self.rss_peak_mb < RSS_LIMIT_MB
        )


class Bench:
    def __init__(self, cluster: LocalCluster, loops: list[RequestLoop], watch: Watch) -> None:
        self.cluster, self.loops, self.watch = cluster, loops, watch

    def _log_sizes(self) -> dict[str, int]:
        return {n: self.cluster.log_path(n).stat().st_size for n in (REGISTRY, MACHINE, FRONTEND)}

    def _log_since(self, name: str, offset: int) -> str:
        with self.cluster.log_path(name).open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def settle(self, baseline_fds: int) -> None:
        """Until the registry holds about as many descriptors as before the attack (≤ 30 s)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if len(os.listdir(f"/proc/{self.watch.pid}/fd")) <= baseline_fds + 20:
                    break
            time.sleep(0.2)
        time.sleep(2)

    def run(self, name: str, attack: Callable[[], dict[str, Any]]) -> Phase:
        print(f"{name} ...", flush=True)
        phase = Phase(name)
        logs_from = self._log_sizes()
        pids = run_records(self.cluster)
        sent = [loop.sent for loop in self.loops]
        baseline_fds = len(os.listdir(f"/proc/{self.watch.pid}/fd"))
        self.watch.reset_peak()
        t0 = time.monotonic()
        phase.attacker = attack()
        t1 = time.monotonic()
        phase.rss_peak_mb = self.watch.peak_rss_mb(t0, t1)
        self.settle(baseline_fds)
        t2 = time.monotonic()
        phase.sent = sum(loop.sent - before for loop, before in zip(self.loops, sent, strict=True))
        for loop in self.loops:
            phase.failed += [r for at, r in zip(loop.failed_at, loop.failures, strict=False)
                             if t0 <= at <= t2]  # fmt: skip
        for at, states in self.watch.hosts:
            if t0 <= at <= t2:
                phase.host_polls += 1
                phase.hosts_down_seen |= {h for h, state in states.items() if state != "up"}
        lines = self._log_since(REGISTRY, logs_from[REGISTRY])
        for agent in (MACHINE, FRONTEND):
            text = self._log_since(agent, logs_from[agent])
            phase.agent_misses += sum(
                1 for line in text.splitlines() if any(m in line for m in AGENT_MISSES)
            )
        phase.marked_down_lines = lines.count(": marked down")
        for count, why in EDGE_LINE.findall(lines):
            phase.edge[why] += int(count)
        after = run_records(self.cluster)
        phase.instances = len(pids)
        phase.restarted = sorted(
            set(pids) ^ set(after) | {i for i in pids if after.get(i) != pids[i]}
        )
        phase.fds_peak = max((f for at, _, f in self.watch.resources if t0 <= at <= t1), default=0)
        phase.api = Latency.of([p for p in self.watch.probes if t0 <= p[0] <= t1])
        phase.kept = Latency.of([p for p in self.watch.kept if t0 <= p[0] <= t1])
        print(f"  {summary(phase)}", flush=True)
        return phase


def summary(p: Phase) -> str:
    return (
        f"app requests {len(p.failed)} failed of {p.sent}; hosts down {len(p.hosts_down_seen)}"
        f" (log: {p.marked_down_lines}, {p.host_polls} polls); restarted {len(p.restarted)}"
        f" of {p.instances}; registry RSS peak"
        f" {p.rss_peak_mb:.0f} MB, fds peak {p.fds_peak}; GET /v1/apps p50/p99/max (failed):"
        f" new connections {p.api.text()}, kept-alive {p.kept.text()};"
        f" agents missed the registry {p.agent_misses}x;"
        f" attacker: {json.dumps(p.attacker)}"
    )


def ms(seconds: float) -> str:
    return "refused" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


# ---- attacks ---------------------------------------------------------------------------------


def slowloris(port: int, count: int, duration: float) -> dict[str, Any]:
    share = [count // SLOW_PROCESSES + (i < count % SLOW_PROCESSES) for i in range(SLOW_PROCESSES)]
    started = [
        attacks.run_in_process(
            attacks.slowloris, port, SLOW_SOURCES[i::SLOW_PROCESSES], n, duration
        )
        for i, n in enumerate(share)
        if n
    ]
    total: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    longest = 0.0
    for proc, out in started:
        result = attacks.collect(proc, out, timeout_s=duration + 120)
        if "error" in result:
            total["attacker errors"] += 1
            continue
        answers.update(result.pop("answers"))
        longest = max(longest, result.pop("longest_s"))
        total.update(result)
    return {**total, "longest_s": round(longest, 1), "answers": dict(answers)}


def bodies(port: int, total_mb: int, duration: float) -> dict[str, Any]:
    size = min(BODY_MB, total_mb)
    proc, out = attacks.run_in_process(
        attacks.oversized, port, total_mb, size, BODY_PARALLEL, duration
    )
    return attacks.collect(proc, out, timeout_s=duration + 300)


def bombs(url: str, token: str, count: int, duration: float) -> dict[str, Any]:
    proc, out = attacks.run_in_process(attacks.gzip_bombs, url, token, BOMB_APP, count, duration)
    return attacks.collect(proc, out, timeout_s=duration + 300)


# ---- main ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, phases: list[Phase], load: tuple[str, str]) -> str:
    command = " ".join([".venv/bin/python bench/hostile.py", *sys.argv[1:]])
    head = [
        f"Produced by `{command}` on {platform.node()} ({platform.platform()}, {os.cpu_count()}"
        f" CPUs, Python {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M %Z')};"
        f" load average {load[0]} at the start, {load[1]} at the end.",
        f"Two apps (examples/hello), each answering a request loop through HAProxy -> nginx ->"
        f" app; each attack runs {args.duration:g} s from its own process(es), aimed at the"
        " registry; attackers, registry, agents, proxies and apps share the machine.",
        "",
        "| attack | app requests failed | hosts marked down | instances restarted |"
        " registry RSS peak | GET /v1/apps, new connection: p50 / p99 / max (failed) |"
        " same, kept-alive connection | pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    rows = [
        f"| {p.name} | {len(p.failed)} of {p.sent} | {len(p.hosts_down_seen)} of 2"
        f"{f' ({p.marked_down_lines} in log)' if p.marked_down_lines else ''} |"
        f" {len(p.restarted)} of {p.instances} | {p.rss_peak_mb:.0f} MB |"
        f" {p.api.text()} | {p.kept.text()} |"
        f" {'yes' if p.passed() or p.name.startswith('none') else '**no**'} |"
        for p in phases
    ]
    notes = ["", "What each attacker saw, and the registry's edge log over the attack:", ""]
    for p in phases:
        if p.name.startswith("none"):
            continue
        edge = ", ".join(f"{n} {why}" for why, n in p.edge.most_common()) or "none"
        failures = dict(Counter(f.split(":")[0] for f in p.failed).most_common(3))
        probes = dict(p.api.failures.most_common(3))
        notes.append(
            f"- **{p.name}**: attacker {json.dumps(p.attacker)}; registry open descriptors at"
            f" most {p.fds_peak}; edge log (a line per 1,000 refusals): {edge};"
            f" agents' log lines about an unreachable registry: {p.agent_misses}"
            + (f"; app failures {failures}" if failures else "")
            + (
                f"; failed new-connection probes {probes}, answered ones p99"
                f" {ms(p.api.answered_p99_s)}"
                if probes
                else ""
            )
            + (f"; restarted {p.restarted}" if p.restarted else "")
        )
    if any(p.api.failures and p.edge["over the total connection cap"] for p in phases):
        notes += [
            "",
            "Refused new-connection probes while the edge log counts refusals over the total"
            " connection cap: the slow sockets held every connection slot. Spread over"
            f" {len(SLOW_SOURCES)} addresses they stay under the per-address cap, and the edge"
            " refuses every newcomer, legitimate or not, until the header timeout frees slots,"
            " which the attacker's reconnects take again. A client with a kept-alive connection"
            " (as the agents keep) is not affected by the cap.",
        ]
    notes += [
        "",
        f"Acceptance per attack: 0 failed app requests, 0 hosts down, 0 restarts, API p99 <"
        f" {P99_LIMIT_S:g} s, RSS < {RSS_LIMIT_MB} MB. The API probe opens a new connection"
        " each time, as the CLI does, so a connection the edge refuses counts as a failure"
        ' (infinite latency). RSS peak is VmHWM, reset before each attack; "none" is the'
        " same measurement with no attack.",
    ]
    return "\n".join(head + rows + notes) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--slowloris", type=int, default=20000)
    parser.add_argument("--body-mb", type=int, default=1024)
    parser.add_argument("--bombs", type=int, default=40)
    parser.add_argument("--write", type=Path, help="put the result into this markdown file")
    args = parser.parse_args()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    work = Path(tempfile.mkdtemp(prefix="paas-hostile-"))
    registry, http, https, proxy, agent_api = free_ports(5)
    ports = Ports(registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api)
    cluster = LocalCluster(work / "state", ports=ports)
    loops: list[RequestLoop] = []
    phases: list[Phase] = []
    budget_s = 4 * args.duration + 600
    try:
        cluster.up()
        for name in APPS:
            deploy(cluster, work, name)
        token = deploy_token(cluster, BOMB_APP)
        pid = int(cluster.processes()[REGISTRY]["pid"])
        url = f"https://127.0.0.1:{https}/"
        for name in APPS:
            loop = RequestLoop(url, f"{name}.{cluster.domain}", expect=f"Hello from {name}",
                               max_s=budget_s)  # fmt: skip
            loops.append(loop.__enter__())
        with Watch(cluster, pid, max_s=budget_s) as watch:
            bench = Bench(cluster, loops, watch)
            quiet = min(args.duration, 10.0)
            phases.append(bench.run(f"none ({quiet:g} s)", lambda: time.sleep(quiet) or {}))
            phases.append(
                bench.run(
                    f"{args.slowloris} slowloris connections",
                    lambda: slowloris(registry, args.slowloris, args.duration),
                )
            )
            phases.append(
                bench.run(
                    f"{args.body_mb} MB of oversized bodies, no token",
                    lambda: bodies(registry, args.body_mb, args.duration),
                )
            )
            phases.append(
                bench.run(
                    f"{args.bombs} concurrent gzip-bomb uploads",
                    lambda: bombs(cluster.registry_url, token, args.bombs, args.duration),
                )
            )
    finally:
        for loop in loops:
            loop.stop()
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)

    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(args, phases, (load_start, load_end))
    print()
    print(text)
    if args.write:
        write_section(args.write, "hostile", "## Hostile clients (issue 14)\n\n" + text)
        print(f"wrote the hostile section of {args.write}")
    return 0 if all(p.passed() for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
