"""Organisations, users, roles and API keys.

Keys look like ``hl_<prefix>_<secret>``; only the SHA-256 of the whole key is stored (keys carry
128+ bits of randomness, so a fast hash is enough and lookups stay cheap). Roles decide what a
caller may do; *which samples* a caller may see is decided once, in the library's query layer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.errors import Forbidden, Invalid, Unauthorized
from hazardlens.orm import ROLES, ApiKey, Organisation, User
from hazardlens.settings import get_settings

PERMISSIONS: dict[str, frozenset[str]] = {
    "samples:read": frozenset(ROLES),
    "samples:write": frozenset({"inspector", "curator", "admin", "service"}),
    "samples:delete": frozenset({"curator", "admin"}),
    "annotations:write": frozenset({"curator", "admin"}),
    "annotations:review": frozenset({"reviewer", "admin"}),
    "labeling:assign": frozenset({"reviewer", "admin"}),
    "labeling:import": frozenset({"curator", "admin"}),
    "labeling:export": frozenset({"curator", "reviewer", "admin"}),
    "suggestions:request": frozenset({"curator", "reviewer", "admin"}),
    "datasets:write": frozenset({"curator", "admin"}),
    "datasets:read": frozenset({"curator", "reviewer", "admin"}),
    "jobs:read": frozenset({"curator", "reviewer", "admin"}),
    "train": frozenset({"admin"}),
    "models:read": frozenset(ROLES),
    "models:promote": frozenset({"admin"}),
    "detect": frozenset(ROLES),
    "inspections:write": frozenset({"inspector", "service", "admin"}),
    "inspections:read": frozenset({"inspector", "service", "reviewer", "admin"}),
    "findings:review": frozenset({"inspector", "service", "admin"}),
    # Provincial items/classes (法制审核): an organisation's admin proposes, its legal reviewers decide.
    "taxonomy:propose": frozenset({"admin"}),
    "taxonomy:review": frozenset({"legal"}),
    "taxonomy:read_additions": frozenset({"admin", "legal", "reviewer", "curator"}),
    "audit:read": frozenset({"curator", "reviewer", "admin"}),
    "keys:manage": frozenset({"admin"}),
    # the enforcement system's callbacks (webhooks): the organisation's admin or its service account
    "webhooks:manage": frozenset({"admin", "service"}),
    "organisation:settings": frozenset({"admin"}),  # the organisation's own choices (capture settings)
    # removing unreferenced objects from the one shared store (blob_gc): admins, of the system organisation only
    "store:gc": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from an API key once per request."""

    user_id: int | None
    name: str
    org_code: str
    role: str

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(f"role '{self.role}' may not do '{permission}'", code="forbidden")


SYSTEM = Principal(user_id=None, name="system", org_code="000000", role="admin")


def is_system(principal: Principal, system_org: str | None = None) -> bool:
    """Whether ``principal`` acts for the whole installation: the built-in :data:`SYSTEM`, or an
    administrator of the system organisation (``HAZARDLENS_SYSTEM_ORG``, default ``000000``; the
    CLI's default ``cli-000000``). An administrator of any other organisation administers that
    organisation only."""
    if principal == SYSTEM:
        return True
    org = system_org if system_org is not None else get_settings().system_org
    return principal.role == "admin" and principal.org_code == org


def require_system(principal: Principal, what: str, system_org: str | None = None) -> None:
    """Forbidden (``system_only``) unless :func:`is_system`: for changes that affect every
    organisation at once, such as the one model registry that serves all detection."""
    if not is_system(principal, system_org):
        org = system_org if system_org is not None else get_settings().system_org
        raise Forbidden(
            f"{what} affects every organisation: only an administrator of the system organisation {org} may do it",
            code="system_only",
        )


def principal_of(user: User) -> Principal:
    """The principal a user row acts as (API key, CLI user, the creator of a background job)."""
    return Principal(user_id=user.id, name=user.name, org_code=user.org_code, role=user.role)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_org(session: Session, code: str, name: str = "") -> Organisation:
    code = code.strip()
    if not code.isdigit() or not 2 <= len(code) <= 12:
        raise Invalid(
            f"organisation code must be a numeric region code such as 420000, not {code!r}", code="invalid_org"
        )
    org = session.get(Organisation, code)
    if org is None:
        org = Organisation(code=code, name=name)
        session.add(org)
        session.flush()
    return org


def ensure_user(session: Session, org_code: str, name: str, role: str) -> User:
    if role not in ROLES:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(ROLES)}", code="invalid_role")
    ensure_org(session, org_code)
    user = session.scalar(select(User).where(User.org_code == org_code, User.name == name))
    if user is None:
        user = User(org_code=org_code, name=name, role=role)
        session.add(user)
        session.flush()
    elif user.role != role:
        raise Invalid(f"user {name!r} of {org_code} already has role {user.role!r}", code="role_mismatch")
    return user


def create_key(
    session: Session, org_code: str, role: str, name: str | None = None, expires_days: int | None = None
) -> tuple[str, User]:
    """Create a key (and its user when new). The plain key is returned once and never stored."""
    user = ensure_user(session, org_code, name or f"{role}-{org_code}", role)
    prefix = secrets.token_hex(6)
    key = f"hl_{prefix}_{secrets.token_urlsafe(24)}"
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    session.add(ApiKey(prefix=prefix, key_hash=_hash(key), user_id=user.id, expires_at=expires))
    session.flush()
    return key, user


def authenticate(session: Session, key: str | None) -> Principal:
    if not key:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_key")
    parts = key.strip().split("_")
    if len(parts) < 3 or parts[0] != "hl":
        raise Unauthorized("invalid API key", code="invalid_key")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key.strip())):
        raise Unauthorized("invalid API key", code="invalid_key")
    now = datetime.now(UTC)
    if row.revoked_at is not None:
        raise Unauthorized("this API key has been revoked", code="revoked_key")
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise Unauthorized("this API key has expired", code="expired_key")
    user = session.get(User, row.user_id)
    assert user is not None
    return principal_of(user)


def revoke_key(session: Session, prefix: str) -> None:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise Invalid(f"no key with prefix {prefix!r}", code="unknown_key")
    row.revoked_at = datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
