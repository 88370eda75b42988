"""User certificates served by a real HAProxy: by SNI (exact and wildcard) through crt-list,
the default certificate for every other name, and a replaced certificate served after the
seamless reload, or at runtime with no reload at all (renewal, ACME answers); replaced
certificate files removed. Hostile certificate entries never reach the config folder."""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from agent.frontend.agent import remove_stale_certs, worker_identity
from agent.proxy.haproxy import tls_runtime
from agent.proxy.haproxy.view import HaproxyView, build_view, render_files
from agent.proxy.render import make_environment, template_dirs
from common.wire import RouteCert, RouteChallenge, RoutingTable
from tests.integration.test_haproxy_real import Front, echo_server, front, table  # noqa: F401
from tests.support.certgen import Issued, chain

NAMES = ["shop.example.com", "*.shop.example.com"]


def served_sha(port: int, sni: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def route_cert(leaf: Issued, mid: Issued, sni: list[str]) -> RouteCert:
    der = leaf.cert.public_bytes(Encoding.DER)
    return RouteCert(
        sha256=hashlib.sha256(der).hexdigest(),
        sni=sni,
        pem=leaf.cert_pem + mid.cert_pem + leaf.key_pem,
    )


def with_certs(base: RoutingTable, *certs: RouteCert) -> RoutingTable:
    return RoutingTable(index=base.index, apps=base.apps, certs=list(certs))


def test_user_certificate_served_by_sni_and_replaced(front: Front) -> None:  # noqa: F811
    root, mid, leaf = chain(NAMES)
    cert = route_cert(leaf, mid, NAMES)
    with echo_server("m1") as port:
        base = table(1, ("shop", ["shop.paas.test", *NAMES], [port]))
        result = front.apply(with_certs(base, cert))
        assert result.applied and result.error is None, result.error
        assert served_sha(front.https_port, "shop.example.com") == cert.sha256
        assert served_sha(front.https_port, "api.shop.example.com") == cert.sha256
        default = served_sha(front.https_port, "shop.paas.test")
        assert default != cert.sha256

        # A client that trusts only the user's CA gets the app over verified HTTPS.
        verify = ssl.create_default_context(cadata=root.cert_pem)
        with httpx.Client(verify=verify, timeout=5) as client:
            response = client.get(
                f"https://127.0.0.1:{front.https_port}/hi",
                headers={"Host": "shop.example.com"},
                extensions={"sni_hostname": "shop.example.com"},
            )
        assert response.status_code == 200 and response.json()["server"] == "m1"

        # Renewal: a new certificate for the same names replaces the old one.
        _, mid2, leaf2 = chain(NAMES)
        renewed = route_cert(leaf2, mid2, NAMES)
        result = front.apply(with_certs(RoutingTable(index=2, apps=base.apps), renewed))
        assert result.applied and result.error is None, result.error
        assert served_sha(front.https_port, "shop.example.com") == renewed.sha256
        crt_list = (front.state / "haproxy" / "conf" / "certs.list").read_text()
        assert f"certs/{renewed.sha256}.pem shop.example.com *.shop.example.com" in crt_list
        assert cert.sha256 not in crt_list

        # Removed: the default certificate again.
        assert front.apply(RoutingTable(index=3, apps=base.apps)).applied
        assert served_sha(front.https_port, "shop.example.com") == default


def test_hostile_certificate_entries_are_skipped(tmp_path: Path) -> None:
    from agent.proxy.haproxy.view import build_view

    _, mid, leaf = chain(NAMES)
    good = route_cert(leaf, mid, NAMES)
    hostile = [
        RouteCert.model_construct(sha256="../../etc/passwd", sni=NAMES, pem=good.pem),
        RouteCert.model_construct(sha256=good.sha256, sni=["a.com\nbind :1"], pem=good.pem),
        RouteCert.model_construct(sha256=good.sha256, sni=[], pem=good.pem),
        RouteCert.model_construct(sha256=good.sha256, sni=NAMES, pem="global\n  daemon\n"),
        RouteCert.model_construct(sha256=good.sha256, sni=NAMES, pem=good.pem + "\nssl-engine x\n"),
    ]
    built = build_view(
        RoutingTable.model_construct(index=1, apps=[], certs=[*hostile, good]),
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=tmp_path / "default.pem",
        admin_socket=tmp_path / "admin.sock",
    )
    assert [c.file for c in built.view.certs] == [f"certs/{good.sha256}.pem"]
    assert len(built.errors) == len(hostile)


def view_of(front: Front, routing: RoutingTable) -> HaproxyView:  # noqa: F811
    """The view Front.apply renders for `routing`."""
    built = build_view(
        routing,
        bind_address="127.0.0.1",
        http_port=front.http_port,
        https_port=front.https_port,
        cert_path=front.cert,
        admin_socket=front.state / "haproxy" / "admin.sock",
        run_as=worker_identity(),
    )
    return built.view


def test_renewal_and_acme_answers_at_runtime_without_a_reload(front: Front) -> None:  # noqa: F811
    token = "tok_" + "Z" * 40
    answer = RouteChallenge(token=token, key_authorization=f"{token}.{'k' * 43}")
    _, mid, leaf = chain(NAMES)
    cert = route_cert(leaf, mid, NAMES)
    with echo_server("m1") as port:
        base = with_certs(table(1, ("shop", ["shop.paas.test", *NAMES], [port])), cert)
        assert front.apply(base).applied
        workers = front.process._proc_info().workers  # type: ignore[union-attr]
        challenge_url = f"http://127.0.0.1:{front.http_port}/.well-known/acme-challenge/{token}"
        with httpx.Client(timeout=5, headers={"Host": "shop.example.com"}) as client:
            assert client.get(challenge_url).status_code == 301  # no answer yet: redirect

            _, mid2, leaf2 = chain(NAMES)
            renewed = route_cert(leaf2, mid2, NAMES)
            new = RoutingTable(index=2, apps=base.apps, certs=[renewed], challenges=[answer])
            change = tls_runtime.plan(view_of(front, base), view_of(front, new))
            assert change is not None and len(change.add_certs) == len(change.remove_certs) == 1
            tls_runtime.apply(front.state / "haproxy" / "admin.sock", change, view_of(front, new))
            assert served_sha(front.https_port, "shop.example.com") == renewed.sha256
            assert served_sha(front.https_port, "api.shop.example.com") == renewed.sha256
            got = client.get(challenge_url)
            assert got.status_code == 200 and got.text == answer.key_authorization

            # The answer goes, the certificate is deleted: the default one serves again.
            gone = RoutingTable(index=3, apps=base.apps)
            change = tls_runtime.plan(view_of(front, new), view_of(front, gone))
            assert change is not None
            tls_runtime.apply(front.state / "haproxy" / "admin.sock", change, view_of(front, gone))
            assert client.get(challenge_url).status_code == 301
        assert served_sha(front.https_port, "shop.example.com") not in (
            cert.sha256,
            renewed.sha256,
        )
        assert front.process._proc_info().workers == workers  # not one reload


def test_old_certificate_files_are_removed_after_apply(front: Front) -> None:  # noqa: F811
    _, mid, leaf = chain(NAMES)
    cert = route_cert(leaf, mid, NAMES)
    _, mid2, leaf2 = chain(NAMES)
    renewed = route_cert(leaf2, mid2, NAMES)
    conf = front.state / "haproxy" / "conf"
    with echo_server("m1") as port:
        base = table(1, ("shop", ["shop.paas.test", *NAMES], [port]))
        assert front.apply(with_certs(base, cert)).applied
        assert (conf / "certs" / f"{cert.sha256}.pem").is_file()
        second = with_certs(RoutingTable(index=2, apps=base.apps), renewed)
        assert front.apply(second).applied
        files = render_files(make_environment(template_dirs(None)), view_of(front, second))
        assert remove_stale_certs(conf, files) == [f"{cert.sha256}.pem"]
        assert served_sha(front.https_port, "shop.example.com") == renewed.sha256
        third = RoutingTable(index=3, apps=base.apps)
        assert front.apply(third).applied
        files = render_files(make_environment(template_dirs(None)), view_of(front, third))
        assert remove_stale_certs(conf, files) == [f"{renewed.sha256}.pem"]
        assert not list((conf / "certs").glob("*.pem"))
