"""The status page: admin token once via ?token= (HttpOnly cookie) or a bearer header."""

from __future__ import annotations

from pathlib import Path

from controller.testing import test_registry


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

        client.cookies.set("paas_status", reg.admin_token)
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
        client.cookies.set("paas_status", made["token"])
        assert client.get("/status").status_code == 200
        client.delete(f"/v1/tokens/{made['id']}", headers=reg.admin)
        assert client.get("/status").status_code == 401
        client.cookies.clear()
