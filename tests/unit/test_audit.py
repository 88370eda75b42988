"""The audit log: who did what and when, for every mutating call; secrets never in it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from controller.store.models import AuditEvent
from tests.support.registry_app import test_registry

SECRET = "s3cr3t-value-that-must-not-leak"


def test_mutating_calls_are_recorded_with_who_what_and_result(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        reg.create_app("web")
        made = reg.client.post(
            "/v1/tokens", json={"scope": "deploy", "app": "web", "name": "ci"}, headers=reg.admin
        ).json()
        deploy = reg.headers(made["token"])
        config = {"set": {"DB_PASSWORD": SECRET}, "secret": ["DB_PASSWORD"]}
        assert (
            reg.client.patch("/v1/apps/web/config", json=config, headers=deploy).status_code == 200
        )
        assert reg.client.delete("/v1/apps/web", headers=deploy).status_code == 403
        assert reg.client.post("/v1/apps", json={"name": "x"}).status_code == 401  # no row
        reg.client.get("/v1/apps", headers=reg.admin)  # reads are not audited
        host = reg.join("m1")
        reg.report("m1", host)  # heartbeats are not audited

        entries = reg.client.get("/v1/audit", headers=reg.admin).json()
        calls = [(e["method"], e["route"], e["status"]) for e in entries]
        assert calls == [
            ("POST", "/v1/hosts/join", 200),
            ("DELETE", "/v1/apps/{app}", 403),
            ("PATCH", "/v1/apps/{app}/config", 200),
            ("POST", "/v1/tokens", 201),
            ("POST", "/v1/apps", 201),
        ]
        config_entry = entries[2]
        assert config_entry["app"] == "web"
        assert config_entry["scope"] == "deploy"
        assert config_entry["token_id"] == made["id"]
        assert config_entry["token_name"] == "ci"
        assert config_entry["summary"] == "update config"
        assert entries[1]["scope"] == "deploy"  # a refused call by a known token is recorded
        assert entries[4]["scope"] == "admin"

        only_web = reg.client.get("/v1/audit?app=web", headers=reg.admin).json()
        assert {e["app"] for e in only_web} == {"web"} and len(only_web) == 2
        assert len(reg.client.get("/v1/audit?since=1h", headers=reg.admin).json()) == 5
        assert reg.client.get("/v1/audit?since=soon", headers=reg.admin).status_code == 422

        # The secret is nowhere in the log, neither in the API answer nor in the table.
        assert SECRET not in reg.client.get("/v1/audit", headers=reg.admin).text
        with reg.client.app.state.ctx.db.read() as session:  # type: ignore[attr-defined]
            rows = session.execute(select(AuditEvent)).scalars().all()
            dumped = repr([vars(r) for r in rows])
        assert SECRET not in dumped and made["token"] not in dumped
        assert reg.admin_token not in dumped


def test_refused_names_are_not_stored_as_given(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        bad = reg.client.delete("/v1/apps/web/domains/[red]x;rm", headers=reg.admin)
        assert bad.status_code in (404, 422)
        wrong = reg.client.patch("/v1/apps/Bad_App/config", json={}, headers=reg.admin)
        assert wrong.status_code == 422
        entries = reg.client.get("/v1/audit", headers=reg.admin).json()
        assert entries[0]["app"] is None and entries[0]["route"] == "/v1/apps/{app}/config"
        assert entries[1]["summary"].endswith("domain=<invalid>")
        assert "[red]" not in repr(entries) and "Bad_App" not in repr(entries)


def test_old_events_are_pruned(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from controller.api.audit import prune

    with test_registry(tmp_path, audit_keep_days=30) as reg:
        reg.create_app("web")
        ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
        with ctx.db.write() as session:
            session.add(
                AuditEvent(
                    at=datetime.now(UTC) - timedelta(days=31),
                    method="POST",
                    route="/v1/apps",
                    summary="create app",
                    status=201,
                )
            )
        assert len(reg.client.get("/v1/audit", headers=reg.admin).json()) == 2
        with ctx.db.write() as session:
            prune(session, keep_days=ctx.settings.audit_keep_days)
        assert len(reg.client.get("/v1/audit", headers=reg.admin).json()) == 1
