"""The handful of long-lived things every part needs (settings, catalogue, store, taxonomy), built
once per process and handed to the library, the API and the CLI alike."""

from __future__ import annotations

import threading
import time
from functools import cached_property
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.db import Database
from hazardlens.settings import Settings, get_settings
from hazardlens.store import ObjectStore, open_store
from hazardlens.taxonomy import Taxonomy, load_taxonomy


class Context:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._tax_lock = threading.Lock()
        self._tax: dict[str | None, tuple[float, Taxonomy]] = {}

    @cached_property
    def db(self) -> Database:
        return Database(self.settings)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings)

    @cached_property
    def base_taxonomy(self) -> Taxonomy:
        return load_taxonomy(self.settings.taxonomy_path)

    def taxonomy(
        self, session: Session | None = None, max_age_s: float = 2.0, *, org_code: str | None = None
    ) -> Taxonomy:
        """The shipped taxonomy plus provincial additions from the catalogue (inactive until approved).

        With ``org_code``, only that organisation's additions: an approved provincial item or class is
        usable in the organisation that proposed it and nowhere else (labeling, findings, its
        ``GET /v1/taxonomy``). Without, every organisation's additions: the national view the ministry
        reviews for adoption, and what the model registry checks a model's classes against.

        Cached briefly per organisation, so that an approval reaches every worker within seconds without
        a query per box. Without a session the additions are read through a read-only session, which on
        SQLite never waits for the write lock (a caller may hold it); with one, through the caller's session.
        """
        with self._tax_lock:
            now = time.monotonic()
            cached = self._tax.get(org_code)
            if cached is not None and now - cached[0] < max_age_s:
                return cached[1]
            if session is not None:
                additions = self._additions(session, org_code)
            else:
                with self.db.read_session() as own:
                    additions = self._additions(own, org_code)
            tax = self.base_taxonomy.with_additions(additions) if additions else self.base_taxonomy
            if len(self._tax) > 256:  # bounded: one entry per organisation that asked recently
                self._tax.clear()
            self._tax[org_code] = (now, tax)
            return tax

    @staticmethod
    def _additions(session: Session, org_code: str | None = None) -> list[dict[str, Any]]:
        from hazardlens.orm import TaxonomyAddition

        query = select(TaxonomyAddition).order_by(TaxonomyAddition.id)
        if org_code is not None:
            query = query.where(TaxonomyAddition.org_code == org_code)
        rows = session.scalars(query).all()
        return [
            {"kind": r.kind, "key": r.key, "org_code": r.org_code, "status": r.status, "payload": r.payload}
            for r in rows
        ]

    def invalidate_taxonomy(self) -> None:
        with self._tax_lock:
            self._tax.clear()

    def init(self) -> None:
        """Prepare home, catalogue and store (safe to run twice)."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.db.init()
        self.store.ping()
        self.base_taxonomy  # noqa: B018 - validate the taxonomy at start, fail early
        from hazardlens.rules import default_rules

        default_rules(self)  # and the derived-finding rules, which are checked against it

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
