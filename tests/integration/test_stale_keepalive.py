"""A kept-alive connection that the registry closes just as the next request goes out (its
keep-alive timer ran out at that moment): the request gets no answer. It happened for real in a
test run, where a machine agent's artifact download failed a deploy with "Server disconnected
without sending a response". Here a raw HTTP server does the same every time: it answers the
first request on a connection and closes the connection on the second without answering.
The CLI's and the agents' real transports send a repeatable request once more, on a new
connection; a plain POST, which may have been processed, is not repeated."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient as AgentClient
from cli.api import RegistryClient as CliClient
from cli.errors import RegistryUnreachable
from common.wire import HostReport
from tests.support.ports import free_port

ROUTING = {"index": 3, "apps": []}


class ClosingServer:
    """Answers the first request of each connection and drops the connection on the second."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        connections = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            connections += 1
            threading.Thread(target=self._talk, args=(conn, connections), daemon=True).start()

    def _talk(self, conn: socket.socket, number: int) -> None:
        with conn:
            conn.settimeout(10)
            buffered = b""
            for served in range(2):
                while b"\r\n\r\n" not in buffered:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append((number, line))
                if served == 1:
                    return  # closed as the second request arrives: no answer
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n")
                     if h.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(buffered) < length:
                    buffered += conn.recv(65536)
                buffered = buffered[length:]
                conn.sendall(_answer(line))

    def __enter__(self) -> ClosingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


def _answer(line: str) -> bytes:
    if "/report" in line:
        return b"HTTP/1.1 204 No Content\r\nX-Paas-Index: 3\r\n\r\n"
    body = json.dumps(ROUTING if "/v1/routing" in line else {"ok": True}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


@pytest.fixture
def server() -> Iterator[ClosingServer]:
    with ClosingServer() as started:
        yield started


def test_cli_reads_survive_a_connection_closed_under_them(server: ClosingServer) -> None:
    url = f"http://127.0.0.1:{server.port}"
    with CliClient(url, "tok") as api:
        assert api.health() is True  # connection 1
        assert api.health() is True  # sent on connection 1, dropped; again on connection 2
        with pytest.raises(RegistryUnreachable):
            api._request("POST", "/v1/apps", json={"name": "x"})  # on connection 2: dropped
    assert server.requests == [
        (1, "GET /v1/health HTTP/1.1"),
        (1, "GET /v1/health HTTP/1.1"),
        (2, "GET /v1/health HTTP/1.1"),
        (2, "POST /v1/apps HTTP/1.1"),
    ]


def test_agent_watch_and_report_survive_a_connection_closed_under_them(
    server: ClosingServer,
) -> None:
    client = AgentClient(f"http://127.0.0.1:{server.port}", token="t")

    async def go() -> None:
        assert (await client.routing(index=0, wait_s=0)).index == 3
        assert (await client.routing(index=0, wait_s=0)).index == 3
        assert await client.report("m1", HostReport(instances=[])) == 3
        with pytest.raises(RegistryCallFailed):
            await client._request("POST", "/v1/hosts/join", json={})
        await client.aclose()

    asyncio.run(go())
    assert [n for n, _ in server.requests] == [1, 1, 2, 2, 3, 3]
    assert server.requests[-1] == (3, "POST /v1/hosts/join HTTP/1.1")


def test_without_the_second_try_the_read_fails(server: ClosingServer) -> None:
    """The same server through a bare httpx client: what the clients did before."""
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as bare:
        assert bare.get("/v1/health").status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            bare.get("/v1/health")
