"""API tokens: list, create (admin or deploy scope, the token shown once), revoke (admin only).

A deploy token may carry the domain suffixes it may claim for its app (`domains`, checked by
controller/core/domains.py: no wildcard, no public suffix); by default none.

Host tokens come from joining and join tokens from `paas-registry init`; they are listed and
may be revoked here, but not created.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select

from common.names import AppName, Domain, check_token_name
from common.wire import TokenCreated, TokenInfo
from controller.api.auth import Principal, require_admin
from controller.api.context import get_ctx
from controller.context import Context
from controller.core.domains import check_allowance
from controller.errors import Conflict, NotFound
from controller.store.models import App, Token
from controller.store.tokens import issue_token_row

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    scope: Literal["admin", "deploy"]
    app: AppName | None = None
    name: str | None = None
    # deploy scope: the domain suffixes it may claim for its app (none: no custom domain)
    domains: list[Domain] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _app_for_deploy(self) -> TokenCreate:
        if self.name is not None:
            check_token_name(self.name)
        if self.scope == "deploy" and self.app is None:
            raise ValueError("a deploy token needs the app it may touch (app)")
        if self.scope == "admin" and self.app is not None:
            raise ValueError("an admin token is not bound to an app; leave app out")
        if self.scope == "admin" and self.domains:
            raise ValueError("an admin token may claim any domain; leave domains out")
        return self


def _info(row: Token) -> dict[str, object]:
    return {
        "id": row.id,
        "scope": row.kind,
        "name": row.name,
        "app": row.app_name,
        "host": row.host_name,
        "domains": list(row.domains or []),
        "created_at": row.created_at,
    }


@router.get("", response_model=list[TokenInfo], dependencies=[Depends(require_admin)])
def list_tokens(ctx: Context = Depends(get_ctx)) -> list[TokenInfo]:
    with ctx.db.read() as session:
        rows = session.execute(select(Token).order_by(Token.id)).scalars()
        return [TokenInfo.model_validate(_info(row)) for row in rows]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(
    body: TokenCreate,
    ctx: Context = Depends(get_ctx),
    _who: Principal = Depends(require_admin),
) -> TokenCreated:
    domains = check_allowance(body.domains)
    with ctx.db.write() as session:
        if (
            body.app is not None
            and session.execute(select(App.id).where(App.name == body.app)).first() is None
        ):
            raise NotFound(f"app {body.app} does not exist; create it first")
        row, token = issue_token_row(
            session, body.scope, name=body.name, app=body.app, domains=domains
        )
        return TokenCreated.model_validate({**_info(row), "token": token})


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(
    token_id: int = Path(ge=1),
    ctx: Context = Depends(get_ctx),
    _who: Principal = Depends(require_admin),
) -> Response:
    with ctx.db.write() as session:
        row = session.get(Token, token_id)
        if row is None:
            raise NotFound(f"no token with id {token_id}")
        if row.kind == "admin":
            admins = session.execute(
                select(func.count()).select_from(Token).where(Token.kind == "admin")
            ).scalar_one()
            if admins <= 1:
                raise Conflict("this is the last admin token; create another before revoking it")
        session.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
