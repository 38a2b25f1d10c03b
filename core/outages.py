"""What the service answers when the infrastructure under it fails: the catalogue database down or
restarting, or its disk full. The object store says so itself (``hazardlens.store.StoreUnavailable``,
``StoreFull``); the catalogue's failures surface as SQLAlchemy exceptions from wherever a query
runs, so the API translates them once, here, into the one error shape with a code a client can act
on (retry later) instead of an internal error.

Nothing is remembered about an outage: every request tries the database again (PostgreSQL's pool
pings a connection before lending it), so the service recovers by itself when the database does.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from hazardlens.errors import HazardError

#: What SQLite and PostgreSQL say when the catalogue's disk is full (PostgreSQL SQLSTATE 53100).
_FULL_MARKERS = ("database or disk is full", "no space left on device", "could not extend file")


class CatalogueUnavailable(HazardError):
    """The catalogue cannot be reached, is restarting, or stays busy past the lock timeout."""

    status, code = 503, "catalogue_unavailable"


class CatalogueFull(HazardError):
    """The catalogue's disk is full: nothing of the request was committed."""

    status, code = 507, "insufficient_storage"


#: The SQLAlchemy exceptions :func:`catalogue_error` translates (the API registers a handler for each).
OUTAGE_ERRORS: tuple[type[DBAPIError], ...] = (OperationalError, InterfaceError)


def catalogue_error(exc: BaseException) -> HazardError | None:
    """The HazardError a database failure means for the caller, or None when it is not an outage
    (a bug or a constraint: those stay what they are)."""
    if not isinstance(exc, OUTAGE_ERRORS):
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).lower()
    if getattr(orig, "pgcode", None) == "53100" or any(marker in text for marker in _FULL_MARKERS):
        return CatalogueFull("the catalogue's disk is full; nothing was saved")
    if "locked" in text or "busy" in text:
        return CatalogueUnavailable("the catalogue is busy; retry shortly")
    return CatalogueUnavailable("the catalogue database cannot be reached; retry shortly")


__all__ = ["OUTAGE_ERRORS", "CatalogueFull", "CatalogueUnavailable", "catalogue_error"]
