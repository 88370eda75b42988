"""The ACME client against a real pebble: an order validated over real http-01 (pebble
fetches the answer from a small HTTP server on its httpPort), a chain that passes the
registry's own bundle checks, and a failed validation reported with the CA's reason."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.pem import check_bundle
from controller.acme.client import AcmeIssuer
from controller.acme.protocol import AcmeFailed, Challenge, new_key_pem
from tests.conftest import free_ports
from tests.support.pebble import Pebble, running_pebble

ANSWERS: dict[str, str] = {}


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ANSWERS.get(self.path.rsplit("/", 1)[-1], "").encode()
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    http_port, *ports = free_ports(5)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with running_pebble(tmp_path / "pebble", http_port=http_port, ports=ports) as started:
            yield started
    finally:
        server.shutdown()
        server.server_close()


def publish(challenges: list[Challenge]) -> None:
    for c in challenges:
        ANSWERS[c.token] = c.key_authorization


def withdraw(challenges: list[Challenge]) -> None:
    for c in challenges:
        ANSWERS.pop(c.token, None)


def test_issue_by_http01_then_a_failed_validation(pebble: Pebble) -> None:
    issuer = AcmeIssuer(
        pebble.directory_url, account_key_pem=new_key_pem(), ca_bundle=pebble.ca_bundle
    )
    issued = issuer.issue("shop.example.test", publish=publish, withdraw=withdraw)
    assert not ANSWERS  # withdrawn after validation
    bundle = check_bundle(
        issued.fullchain_pem,
        issued.key_pem,
        domains=["shop.example.test"],
        now=dt.datetime.now(dt.UTC),
    )
    assert bundle.names == ("shop.example.test",)

    with pytest.raises(AcmeFailed, match=r"could not validate.*404"):
        issuer.issue("nobody.example.test", publish=lambda _c: None, withdraw=withdraw)
    with pytest.raises(AcmeFailed, match="wildcard"):
        issuer.issue("*.example.test", publish=publish, withdraw=withdraw)
