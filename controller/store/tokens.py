"""Token rows: a token is shown once when made and stored only as its sha256 hex.

The API checks them per route (controller/api/auth.py); `paas-registry init` makes the first
admin and join tokens without loading the API.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.store.models import Token

TokenKind = Literal["admin", "deploy", "join", "host"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session,
    kind: TokenKind,
    *,
    host_name: str | None = None,
    name: str | None = None,
    app: str | None = None,
) -> str:
    """Create a token, store its hash, return the token (the only time it is visible)."""
    token = secrets.token_urlsafe(32)
    session.add(
        Token(sha256=hash_token(token), kind=kind, host_name=host_name, name=name, app_name=app)
    )
    return token


def issue_token_row(
    session: Session,
    kind: TokenKind,
    *,
    name: str | None = None,
    app: str | None = None,
    domains: list[str] | None = None,
) -> tuple[Token, str]:
    """Like issue_token, but also hands back the stored row (its id is what `revoke` takes)."""
    token = secrets.token_urlsafe(32)
    row = Token(
        sha256=hash_token(token), kind=kind, name=name, app_name=app, domains=list(domains or [])
    )
    session.add(row)
    session.flush()
    return row, token


def revoke_tokens(session: Session, kind: TokenKind, *, host_name: str | None = None) -> None:
    query = delete(Token).where(Token.kind == kind)
    if host_name is not None:
        query = query.where(Token.host_name == host_name)
    session.execute(query)


def has_admin_token(session: Session) -> bool:
    return session.execute(select(Token.id).where(Token.kind == "admin")).first() is not None
