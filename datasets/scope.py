"""Sharing a sample, or taking it back (共建共享共用): the owning organisation sets its scope.

Only the owner changes it (a shared sample is readable by others, never theirs to change), a curator
or admin as for deleting, and every change is audited with the scope before and after: the
federation feed (``hazardlens.federation.serve``) reads that record to tell peers that a sample once
shared was made private again, so they withdraw it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from hazardlens.audit import record, snapshot
from hazardlens.auth import Principal
from hazardlens.datasets.tenancy import get_sample
from hazardlens.errors import Forbidden, Invalid
from hazardlens.orm import SCOPES, Sample, utcnow


def set_scope(session: Session, principal: Principal, sample_id: int, scope: str) -> Sample:
    principal.require("samples:delete")
    if scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}", code="invalid_meta")
    sample = get_sample(session, principal, sample_id)
    if sample.org_code != principal.org_code:
        raise Forbidden(
            f"sample {sample_id} belongs to organisation {sample.org_code}; only it may change its scope",
            code="not_owner",
        )
    if sample.scope == scope:
        return sample
    before = snapshot(sample, ["scope"])
    sample.scope = scope
    sample.updated_at = utcnow()
    session.flush()
    record(
        session,
        principal,
        "sample.scope",
        "sample",
        sample.id,
        sample_id=sample.id,
        before=before,
        after={"scope": scope},
    )
    return sample
