"""The status page: admin token once via ?token= (HttpOnly cookie) or a bearer header."""

from __future__ import annotations

from pathlib import Path

from tests.support.registry_app import test_registry


def test_status_page_protection_and_content(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        reg.create_app("shop")
        reg.join("m1")
        reg.client.patch("/v1/apps/shop/config", json={"set": {"K": "v"}}, headers=reg.admin)
        client = reg.client

        assert client.get("/status").status_code == 401
        assert client.get("/status?token=wrong").status_code == 401
        deploy = client.post(
            "/v1/tokens", json={"scope": "deploy", "app": "shop"}, headers=reg.admin
        ).json()["token"]
        assert client.get("/status", headers=reg.headers(deploy)).status_code == 401
        assert client.get(f"/status?token={deploy}").status_code == 401

        first = client.get(f"/status?token={reg.admin_token}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/status"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/status" in cookie
        session = first.cookies["paas_status"]
        assert reg.admin_token not in first.headers["set-cookie"]  # a random id, not the token

        client.cookies.set("paas_status", reg.admin_token)  # the raw token is no session id
        assert client.get("/status").status_code == 401
        client.cookies.set("paas_status", session)
        page = client.get("/status")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        html = page.text
        assert 'data-app="shop"' in html and 'data-host="m1"' in html
        assert "PATCH /v1/apps/{app}/config" in html
        assert reg.admin_token not in html

        client.cookies.clear()
        by_header = client.get("/status", headers=reg.admin)
        assert by_header.status_code == 200

        # Revoking the token closes the page at once.
        made = client.post("/v1/tokens", json={"scope": "admin"}, headers=reg.admin).json()
        opened = client.get(f"/status?token={made['token']}", follow_redirects=False)
        client.cookies.clear()
        client.cookies.set("paas_status", opened.cookies["paas_status"])
        assert client.get("/status").status_code == 200
        client.delete(f"/v1/tokens/{made['id']}", headers=reg.admin)
        assert client.get("/status").status_code == 401
        client.cookies.clear()


def test_the_token_query_in_any_spelling_is_accepted_and_never_logged(tmp_path: Path) -> None:
    """`?tok%65n=` decodes to `token`: the page takes it, and the access log hides it."""
    import logging

    from controller.api.status import RedactTokenQuery, redact_query

    with test_registry(tmp_path) as reg:
        for key in ("token", "tok%65n", "%74%6F%6B%65%6E"):
            answer = reg.client.get(f"/status?{key}={reg.admin_token}", follow_redirects=False)
            assert answer.status_code == 303, key
            assert reg.admin_token not in answer.headers["set-cookie"]

    token = "abc-DEF_123"
    for raw in (f"token={token}", f"tok%65n={token}", f"%54OKEN={token}", f"x=1&to%6ben={token}"):
        redacted = redact_query(f"/status?{raw}")
        assert token not in redacted and "token=<redacted>" in redacted, raw
    # As uvicorn's access logger formats it: (client, method, path with query, version, status)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/status?tok%65n={token}", "1.1", 303), None,
    )  # fmt: skip
    assert RedactTokenQuery().filter(record)
    line = record.getMessage()
    assert token not in line and "token=<redacted>" in line
