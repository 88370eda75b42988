"""Bearer tokens: made with `secrets`, stored only as sha256 hex, checked per route kind.

Scopes (the `kind` column): `admin` may do everything; `deploy` is bound to one app and may
deploy, configure, scale, roll back and read that app only; `host` is a machine's or a
frontend's own token (made at join); `join` only joins hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import select

from controller.api.context import get_ctx
from controller.context import Context
from controller.errors import Forbidden, Unauthorized
from controller.store.models import Token
from controller.store.tokens import TokenKind, hash_token

PRINCIPAL_KEY = "paas.principal"  # where the request's principal is kept (audit reads it)


@dataclass(frozen=True)
class Principal:
    kind: TokenKind
    host_name: str | None = None
    token_id: int | None = None
    name: str | None = None
    app: str | None = None  # deploy tokens: the one app they may touch
    domains: tuple[str, ...] = ()  # deploy tokens: the domain suffixes they may claim

    @property
    def allowed_domains(self) -> tuple[str, ...] | None:
        """For controller/core/domains.py: None (any domain) for admin, else the allowance."""
        return None if self.kind == "admin" else self.domains

    @property
    def label(self) -> str:
        """How the audit log and error messages name this token."""
        shown = self.name or (self.host_name if self.kind == "host" else None)
        return f"{self.kind} token #{self.token_id}" + (f" ({shown})" if shown else "")


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def lookup(ctx: Context, token: str) -> Principal | None:
    with ctx.db.read() as session:
        row = session.execute(
            select(Token).where(Token.sha256 == hash_token(token))
        ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(
        kind=row.kind,  # type: ignore[arg-type]
        host_name=row.host_name,
        token_id=row.id,
        name=row.name,
        app=row.app_name,
        domains=tuple(row.domains or ()),
    )


def principal(request: Request, ctx: Context = Depends(get_ctx)) -> Principal:
    token = bearer(request)
    if token is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    who = lookup(ctx, token)
    if who is None:
        raise Unauthorized("unknown or revoked token")
    request.scope[PRINCIPAL_KEY] = who
    return who


def require_admin(who: Principal = Depends(principal)) -> Principal:
    if who.kind != "admin":
        if who.kind == "deploy":
            raise Forbidden(
                f"a deploy token for app {who.app!r} may only touch that app; this needs the"
                " admin token"
            )
        raise Forbidden(f"a {who.kind} token may not do this; it needs the admin token")
    return who


def require_app_scope(request: Request, who: Principal = Depends(principal)) -> Principal:
    """Admin, or a deploy token of the app named in the path (`{app}`). A deploy token may
    not create, list or delete apps: those are not "its app"."""
    if who.kind == "admin":
        return who
    if who.kind != "deploy":
        raise Forbidden(f"a {who.kind} token may not do this; it needs the admin token")
    target = request.path_params.get("app")
    if target is None:
        raise Forbidden(
            f"a deploy token for app {who.app!r} may only touch that app, not list or create apps"
        )
    if target != who.app:
        raise Forbidden(f"a deploy token for app {who.app!r} may not touch app {target!r}")
    route = request.scope.get("route")
    if request.method == "DELETE" and getattr(route, "path", "") == "/v1/apps/{app}":
        raise Forbidden("a deploy token may not delete its app; that needs the admin token")
    return who


def require_uploader(who: Principal = Depends(principal)) -> Principal:
    """Artifacts are content-addressed and inert until a release names them: admin and
    deploy tokens may upload (a deploy token's release still needs its own app)."""
    if who.kind not in ("admin", "deploy"):
        raise Forbidden(f"a {who.kind} token may not upload artifacts")
    return who


def require_join(who: Principal = Depends(principal)) -> Principal:
    if who.kind not in ("join", "admin"):
        raise Forbidden("joining a host needs the join token")
    return who


def require_admin_or_host(who: Principal = Depends(principal)) -> Principal:
    if who.kind not in ("admin", "host"):
        raise Forbidden(f"a {who.kind} token may not do this")
    return who


def require_artifact_reader(who: Principal = Depends(principal)) -> Principal:
    """Admin and deploy tokens check whether an artifact is stored (to skip an upload)."""
    if who.kind not in ("admin", "host", "deploy"):
        raise Forbidden(f"a {who.kind} token may not do this")
    return who


def require_artifact_downloader(who: Principal = Depends(principal)) -> Principal:
    """Only hosts (which install them) and the admin download artifacts: an artifact is
    another tenant's code, and a deploy token that learnt its sha256 must not read it."""
    if who.kind not in ("admin", "host"):
        raise Forbidden(f"a {who.kind} token may not download artifacts")
    return who


def check_own_host(who: Principal, host: str, *, admin_may: bool) -> None:
    """A host token acts only for its own host; admin may read any host."""
    if who.kind == "admin" and admin_may:
        return
    if who.kind == "host" and who.host_name == host:
        return
    if who.kind == "host":
        raise Forbidden(f"this token belongs to host {who.host_name!r}, not {host!r}")
    raise Forbidden(f"a {who.kind} token may not do this; it needs host {host!r}'s token")
