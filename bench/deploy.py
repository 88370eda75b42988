"""Deploy latency and proxy throughput on a LocalCluster with free ports.

    .venv/bin/python bench/deploy.py [--samples 5] [--seconds 5] [--write docs/BENCHMARKS.md]

Deploy latency: from starting `paas deploy` to the first HTTPS 200 (through HAProxy ->
nginx -> app) that carries the new release's text; for first deploys (a new app each time)
and code-only redeploys of one app. Throughput: requests/s with keep-alive through the whole
TLS path vs. straight to the app's port, same client, same run (wrk when installed, else a
threaded Python client; the report says which).
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ports import free_ports  # noqa: E402
from bench.report import write_section  # noqa: E402
from cli.local import LocalCluster, Ports  # noqa: E402

PAAS = str(Path(sys.executable).parent / "paas")


# How long a new release must stay healthy before the old one stops, as examples/hello sets
# it. The default (10 s) is a safety wait a user chooses, not pipeline time: a redeploy takes
# about that much longer with it.
MIN_HEALTHY_S = 1.0


def make_app(base: Path, name: str, text: str) -> Path:
    app = base / name
    if app.exists():
        shutil.rmtree(app)
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    code = (app / "app.py").read_text().replace('"Hello from', f'"{text} from')
    (app / "app.py").write_text(code)
    (app / "paas.toml").write_text(
        f'[app]\nname = "{name}"\nhealth_path = "/health"\nmin_healthy_s = {MIN_HEALTHY_S:g}\n'
    )
    return app


def timed_deploy(cluster: LocalCluster, app: Path, name: str, text: str) -> float:
    """Seconds from `paas deploy` start to the first HTTPS 200 whose body has `text`."""
    host = f"{name}.{cluster.domain}"
    start = time.monotonic()
    proc = subprocess.Popen(
        [PAAS, "deploy", str(app)],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = start + 600
    with httpx.Client(verify=False, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(
                    f"https://127.0.0.1:{cluster.ports.https}/",
                    headers={"Host": host},
                    extensions={"sni_hostname": host},
                )
                if response.status_code == 200 and text in response.text:
                    elapsed = time.monotonic() - start
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() not in (None, 0):
                raise SystemExit(f"deploy of {name} failed:\n{proc.stdout.read()}")
            time.sleep(0.02)
        else:
            proc.kill()
            raise SystemExit(f"{name} never answered with {text!r}")
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return elapsed


@dataclass
class Load:
    tool: str
    rps: float
    requests: int
    errors: int
    kinds: str = ""  # what the errors were, e.g. "502 x3, ReadError x1"


def python_load(url: str, host: str | None, *, seconds: float, workers: int) -> Load:
    counts = [0] * workers
    errors = [0] * workers
    kinds: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    headers = {"Host": host} if host else {}
    ext = {"sni_hostname": host} if host and url.startswith("https") else {}

    def worker(i: int) -> None:
        with httpx.Client(verify=False, timeout=10) as client:
            while time.monotonic() < stop:
                try:
                    response = client.get(url, headers=headers, extensions=ext)
                    if response.status_code == 200:
                        counts[i] += 1
                    else:
                        errors[i] += 1
                        snippet = " ".join(response.text.split())[:60]
                        kinds[f"{response.status_code} ({snippet})"] += 1
                except httpx.HTTPError as exc:
                    errors[i] += 1
                    kinds[type(exc).__name__] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    detail = ", ".join(f"{k} x{n}" for k, n in kinds.most_common())
    return Load(
        f"python httpx, {workers} threads", sum(counts) / took, sum(counts), sum(errors), detail
    )


def wrk_load(url: str, host: str | None, *, seconds: float, workers: int) -> Load:
    argv = ["wrk", "-t2", f"-c{workers}", f"-d{int(seconds)}s", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)[1])
    total = int(re.search(r"(\d+) requests in", done.stdout)[1])
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", done.stdout)
    return Load(f"wrk, 2 threads, {workers} connections", rps, total, int(bad[1]) if bad else 0)


def app_port(cluster: LocalCluster, name: str) -> int:
    with cluster.client() as api:
        for inst in api.list_instances(name):
            if inst.state == "running" and inst.routed and inst.port:
                return inst.port
    raise SystemExit(f"no running instance of {name}")


def fmt(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):.2f}s (" + ", ".join(f"{s:.2f}" for s in samples) + ")"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--write", type=Path, help="write the results as markdown here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    registry, http, https, proxy, agent_api = free_ports(5)
    cluster = LocalCluster(
        work / "state",
        ports=Ports(registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api),
    )
    try:
        cluster.up()
        print(f"cluster up on registry :{registry}, https :{https} (state {work})", flush=True)
        first = []
        for i in range(args.samples):
            name, text = f"bench-first-{i}", f"First{i}"
            first.append(timed_deploy(cluster, make_app(work, name, text), name, text))
            print(f"first deploy {i + 1}/{args.samples}: {first[-1]:.2f}s", flush=True)
        redeploy = []
        name = "bench-first-0"
        for i in range(args.samples):
            text = f"Redeploy{i}"
            redeploy.append(timed_deploy(cluster, make_app(work, name, text), name, text))
            print(f"redeploy {i + 1}/{args.samples}: {redeploy[-1]:.2f}s", flush=True)

        load = wrk_load if shutil.which("wrk") else python_load
        host = f"{name}.{cluster.domain}"
        proxied = load(
            f"https://127.0.0.1:{https}/", host, seconds=args.seconds, workers=args.workers
        )
        direct = load(
            f"http://127.0.0.1:{app_port(cluster, name)}/",
            None,
            seconds=args.seconds,
            workers=args.workers,
        )
    finally:
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)

    ratio = proxied.rps / direct.rps if direct.rps else float("nan")
    lines = [
        "## Deploy latency and proxy throughput",
        "",
        f"Produced by `{' '.join(['.venv/bin/python', 'bench/deploy.py', *sys.argv[1:]])}`"
        f" on {platform.node()} ({platform.platform()}, {platform.processor() or 'cpu?'},"
        f" Python {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "One LocalCluster on 127.0.0.1: registry, one machine agent (nginx), one frontend",
        "agent (HAProxy, TLS); app = examples/hello (stdlib, no requirements), with",
        f"`min_healthy_s = {MIN_HEALTHY_S:g}` (the default 10 s adds about 9 s to a redeploy).",
        "",
        "### Deploy latency (`paas deploy` start -> first HTTPS 200 with the new text)",
        "",
        f"- first deploy (new app each time): {fmt(first)}",
        f"- code-only redeploy of one app: {fmt(redeploy)}",
        "",
        f"### Throughput ({proxied.tool}, keep-alive, {args.seconds:.0f}s each)",
        "",
        "| path | requests/s | requests | errors |",
        "| --- | ---: | ---: | ---: |",
        f"| HAProxy TLS -> nginx -> app | {proxied.rps:.0f} | {proxied.requests} |"
        f" {proxied.errors} {proxied.kinds} |",
        f"| app directly (plain HTTP) | {direct.rps:.0f} | {direct.requests} |"
        f" {direct.errors} {direct.kinds} |",
        "",
        f"Proxied / direct: {ratio:.2f}. The client shares the machine's CPUs with the",
        "proxies and the app, so these are relative figures for this machine only.",
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write:
        write_section(args.write, "deploy", text)
        print(f"wrote the deploy section of {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
