"""Dependencies benchmark: the cost of the service hop and web's answers while users moves.

Deploys examples/users and examples/web (web depends_on users) on a LocalCluster, then:
- latency of GET /users direct to the users process vs through 127.0.0.1:<service port>
  (machine nginx -> machine nginx -> users), sequential keep-alive requests;
- requests to web through the frontend (HTTPS) while users is redeployed N times: failures
  and whether web's pid stayed the same.

    .venv/bin/python bench/dependencies.py [--requests 500] [--redeploys 3] \
        [--write docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.deploy import app_port, free_ports  # noqa: E402
from bench.report import write_section  # noqa: E402
from cli.local import LocalCluster, Ports  # noqa: E402

PAAS = str(Path(sys.executable).parent / "paas")


def deploy(cluster: LocalCluster, path: Path) -> None:
    done = subprocess.run(
        [PAAS, "deploy", str(path), "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=180,
        env=cluster.env(),
    )
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)


def latencies_ms(url: str, count: int) -> list[float]:
    samples = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.get(url).raise_for_status()
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class WebLoop(threading.Thread):
    """GET / on web through HAProxy until stopped; counts answers and failures."""

    def __init__(self, https_port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"https://127.0.0.1:{https_port}/"
        self.stop = threading.Event()
        self.sent = self.failed = 0

    def run(self) -> None:
        headers = {"Host": "web.localhost"}
        with httpx.Client(verify=False, timeout=10) as client:
            while not self.stop.is_set():
                self.sent += 1
                try:
                    response = client.get(
                        self.url, headers=headers, extensions={"sni_hostname": "web.localhost"}
                    )
                    if response.status_code != 200 or "users" not in response.json():
                        self.failed += 1
                except (httpx.HTTPError, ValueError):
                    self.failed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--redeploys", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paas-bench-deps-"))
    registry, http, https, proxy, agent_api = free_ports(5)
    ports = Ports(registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api)
    cluster = LocalCluster(work / "state", ports=ports, service_ports=(24000, 24063))
    try:
        cluster.up()
        for name in ("users", "web"):
            shutil.copytree(REPO / "examples" / name, work / name)
        deploy(cluster, work / "users")
        deploy(cluster, work / "web")
        with cluster.client() as api:
            service_port = api.get_app("users").service_port
        direct = latencies_ms(f"http://127.0.0.1:{app_port(cluster, 'users')}/users", args.requests)
        hop = latencies_ms(f"http://127.0.0.1:{service_port}/users", args.requests)
        pid_before = json.loads(httpx.get(f"http://127.0.0.1:{app_port(cluster, 'web')}/pid").text)[
            "pid"
        ]
        loop = WebLoop(https)
        loop.start()
        moves = []
        for i in range(args.redeploys):
            code = (work / "users" / "app.py").read_text()
            (work / "users" / "app.py").write_text(code + f"\n# redeploy {i}\n")
            start = time.monotonic()
            deploy(cluster, work / "users")
            moves.append(time.monotonic() - start)
        time.sleep(1.0)
        loop.stop.set()
        loop.join(timeout=15)
        pid_after = json.loads(httpx.get(f"http://127.0.0.1:{app_port(cluster, 'web')}/pid").text)[
            "pid"
        ]
    finally:
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)

    same_pid = pid_before == pid_after
    lines = [
        "## Dependencies: the service hop and a moving dependency",
        "",
        f"Produced by `{' '.join(['.venv/bin/python', 'bench/dependencies.py', *sys.argv[1:]])}`"
        f" on {platform.node()} ({platform.platform()}, Python {platform.python_version()}),"
        f" {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "One LocalCluster; examples/users and examples/web.",
        "",
        f"| GET /users, {args.requests} sequential keep-alive requests | median ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| users process directly | {statistics.median(direct):.2f} | {pct(direct, 0.99):.2f} |",
        f"| 127.0.0.1:<service port> (nginx -> nginx -> users) | {statistics.median(hop):.2f} |"
        f" {pct(hop, 0.99):.2f} |",
        "",
        f"web through HAProxy while users was redeployed {args.redeploys} times"
        f" (median redeploy {statistics.median(moves):.2f}s): {loop.sent} requests,"
        f" **{loop.failed} failed**; web's pid {'unchanged' if same_pid else 'CHANGED'}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(args.write, "dependencies", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
