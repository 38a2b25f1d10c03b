"""The instances this one knows: name, URL, public key, organisation and what each may pull or push.

Registering a peer is an installation-wide change (it opens the shared library to another system),
so only the system organisation's administrators do it (``require_system``); every change is audited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.audit import record, snapshot
from hazardlens.auth import Principal, require_system
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.federation.signing import key_id, parse_public
from hazardlens.orm import Peer

#: What a peer may be allowed: pull shared samples and approved labels, pull published model
#: versions, pull the taxonomy, push feedback counts.
CAPABILITIES: tuple[str, ...] = ("samples", "models", "taxonomy", "feedback")
DEFAULT_ALLOW: tuple[str, ...] = ("samples", "models", "taxonomy", "feedback")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
_AUDITED = ["name", "url", "key_id", "org_code", "allow"]


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if not name or len(name) > 60 or not set(name) <= _NAME_CHARS:
        raise Invalid(
            "a peer name is 1-60 lower-case letters, digits, '-' or '_' (e.g. hubei, ministry)", code="invalid_peer"
        )
    return name


def _check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 500 or parts.query or parts.fragment:
        raise Invalid(f"a peer URL is http(s)://host[:port][/path], not {url!r}", code="invalid_peer")
    return url


def add_peer(
    session: Session,
    principal: Principal,
    name: str,
    url: str,
    public_key: str,
    org_code: str | None = None,
    allow: list[str] | tuple[str, ...] = DEFAULT_ALLOW,
) -> Peer:
    require_system(principal, "registering a federation peer")
    name, url, public = _check_name(name), _check_url(url), parse_public(public_key)
    unknown = [a for a in allow if a not in CAPABILITIES]
    if unknown or not allow:
        raise Invalid(
            f"allow takes {', '.join(CAPABILITIES)}; not {', '.join(unknown) or 'nothing'}", code="invalid_peer"
        )
    if org_code is not None and (not org_code.isdigit() or not 2 <= len(org_code) <= 12):
        raise Invalid(f"organisation code must be a numeric region code, not {org_code!r}", code="invalid_org")
    kid = key_id(public)
    if session.scalar(select(Peer).where(Peer.name == name)) is not None:
        raise Conflict(f"a peer named {name!r} is already registered", code="duplicate_peer")
    if session.scalar(select(Peer).where(Peer.key_id == kid)) is not None:
        raise Conflict("a peer with this public key is already registered", code="duplicate_peer")
    peer = Peer(name=name, url=url, public_key=public, key_id=kid, org_code=org_code, allow=list(dict.fromkeys(allow)))
    session.add(peer)
    session.flush()
    record(session, principal, "peer.add", "peer", peer.id, after=snapshot(peer, _AUDITED))
    return peer


def get_peer(session: Session, name: str) -> Peer:
    peer = session.scalar(select(Peer).where(Peer.name == name.strip().lower()))
    if peer is None:
        raise NotFound(f"no peer named {name!r}; 'hazardlens peers list' shows them", code="peer_not_found")
    return peer


def list_peers(session: Session) -> list[Peer]:
    return list(session.scalars(select(Peer).order_by(Peer.name)))


def peer_dict(peer: Peer) -> dict[str, Any]:
    from hazardlens.dates import iso

    return {
        "name": peer.name,
        "url": peer.url,
        "key_id": peer.key_id,
        "public_key": peer.public_key,
        "org_code": peer.org_code,
        "allow": list(peer.allow or []),
        "created_at": iso(peer.created_at),
        "last_seen_at": iso(peer.last_seen_at),
    }
