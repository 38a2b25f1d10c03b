"""The instances this one knows: name, URL, public key, organisation and what each may pull or push.

Registering a peer is an installation-wide change (it opens the shared library to another system),
so only the system organisation's administrators do it (``require_system``); every change is audited.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.audit import record, snapshot
from hazardlens.auth import Principal, require_system
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.federation.signing import key_id, parse_public
from hazardlens.orm import Peer, utcnow

#: What a peer may be allowed: pull shared samples and approved labels, pull published model
#: versions, pull the taxonomy, push feedback counts.
CAPABILITIES: tuple[str, ...] = ("samples", "models", "taxonomy", "feedback")
DEFAULT_ALLOW: tuple[str, ...] = ("samples", "models", "taxonomy", "feedback")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
_AUDITED = ["name", "url", "key_id", "org_code", "allow"]
_SCHEDULE = ["pull_every_s", "full_pull_every_s", "pull_what"]
#: What a scheduled pull may fetch, and what it fetches unless told otherwise.
PULL_PARTS: tuple[str, ...] = ("samples", "models", "taxonomy")
DEFAULT_PULL: tuple[str, ...] = ("samples", "models")
#: A scheduled pull at most every minute (a tick cannot be finer) and at least every 30 days.
MIN_EVERY_S, MAX_EVERY_S = 60, 30 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^(\d{1,7})\s*([smhd]?)$")


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


def parse_every(text: str | int | None, what: str = "--pull-every") -> int | None:
    """``15m``, ``1h``, ``1d``, ``900`` (seconds) -> seconds; ``off``/``0``/empty -> None (no schedule)."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    if raw in ("", "off", "0", "none", "never"):
        return None
    m = _EVERY.match(raw)
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"] if m else -1
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise Invalid(
            f"{what} takes an interval such as 15m, 2h or 1d (1 minute to 30 days) or 'off', not {text!r}",
            code="invalid_peer",
        )
    return seconds


def _pull_parts(what: list[str] | tuple[str, ...] | None) -> list[str]:
    parts = list(dict.fromkeys(w.strip() for w in (what or DEFAULT_PULL) if w.strip()))
    unknown = [w for w in parts if w not in PULL_PARTS]
    if unknown or not parts:
        raise Invalid(
            f"a pull fetches {', '.join(PULL_PARTS)}; not {', '.join(unknown) or 'nothing'}", code="invalid_peer"
        )
    return parts


def set_schedule(
    session: Session,
    principal: Principal,
    name: str,
    pull_every_s: int | None,
    full_pull_every_s: int | None = None,
    pull_what: list[str] | tuple[str, ...] | None = None,
) -> Peer:
    """Turn the peer's scheduled pull on (every ``pull_every_s`` seconds, from cursor 0 every
    ``full_pull_every_s``) or off (``pull_every_s`` None). The first pull is due at once: the service's
    next tick submits it. System organisation only, audited."""
    require_system(principal, "scheduling pulls from a federation peer")
    peer = get_peer(session, name)
    before = snapshot(peer, _SCHEDULE)
    for value in (pull_every_s, full_pull_every_s):
        if value is not None and not MIN_EVERY_S <= value <= MAX_EVERY_S:
            raise Invalid("a pull interval is 1 minute to 30 days", code="invalid_peer")
    if full_pull_every_s is not None and pull_every_s is None:
        raise Invalid("a full re-pull needs a scheduled pull (--pull-every)", code="invalid_peer")
    now = utcnow()
    peer.pull_every_s = pull_every_s
    peer.full_pull_every_s = full_pull_every_s
    peer.pull_what = _pull_parts(pull_what) if pull_every_s is not None else None
    peer.next_pull_at = now if pull_every_s is not None else None
    peer.next_full_pull_at = now + timedelta(seconds=full_pull_every_s) if full_pull_every_s else None
    session.flush()
    record(session, principal, "peer.schedule", "peer", peer.id, before=before, after=snapshot(peer, _SCHEDULE))
    return peer


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
        "schedule": {
            "pull_every_s": peer.pull_every_s,
            "full_pull_every_s": peer.full_pull_every_s,
            "pull_what": list(peer.pull_what or []),
            "next_pull_at": iso(peer.next_pull_at),
            "next_full_pull_at": iso(peer.next_full_pull_at),
            "pull_job_id": peer.pull_job_id,
        },
    }
