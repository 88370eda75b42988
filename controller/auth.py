"""Bearer tokens: made with `secrets`, stored only as sha256 hex, checked per route kind."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.context import Context, get_ctx
from controller.errors import Forbidden, Unauthorized
from controller.models import Token

TokenKind = Literal["admin", "join", "host"]


@dataclass(frozen=True)
class Principal:
    kind: TokenKind
    host_name: str | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, kind: TokenKind, *, host_name: str | None = None) -> str:
    """Create a token, store its hash, return the token (the only time it is visible)."""
    token = secrets.token_urlsafe(32)
    session.add(Token(sha256=hash_token(token), kind=kind, host_name=host_name))
    return token


def revoke_tokens(session: Session, kind: TokenKind, *, host_name: str | None = None) -> None:
    query = delete(Token).where(Token.kind == kind)
    if host_name is not None:
        query = query.where(Token.host_name == host_name)
    session.execute(query)


def has_admin_token(session: Session) -> bool:
    return session.execute(select(Token.id).where(Token.kind == "admin")).first() is not None


def principal(request: Request, ctx: Context = Depends(get_ctx)) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    with ctx.db.read() as session:
        row = session.execute(
            select(Token).where(Token.sha256 == hash_token(token.strip()))
        ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("unknown or revoked token")
    return Principal(kind=row.kind, host_name=row.host_name)  # type: ignore[arg-type]


def require_admin(who: Principal = Depends(principal)) -> Principal:
    if who.kind != "admin":
        raise Forbidden(f"a {who.kind} token may not do this; it needs the admin token")
    return who


def require_join(who: Principal = Depends(principal)) -> Principal:
    if who.kind not in ("join", "admin"):
        raise Forbidden("joining a host needs the join token")
    return who


def require_admin_or_host(who: Principal = Depends(principal)) -> Principal:
    if who.kind not in ("admin", "host"):
        raise Forbidden(f"a {who.kind} token may not do this")
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
