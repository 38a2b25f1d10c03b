"""Database engine and sessions for the catalogue (SQLite in WAL mode by default, PostgreSQL at scale).

The schema is owned by Alembic migrations (``core/migrations``); ``init_db`` upgrades to head, so
a fresh home and an old one take the same path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from hazardlens.settings import Settings

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, write: bool = True) -> Engine:
    """``write=False`` gives SQLite connections that begin deferred transactions and refuse to write
    (``PRAGMA query_only``): in WAL mode such a reader never waits for a writer and never makes a
    writer wait, so a lookup made while another session holds the write lock (even the caller's
    own) cannot deadlock, and a read path that writes by mistake fails loudly instead of taking the
    lock (issue 13, item 7)."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers work while a writer commits; foreign keys are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if not write:
                cur.execute("PRAGMA query_only=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            # BEGIN IMMEDIATE: take the write lock up front, so two writers never deadlock on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        _disable_pysqlite_autobegin(engine)
        return engine
    # A statement waits at most 30 s for a row or table lock (as SQLite's busy timeout above), then
    # fails: a lock held by a stuck or half-dead client becomes an error its caller retries (a job
    # unit is sent again), never a worker that waits for ever and takes its queue with it.
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _pg_lock_timeout(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # SET, not a connect option: the URL's own options (a search_path) stay as they are.
        cur = dbapi_conn.cursor()
        cur.execute("SET lock_timeout = '30s'")
        cur.close()
        dbapi_conn.commit()  # a rolled-back SET would be undone

    return engine


def _disable_pysqlite_autobegin(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (safe to run twice)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _read_only_transaction(_session: Session, _transaction: object, connection: Connection) -> None:
    # PostgreSQL: the read session's transaction is READ ONLY, so a read path that writes by mistake
    # fails there as it does on SQLite (query_only).
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")


class Database:
    """Engine + session factory for one catalogue.

    Two kinds of session (issue 13, item 7): :meth:`session` for a unit of work that writes (on
    SQLite it takes the write lock at its first statement, ``BEGIN IMMEDIATE``, and holds it to the
    commit, so keep CPU and I/O out of it), and :meth:`read_session` for lookups (authentication,
    every GET, the model poller, readiness): deferred and read-only, it never takes the write lock,
    so readers never make a writer wait or fail with ``database is locked``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine: Engine | None = None
        self._read_lock = threading.Lock()

    def init(self) -> None:
        upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any error (nothing half-written)."""
        s = self.sessionmaker()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for lookups only (never commits): on SQLite it does not take the write lock."""
        s = Session(self.read_engine, expire_on_commit=False)
        if self.read_engine is self.engine:  # PostgreSQL: one engine, read-only transactions
            event.listen(s, "after_begin", _read_only_transaction)
        try:
            yield s
        finally:
            # close() ends the transaction without expiring what was loaded (rollback() would), so the
            # rows stay readable after the session, as they do after a write session's commit.
            s.close()

    @property
    def read_engine(self) -> Engine:
        """The engine of :meth:`read_session` (SQLite: deferred, query_only connections; otherwise
        the one engine)."""
        with self._read_lock:
            if self._read_engine is None:
                url = self.settings.database
                self._read_engine = make_engine(url, write=False) if url.startswith("sqlite") else self.engine
            return self._read_engine

    def ping(self) -> None:
        """A readiness probe: a read, which on SQLite never waits for (or blocks) a writer."""
        from sqlalchemy import text

        with self.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None and self._read_engine is not self.engine:
            self._read_engine.dispose()
