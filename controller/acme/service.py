"""ACME for the whole fleet: the registry orders, validates, stores and renews certificates.

One registry (the leader) does it for every frontend: it holds the ACME account key, creates
the orders, and publishes each http-01 answer in the routing table, so every frontend answers
`/.well-known/acme-challenge/<token>` from its own challenge map (no frontend ever talks to
the CA or to the registry on the CA's behalf). It answers the challenge only once every up
frontend reports it applied that routing table. The certificate is stored like a user's
(`certs.add_certificate`, source "acme"), which replaces the older one for the same name, and
reaches the frontends the way every certificate does.

Renewal: a domain is due when its certificate expires within `acme_renew_before_days`. A
failed attempt is recorded (`paas certs APP` shows it) and retried with a doubling delay;
the previous certificate keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common import wire
from controller.acme.protocol import AcmeFailed, Challenge, new_key_pem
from controller.context import Context
from controller.core.certs import add_certificate, app_domain_names
from controller.core.clock import now
from controller.errors import Conflict, Invalid, NotFound, RegistryError
from controller.settings import RegistrySettings
from controller.store.db import bump
from controller.store.models import App, Host
from controller.store.models.certs import AcmeAccount, AcmeChallenge, AcmeDomain, Certificate

log = logging.getLogger("paas.registry.acme")

MAX_ERROR_CHARS = 2000
WAKE_POLL_S = 0.5
NEW_REQUEST_POLL_S = 5.0
STALE_ANSWER = dt.timedelta(minutes=15)  # far longer than one order takes


# ---- API side -----------------------------------------------------------------------------


def request_domain(
    session: Session, app: App, domain: str, *, settings: RegistrySettings
) -> AcmeDomain:
    """`paas certs:auto APP DOMAIN`: idempotent for the same app, a conflict for another."""
    if not settings.acme_directory_url:
        raise Invalid(
            "ACME is not configured on this registry (set PAAS_ACME_DIRECTORY_URL);"
            " add a certificate with `paas certs:add` instead"
        )
    if domain.startswith("*."):
        raise Invalid(f"{domain}: wildcard names need dns-01 validation, which is not supported")
    if domain not in app_domain_names(app, settings):
        raise Invalid(f"{domain} is not a domain of {app.name}: `paas domains:add` it first")
    row = session.execute(
        select(AcmeDomain).where(AcmeDomain.domain == domain)
    ).scalar_one_or_none()
    if row is not None:
        if row.app_id != app.id:
            raise Conflict(f"{domain} already gets its certificate by ACME for another app")
        return row
    row = AcmeDomain(app_id=app.id, domain=domain, state="pending", created_at=now())
    session.add(row)
    session.flush()
    log.info("ACME requested for %s of %s", domain, app.name)
    return row


def remove_domain(session: Session, app: App, domain: str) -> None:
    """Stop renewing; the certificate already issued stays until `paas certs:remove`."""
    row = session.execute(
        select(AcmeDomain).where(AcmeDomain.app_id == app.id, AcmeDomain.domain == domain)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"{domain} of {app.name} does not get its certificate by ACME")
    session.delete(row)
    session.flush()


def list_domains(session: Session, app: App) -> list[AcmeDomain]:
    query = select(AcmeDomain).where(AcmeDomain.app_id == app.id).order_by(AcmeDomain.domain)
    return list(session.execute(query).scalars())


def status_view(
    session: Session, row: AcmeDomain, app: App, settings: RegistrySettings
) -> wire.AcmeStatus:
    cert = _current_cert(session, row)
    renew_after = None
    if cert is not None:
        renew_after = cert.not_after - dt.timedelta(days=settings.acme_renew_before_days)
    return wire.AcmeStatus(
        app=app.name,
        domain=row.domain,
        state=row.state,  # type: ignore[arg-type]
        cert_sha256=cert.sha256 if cert else None,
        not_after=cert.not_after if cert else None,
        renew_after=renew_after,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
    )


# ---- decisions (pure) ---------------------------------------------------------------------


def is_due(
    *,
    cert_not_after: dt.datetime | None,
    next_attempt_at: dt.datetime | None,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> bool:
    """A domain needs an attempt: no certificate yet, or it expires within `renew_before`;
    but never before the back-off of the last failure is over."""
    if next_attempt_at is not None and next_attempt_at > now:
        return False
    return cert_not_after is None or cert_not_after - renew_before <= now


def retry_delay(attempts: int, *, min_s: float, max_s: float) -> dt.timedelta:
    """After `attempts` failures in a row: min_s, 2*min_s, 4*min_s, ... at most max_s."""
    return dt.timedelta(seconds=min(max_s, min_s * 2 ** max(0, min(attempts - 1, 30))))


# ---- the issuing side ---------------------------------------------------------------------


class AcmeRunner:
    """Finds due domains and issues for them, one at a time. Blocking: run it in a thread."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.wake = threading.Event()  # set by `paas certs:auto` so it need not wait

    def run_once(self) -> int:
        """One pass over the due domains; the number of attempts made."""
        moment = now()
        renew_before = dt.timedelta(days=self.settings.acme_renew_before_days)
        work: list[tuple[int, str]] = []
        with self.ctx.db.write() as session:
            # Answers an order left behind (the registry stopped mid-order) are withdrawn.
            stale = cast(
                "CursorResult[Any]",
                session.execute(
                    delete(AcmeChallenge).where(AcmeChallenge.created_at < moment - STALE_ANSWER)
                ),
            )
            if stale.rowcount:
                bump(session, desired=True)
            for row, app in session.execute(select(AcmeDomain, App).join(App)).all():
                if row.domain not in app_domain_names(app, self.settings):
                    log.info("%s is no longer a domain of %s; ACME stops", row.domain, app.name)
                    session.delete(row)
                    continue
                cert = _current_cert(session, row)
                if is_due(
                    cert_not_after=cert.not_after if cert else None,
                    next_attempt_at=row.next_attempt_at,
                    now=moment,
                    renew_before=renew_before,
                ):
                    work.append((row.id, row.domain))
        for row_id, domain in work:
            self._attempt(row_id, domain)
        return len(work)

    def _attempt(self, row_id: int, domain: str) -> None:
        directory = self.settings.acme_directory_url
        if not directory:
            return
        log.info("ACME: ordering a certificate for %s from %s", domain, directory)
        from controller.acme.client import AcmeIssuer  # loads the acme library: see protocol.py

        try:
            issuer = AcmeIssuer(
                directory,
                account_key_pem=self._account_key(directory),
                ca_bundle=self.settings.acme_ca_bundle,
                contact_email=self.settings.acme_email,
            )
            issued = issuer.issue(domain, publish=self._publish, withdraw=self._withdraw)
            with self.ctx.db.write() as session:
                row = session.get(AcmeDomain, row_id)
                if row is None:
                    log.info("ACME for %s was cancelled meanwhile; not stored", domain)
                    return
                app = session.get(App, row.app_id)
                assert app is not None  # the row goes with its app (ON DELETE CASCADE)
                body = wire.CertAdd(cert_pem=issued.fullchain_pem, key_pem=issued.key_pem)
                cert = add_certificate(
                    session, app, body, settings=self.settings, now=now(), source="acme"
                )
                row.state = "valid"
                row.cert_sha256 = cert.sha256
                row.attempts = 0
                row.last_error = None
                row.next_attempt_at = None
                bump(session, desired=True)
            log.info("ACME: stored certificate %s for %s", cert.sha256[:12], domain)
        except (AcmeFailed, RegistryError, OSError, ValueError) as exc:
            self._failed(row_id, domain, str(exc))
        except Exception as exc:  # a bug must not stop renewals of the other domains
            log.exception("ACME for %s failed unexpectedly", domain)
            self._failed(row_id, domain, f"internal error: {type(exc).__name__}: {exc}")

    def _failed(self, row_id: int, domain: str, error: str) -> None:
        with self.ctx.db.write() as session:
            row = session.get(AcmeDomain, row_id)
            if row is None:
                return
            row.attempts += 1
            delay = retry_delay(
                row.attempts,
                min_s=self.settings.acme_retry_min_s,
                max_s=self.settings.acme_retry_max_s,
            )
            row.next_attempt_at = now() + delay
            row.last_error = error[:MAX_ERROR_CHARS]
            if row.cert_sha256 is None or _current_cert(session, row) is None:
                row.state = "error"
            # With a certificate still serving the state stays "valid": only renewal failed.
        log.error(
            "ACME for %s failed (attempt %d), retrying in %s; a certificate already issued"
            " keeps serving: %s",
            domain,
            row.attempts,
            delay,
            error,
        )

    def _account_key(self, directory: str) -> str:
        with self.ctx.db.write() as session:
            account = session.execute(
                select(AcmeAccount).where(AcmeAccount.directory_url == directory)
            ).scalar_one_or_none()
            if account is None:
                account = AcmeAccount(
                    directory_url=directory, key_pem=new_key_pem(), created_at=now()
                )
                session.add(account)
                log.info("ACME: created the registry's account key for %s", directory)
            return account.key_pem

    def _publish(self, challenges: list[Challenge]) -> None:
        """Put the answers in the routing table; return once every up frontend applied it."""
        with self.ctx.db.write() as session:
            for chall in challenges:
                session.merge(
                    AcmeChallenge(
                        token=chall.token,
                        key_authorization=chall.key_authorization,
                        domain=chall.domain,
                        created_at=now(),
                    )
                )
            seq = bump(session, desired=True)
        deadline = time.monotonic() + self.settings.acme_publish_timeout_s
        while True:
            with self.ctx.db.read() as session:
                lagging = _frontends_behind(session, seq)
            if lagging is None:
                raise AcmeFailed("no frontend is up to answer the http-01 challenge")
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise AcmeFailed(
                    f"frontends {', '.join(lagging)} did not apply the http-01 answer within"
                    f" {self.settings.acme_publish_timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def _withdraw(self, challenges: list[Challenge]) -> None:
        with self.ctx.db.write() as session:
            tokens = [c.token for c in challenges]
            session.execute(delete(AcmeChallenge).where(AcmeChallenge.token.in_(tokens)))
            bump(session, desired=True)


def _frontends_behind(session: Session, seq: int) -> list[str] | None:
    """Names of up frontends that have not applied `seq` yet; None when none is up."""
    query = select(Host).where(Host.role == "frontend", Host.state == "up")
    frontends = list(session.execute(query).scalars())
    if not frontends:
        return None
    return sorted(f.name for f in frontends if (f.applied_index or 0) < seq)


def _current_cert(session: Session, row: AcmeDomain) -> Certificate | None:
    if row.cert_sha256 is None:
        return None
    return session.execute(
        select(Certificate).where(Certificate.sha256 == row.cert_sha256)
    ).scalar_one_or_none()


async def acme_loop(ctx: Context, runner: AcmeRunner) -> None:
    """Look for due domains every `acme_check_interval_s` (at once when woken). Runs only on
    the leader (`ctx.leader`): with several registry replicas exactly one may order,
    or the CA would see each order (and its rate limits) once per replica."""
    interval = ctx.settings.acme_check_interval_s
    while True:
        try:
            if ctx.settings.acme_directory_url and ctx.leader.is_leader():
                await run_in_threadpool(runner.run_once)
        except Exception:
            log.exception("the ACME pass failed; will retry")
        waited = 0.0
        while waited < interval and not runner.wake.is_set():
            await asyncio.sleep(WAKE_POLL_S)  # cancellable, unlike a thread blocked in wait()
            waited += WAKE_POLL_S
            # `certs:auto` may have reached another replica: look for new requests now and then.
            polled = waited % NEW_REQUEST_POLL_S < WAKE_POLL_S
            due = polled and bool(ctx.settings.acme_directory_url)
            if due and await run_in_threadpool(has_new_requests, ctx):
                break
        runner.wake.clear()


def has_new_requests(ctx: Context) -> bool:
    """A domain that asked for ACME and was never tried yet (a cheap read)."""
    query = select(AcmeDomain.id).where(AcmeDomain.state == "pending", AcmeDomain.attempts == 0)
    with ctx.db.read() as session:
        return session.execute(query.limit(1)).first() is not None
