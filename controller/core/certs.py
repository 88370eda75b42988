"""Certificates of an app: store a checked bundle, list, delete, and pick what frontends serve.

A new certificate for the same names replaces the app's older one (that is how a user renews:
`paas certs:add` again). What a frontend serves for a certificate is limited to the app's
current domains that it covers, so a certificate never answers for another app's domain.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import wire
from common.pem import BadCertificate, CheckedBundle, check_bundle, name_covers
from controller.errors import Conflict, Invalid, NotFound
from controller.settings import RegistrySettings
from controller.store.models import App
from controller.store.models.certs import Certificate

log = logging.getLogger("paas.registry")


def app_domain_names(app: App, settings: RegistrySettings) -> list[str]:
    return [f"{app.name}.{settings.domain}"] + [d.domain for d in app.domains]


def covered(names: list[str], domains: list[str]) -> list[str]:
    return [d for d in domains if any(name_covers(n, d) for n in names)]


def add_certificate(
    session: Session,
    app: App,
    body: wire.CertAdd,
    *,
    settings: RegistrySettings,
    now: dt.datetime,
    source: str = "user",
) -> Certificate:
    try:
        bundle: CheckedBundle = check_bundle(
            body.cert_pem, body.key_pem, domains=app_domain_names(app, settings), now=now
        )
    except BadCertificate as exc:
        raise Invalid(f"certificate refused: {exc}") from exc
    existing = session.execute(
        select(Certificate).where(Certificate.sha256 == bundle.sha256)
    ).scalar_one_or_none()
    if existing is not None:
        if existing.app_id != app.id:
            raise Conflict("this certificate is already stored for another app")
        return existing
    for old in _app_certs(session, app):
        if sorted(old.names) == sorted(bundle.names):
            log.info(
                "certificate %s of %s replaces %s", bundle.sha256[:12], app.name, old.sha256[:12]
            )
            session.delete(old)
    session.flush()
    row = Certificate(
        app_id=app.id,
        sha256=bundle.sha256,
        chain_pem=bundle.chain_pem,
        key_pem=bundle.key_pem,
        names=list(bundle.names),
        not_after=bundle.not_after,
        source=source,
        created_at=now,
    )
    session.add(row)
    session.flush()
    log.info("stored certificate %s of %s for %s", bundle.sha256[:12], app.name, bundle.names)
    return row


def delete_certificate(session: Session, app: App, sha256: str) -> None:
    row = next((c for c in _app_certs(session, app) if c.sha256 == sha256), None)
    if row is None:
        raise NotFound(f"app {app.name} has no certificate {sha256}")
    session.delete(row)
    session.flush()


def cert_view(row: Certificate, app: App, settings: RegistrySettings) -> wire.Cert:
    return wire.Cert(
        app=app.name,
        sha256=row.sha256,
        names=row.names,
        covers=covered(row.names, app_domain_names(app, settings)),
        not_after=row.not_after,
        source=row.source,  # type: ignore[arg-type]
        created_at=row.created_at,
    )


def list_certificates(session: Session, app: App) -> list[Certificate]:
    return _app_certs(session, app)


def route_certs(session: Session, settings: RegistrySettings) -> list[wire.RouteCert]:
    """Every stored certificate that covers a current domain of its app, for the frontends."""
    rows = session.execute(select(Certificate, App).join(App).order_by(Certificate.sha256))
    result = []
    for cert, app in rows.all():
        sni = covered(cert.names, app_domain_names(app, settings))
        if sni:
            pem = cert.chain_pem + cert.key_pem
            result.append(wire.RouteCert(sha256=cert.sha256, sni=sni, pem=pem))
    return result


def _app_certs(session: Session, app: App) -> list[Certificate]:
    query = select(Certificate).where(Certificate.app_id == app.id).order_by(Certificate.id)
    return list(session.execute(query).scalars())
