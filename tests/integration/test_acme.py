"""ACME in the registry without a CA: the renewal and back-off decisions (pure), the API edge
(`paas certs:auto`), failures recorded and shown, http-01 answers carried in the routing
table, and the frontend's challenge map (hostile tokens never reach it)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.proxy.haproxy.view import CHALLENGE_MAP_FILE, MAIN_FILE, build_view, render_files
from agent.proxy.render import make_environment, template_dirs
from common.wire import RouteChallenge, RoutingTable
from controller.acme.protocol import AcmeFailed, Challenge
from controller.acme.service import is_due, retry_delay
from tests.support.registry_app import TestRegistry, test_registry

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
TOKEN = "tok_" + "A" * 40
KEY_AUTH = f"{TOKEN}.{'b' * 43}"
BASE64URL = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def test_due_without_certificate_before_expiry_and_never_during_backoff() -> None:
    before = 30 * DAY
    assert is_due(cert_not_after=None, next_attempt_at=None, now=NOW, renew_before=before)
    far = NOW + 90 * DAY
    assert not is_due(cert_not_after=far, next_attempt_at=None, now=NOW, renew_before=before)
    near = NOW + 29 * DAY
    assert is_due(cert_not_after=near, next_attempt_at=None, now=NOW, renew_before=before)
    later = NOW + dt.timedelta(minutes=5)
    assert not is_due(cert_not_after=near, next_attempt_at=later, now=NOW, renew_before=before)
    assert is_due(cert_not_after=None, next_attempt_at=NOW, now=NOW, renew_before=before)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    delays = [retry_delay(n, min_s=60, max_s=600).total_seconds() for n in range(1, 7)]
    assert delays == [60, 120, 240, 480, 600, 600]
    assert retry_delay(10_000, min_s=60, max_s=600).total_seconds() == 600


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(
        tmp_path,
        domain="paas.test",
        acme_directory_url="https://127.0.0.1:9/dir",  # nothing listens: every order fails
        acme_retry_min_s=600,
        acme_check_interval_s=600,
    ) as registry:
        yield registry


def auto(reg: TestRegistry, app: str, domain: str):  # type: ignore[no-untyped-def]
    return reg.client.post(f"/v1/apps/{app}/certs/acme", json={"domain": domain}, headers=reg.admin)


def test_certs_auto_refused_without_acme_settings(tmp_path: Path) -> None:
    with test_registry(tmp_path, domain="paas.test") as registry:
        registry.create_app("shop", domains=["shop.example.com"])
        response = auto(registry, "shop", "shop.example.com")
        assert response.status_code == 422
        assert "PAAS_ACME_DIRECTORY_URL" in response.json()["detail"]


def test_certs_auto_edge_and_failure_shown(reg: TestRegistry) -> None:
    reg.create_app("shop", domains=["shop.example.com", "*.shop.example.com"])
    reg.create_app("other", domains=["other.example.com"])
    cases = [
        ("*.shop.example.com", 422, "wildcard"),
        ("other.example.com", 422, "domains:add"),
        ("shop.example.com\nbind :1", 422, "domain"),
        ("../../etc", 422, "domain"),
    ]
    for domain, code, reason in cases:
        response = auto(reg, "shop", domain)
        assert response.status_code == code and reason in response.json()["detail"], domain

    created = auto(reg, "shop", "shop.example.com")
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "pending"
    assert auto(reg, "shop", "shop.example.com").status_code == 201  # idempotent
    # The cluster domain of the app may get its own certificate too.
    assert auto(reg, "shop", "shop.paas.test").status_code == 201
    reg.client.post("/v1/apps/other/domains", json={"domain": "x.example.com"}, headers=reg.admin)

    # The request woke the issuing loop: the unreachable CA is recorded, with a retry time.
    deadline = time.monotonic() + 30
    while True:
        listed = reg.client.get("/v1/apps/shop/certs/acme", headers=reg.admin).json()
        if all(s["attempts"] >= 1 for s in listed):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    first = next(s for s in listed if s["domain"] == "shop.example.com")
    assert first["state"] == "error" and first["cert_sha256"] is None
    assert "ACME directory" in first["last_error"], first
    assert dt.datetime.fromisoformat(first["next_attempt_at"]) > dt.datetime.now(dt.UTC)

    gone = reg.client.delete("/v1/apps/shop/certs/acme/shop.example.com", headers=reg.admin)
    assert gone.status_code == 204
    missing = reg.client.delete("/v1/apps/shop/certs/acme/shop.example.com", headers=reg.admin)
    assert missing.status_code == 404
    listed = reg.client.get("/v1/apps/shop/certs/acme", headers=reg.admin).json()
    assert [s["domain"] for s in listed] == ["shop.paas.test"]


def test_answers_travel_in_the_routing_table_only_while_published(reg: TestRegistry) -> None:
    runner = reg.client.app.state.acme  # type: ignore[attr-defined]
    answer = Challenge(domain="shop.example.com", token=TOKEN, key_authorization=KEY_AUTH)
    with pytest.raises(AcmeFailed, match="no frontend is up"):
        runner._publish([answer])
    table = reg.client.get("/v1/routing", headers=reg.admin).json()
    assert table["challenges"] == [{"token": TOKEN, "key_authorization": KEY_AUTH}]
    runner._withdraw([answer])
    assert reg.client.get("/v1/routing", headers=reg.admin).json()["challenges"] == []


def _files(table: RoutingTable, tmp_path: Path) -> dict[str, str]:
    built = build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=tmp_path / "default.pem",
        admin_socket=tmp_path / "admin.sock",
    )
    env: jinja2.Environment = make_environment(template_dirs(None))
    files = render_files(env, built.view)
    files["errors"] = "\n".join(built.errors)
    return files


def test_challenge_map_holds_only_checked_answers(tmp_path: Path) -> None:
    good = RouteChallenge(token=TOKEN, key_authorization=KEY_AUTH)
    hostile = [
        RouteChallenge.model_construct(token="a\nb c", key_authorization=KEY_AUTH),
        RouteChallenge.model_construct(token=TOKEN, key_authorization=f"{KEY_AUTH} x"),
        RouteChallenge.model_construct(token="../../etc/passwd" * 2, key_authorization=KEY_AUTH),
        RouteChallenge.model_construct(token=TOKEN, key_authorization='"; }{ $x #'),
    ]
    table = RoutingTable.model_construct(index=1, apps=[], certs=[], challenges=[*hostile, good])
    files = _files(table, tmp_path)
    entries = [line for line in files[CHALLENGE_MAP_FILE].splitlines() if not line.startswith("#")]
    assert entries == [f"{TOKEN} {KEY_AUTH}"]
    assert files["errors"].count("ACME challenge skipped") == len(hostile)
    assert f"map({CHALLENGE_MAP_FILE})" in files[MAIN_FILE]
    # An empty map still exists (HAProxy refuses a config naming a missing map file).
    empty = _files(RoutingTable(index=2, apps=[]), tmp_path)
    assert CHALLENGE_MAP_FILE in empty


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=st.text(max_size=140), key_authorization=st.text(max_size=200))
def test_fuzz_challenge_map_is_skipped_or_exact(
    tmp_path: Path, token: str, key_authorization: str
) -> None:
    hostile = RouteChallenge.model_construct(token=token, key_authorization=key_authorization)
    table = RoutingTable.model_construct(index=1, apps=[], certs=[], challenges=[hostile])
    files = _files(table, tmp_path)
    entries = [line for line in files[CHALLENGE_MAP_FILE].splitlines() if not line.startswith("#")]
    if files["errors"]:
        assert entries == []
    else:
        assert entries == [f"{token} {key_authorization}"]
        assert set(token + key_authorization) <= BASE64URL | {"."}


class _Follower:
    """A registry replica that is not the leader (issue 8's leader helper, stubbed)."""

    def is_leader(self) -> bool:
        return False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_only_the_leader_orders(reg: TestRegistry) -> None:
    ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
    leader, ctx.leader = ctx.leader, _Follower()
    try:
        reg.create_app("shop", domains=["shop.example.com"])
        assert auto(reg, "shop", "shop.example.com").status_code == 201
        time.sleep(2.0)  # the loop woke and found it is not the leader: no attempt
        [status] = reg.client.get("/v1/apps/shop/certs/acme", headers=reg.admin).json()
        assert status["attempts"] == 0 and status["last_error"] is None
    finally:
        ctx.leader = leader
    deadline = time.monotonic() + 15  # the leader again: it finds the request by itself
    while reg.client.get("/v1/apps/shop/certs/acme", headers=reg.admin).json()[0]["attempts"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
