"""API tokens (admin) and who the caller is (anyone with a credential)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from aggregator import store
from aggregator.api.access import ADMIN, AUTH_RESPONSES, VIEWER, Who
from aggregator.api.deps import MAX_ID, Db, Settings, dt, write_connection
from aggregator.auth import accounts
from aggregator.auth.roles import ROLE_NAMES, Role
from aggregator.store.access import TokenRow

router = APIRouter(tags=["access"], responses=AUTH_RESPONSES)
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="token id")]
RoleName = Annotated[str, Field(pattern="^(" + "|".join(ROLE_NAMES) + ")$")]


class Me(BaseModel):
    name: str
    role: str = Field(description="viewer, operator or admin")
    kind: str = Field(description="session (a page login), token or service")


class TokenPublic(BaseModel):
    id: int
    name: str
    role: str
    hint: str = Field(description="the token's first characters, to tell it apart")
    created_at: object
    revoked_at: object


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=accounts.NAME_RE.pattern)
    role: RoleName


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown this once, stored only as its sha256")


def token_public(row: TokenRow) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        name=row.name,
        role=row.role,
        hint=row.hint,
        created_at=dt(row.created_ts),
        revoked_at=dt(row.revoked_ts),
    )


@router.get("/api/me", response_model=Me, summary="Who the credential is", dependencies=[VIEWER])
def me(who: Who) -> Me:
    return Me(name=who.name, role=who.role.name, kind=who.kind)


@router.get(
    "/api/tokens",
    response_model=list[TokenPublic],
    summary="API tokens (never their secrets), oldest first",
    dependencies=[ADMIN],
)
def list_tokens(conn: Db) -> list[TokenPublic]:
    return [token_public(t) for t in store.access.list_tokens(conn)]


@router.post(
    "/api/tokens",
    response_model=TokenCreated,
    status_code=201,
    summary="Make an API token; its secret is in this answer only",
    dependencies=[ADMIN],
)
def create_token(settings: Settings, body: TokenCreate) -> TokenCreated:
    with write_connection(settings) as conn, store.transaction(conn):
        made = accounts.create_token(conn, name=body.name, role=Role.parse(body.role))
        row = store.access.get_token(conn, made.id)
    assert row is not None
    return TokenCreated(**token_public(row).model_dump(), token=made.token)


@router.delete(
    "/api/tokens/{token_id}",
    status_code=204,
    summary="Revoke an API token (at once: its next request gets 401)",
    dependencies=[ADMIN],
    responses={404: {"description": "no such token, or revoked already"}},
)
def revoke_token(settings: Settings, token_id: TokenId) -> None:
    with write_connection(settings) as conn, store.transaction(conn):
        if not store.access.revoke_token(conn, token_id, now_ts=time.time()):
            raise HTTPException(404, f"no token {token_id}, or revoked already")
