"""Typed dependencies shared by every router: the context, a DB session, and the caller."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from hazardlens.auth import Principal, authenticate
from hazardlens.context import Context


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def get_session(ctx: Annotated[Context, Depends(get_ctx)]) -> Iterator[Session]:
    """A unit of work that writes (on SQLite: the write lock from its first statement to the commit)."""
    with ctx.db.session() as session:
        yield session


def get_read_session(ctx: Annotated[Context, Depends(get_ctx)]) -> Iterator[Session]:
    """A read-only session for GET routes: never takes SQLite's write lock, so reads never make a
    writer wait (issue 13, item 7)."""
    with ctx.db.read_session() as session:
        yield session


def _key_from(header: str) -> str | None:
    """``Bearer KEY``; also ``Basic base64(user:KEY)``, which is how Label Studio authenticates to an
    ML backend (the user name is ignored, the password is the API key)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def get_principal(request: Request, ctx: Annotated[Context, Depends(get_ctx)]) -> Principal:
    key = _key_from(request.headers.get("authorization", ""))
    # Authentication only reads: a read session, so that no request holds the write lock to check its key.
    with ctx.db.read_session() as session:
        principal = authenticate(session, key)
    request.state.principal = principal
    return principal


def require(permission: str) -> Callable[..., Principal]:
    """Dependency factory: the caller, once their role is known to allow ``permission``."""

    def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        principal.require(permission)
        return principal

    dependency.__name__ = f"require_{permission.replace(':', '_')}"
    return dependency


CtxDep = Annotated[Context, Depends(get_ctx)]
# scope="function": commit (or roll back) before the response is sent, so a 201 is never followed by a
# failed commit and a client's next read always sees what it was just told.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
