"""The catalogue at a million samples on PostgreSQL (issue 16 item 4): the searches the console and
the API make, and the near-duplicate lookup done at ingest, timed at scale.

    .venv/bin/python benchmarks/catalogue_scale.py [--rows 1000000] [--repeat 40] [--compare] [--explain]

A fresh schema in the test database (``HAZARDLENS_TEST_PG``, default
``postgresql+psycopg2://postgres@127.0.0.1:5432/test``), created by the project's own migrations so
the indexes measured are the shipped ones, dropped at the end (``--keep`` keeps it). ``--rows``
synthetic samples are loaded with COPY, with the spreads of a national library: 34 organisations
of very different sizes (Zipf), five sectors, annotation statuses as a working library has them,
capture and upload dates over five years, sites, enterprises and cameras (a camera on 40 % of the
photos), tags on a few, 1-3 classes per labelled sample (``sample_classes``, what the class filter
reads), and a 64-bit perceptual hash per sample of which a quarter are near-duplicates of an earlier
photo (0-8 bits away: the next frame of a fixed camera).

Then every query goes through the project's own code (``hazardlens.datasets.search.search``, behind
``GET /v1/samples`` and the console's library, review queue and keyset pages, and
``find_near_duplicates``, the lookup ingest makes), each time in a read session of its own as a
request has, with varying values (a different site, camera, cursor or hash each time). Printed per
query: p50 and p95 in ms and p95 as a multiple of the anchor, a primary-key lookup of one sample
through the same path (``get_sample``) measured in the same run; beside them PostgreSQL's own
execution time of the same statements (EXPLAIN ANALYZE), which is what the indexes decide, where the
end-to-end time also holds the round trips and the client's waits for a core on a busy machine;
and whether the goals hold (search p95 < 50 ms, near-duplicate p95 < 20 ms). ``--compare`` then takes the schema back to
migration 0009 (no band or (column, id) indexes, no sample_tags) and measures again with the same code,
for the before/after table, then times the upgrade back to head (what a deployment's upgrade costs);
``--explain`` prints EXPLAIN (ANALYZE, BUFFERS) of each query once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import ProgrammingError

ROOT = Path(__file__).resolve().parents[1]
PG_BASE = os.environ.get("HAZARDLENS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

SEARCH_GOAL_MS = 50.0
NEAR_DUP_GOAL_MS = 20.0
#: The migration before the indexes of issue 16 item 4 (``--compare`` measures there too).
BEFORE_REVISION = "0009"

ORGS = [f"{11 + i:02d}0000" for i in range(34)]  # province-like codes, 110000 ... 440000
SECTORS = {"general": 0.35, "dust": 0.27, "steel": 0.2, "aluminium": 0.1, "confined_space": 0.08}
STATUSES = {"unlabeled": 0.45, "in_progress": 0.05, "submitted": 0.06, "approved": 0.38, "rejected": 0.06}
SOURCES = {"inspection": 0.55, "import": 0.4, "feedback": 0.05}
TAGS = ["night", "blurred", "drone", "training", "retake"]
YEARS = 5
START = datetime(2021, 1, 1, tzinfo=UTC)


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def class_keys() -> list[str]:
    """The shipped taxonomy's classes, most frequent first (person and helmets lead real libraries)."""
    from hazardlens.settings import config_path
    from hazardlens.taxonomy import load_taxonomy

    return list(load_taxonomy(config_path("taxonomy.yaml")).classes)


@dataclass
class Loaded:
    """What the queries need to know about the data they run on."""

    rows: int
    orgs: list[str]
    sites: int
    cameras: int
    enterprises: int
    classes: list[str]
    group_ids: list[int] = field(default_factory=list)
    phash_sample: list[int] = field(default_factory=list)  # hashes of loaded samples, for lookups
    load_s: float = 0.0


def _pick(rng: np.random.Generator, choices: dict[str, float], n: int) -> np.ndarray:
    return rng.choice(np.array(list(choices)), size=n, p=np.array(list(choices.values())))


def _sql_json_list(values: list[str]) -> str:
    return json.dumps(values, separators=(",", ":"))


def generate(rows: int, seed: int = 7, chunk: int = 100_000) -> Iterator[tuple[str, str, str, list[int], list[int]]]:
    """Chunks of (samples COPY text, sample_classes COPY text, sample_tags COPY text, dup group ids,
    sample hashes).

    Ids are 1..rows in upload order; created_at grows with the id over five years (the library
    fills as photos arrive), captured_at is a few days earlier (10 % unknown)."""
    rng = np.random.default_rng(seed)
    classes = class_keys()
    class_w = zipf_weights(len(classes), 1.1)
    org_w = zipf_weights(len(ORGS), 0.9)
    span_s = YEARS * 365 * 86400
    phashes = np.zeros(rows + 1, np.int64)
    groups = np.zeros(rows + 1, np.int64)  # 0 = no group
    for lo in range(1, rows + 1, chunk):
        ids = np.arange(lo, min(lo + chunk, rows + 1))
        n = len(ids)
        fresh = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True)
        variant = (rng.random(n) < 0.25) & (ids > 1)
        base = np.maximum(1, (ids * rng.random(n)).astype(np.int64))  # an earlier photo
        base = np.minimum(base, ids - 1)
        flips = np.zeros(n, np.uint64)
        nbits = rng.integers(0, 9, size=n)
        for k in range(8):
            bit = rng.integers(0, 64, size=n).astype(np.uint64)
            flips ^= np.where(nbits > k, np.left_shift(np.uint64(1), bit), np.uint64(0))
        plain = ~variant
        phashes[ids[plain]] = fresh[plain]  # before the variants: a base may be a new photo of this chunk
        for i in np.flatnonzero(variant):  # sequential: a base may be in this chunk
            b = base[i]
            phashes[ids[i]] = (phashes[b].view(np.uint64) ^ flips[i]).view(np.int64)
            groups[ids[i]] = groups[b] or b
        org = rng.choice(len(ORGS), size=n, p=org_w)
        sector = _pick(rng, SECTORS, n)
        status = _pick(rng, STATUSES, n)
        source = _pick(rng, SOURCES, n)
        shared = rng.random(n) < 0.3
        deleted = rng.random(n) < 0.01
        has_camera = rng.random(n) < 0.4
        camera = rng.integers(0, 6000, size=n)
        site = rng.integers(0, 20000, size=n)
        enterprise = rng.integers(0, 8000, size=n)
        created = START.timestamp() + (ids - 1) / max(rows, 1) * span_s + rng.random(n) * 60
        lag = rng.exponential(5 * 86400, size=n)
        has_captured = rng.random(n) < 0.9
        has_tag = rng.random(n) < 0.03
        tag = rng.integers(0, len(TAGS), size=n)
        ncls = rng.integers(1, 4, size=n)
        cls_pick = rng.choice(len(classes), size=(n, 3), p=class_w)
        width = rng.choice([1920, 4000, 1280, 3024], size=n)
        samples = io.StringIO()
        links = io.StringIO()
        tag_links = io.StringIO()
        for i in range(n):
            sid = int(ids[i])
            when = datetime.fromtimestamp(float(created[i]), UTC)
            labelled = status[i] != "unlabeled"
            keys = sorted({classes[j] for j in cls_pick[i, : ncls[i]]}) if labelled else []
            for key in keys:
                links.write(f"{sid}\t{key}\n")
            if has_tag[i]:
                tag_links.write(f"{sid}\t{TAGS[tag[i]]}\n")
            captured = (when - timedelta(seconds=float(lag[i]))).isoformat() if has_captured[i] else r"\N"
            samples.write(
                "\t".join(
                    (
                        str(sid),
                        f"{int(fresh[i]) & 0xFFFFFFFFFFFFFFFF:016x}" + uuid.UUID(int=sid).hex + "0" * 16,
                        str(int(phashes[sid])),
                        str(int(width[i])),
                        str(int(width[i]) * 3 // 4),
                        "jpeg",
                        str(200_000 + sid % 3_000_000),
                        f"IMG_{sid:08d}.jpg",
                        ORGS[org[i]],
                        str(sector[i]),
                        "shared" if shared[i] else "private",
                        str(source[i]),
                        f"site-{site[i]}",
                        f"ent-{enterprise[i]}",
                        f"cam-{camera[i]}" if has_camera[i] else r"\N",
                        f"R{ORGS[org[i]]}-{sid // 6}" if source[i] == "inspection" else r"\N",
                        _sql_json_list([TAGS[tag[i]]] if has_tag[i] else []),
                        captured,
                        str(int(groups[sid])) if groups[sid] else r"\N",
                        str(status[i]),
                        _sql_json_list(keys),
                        when.isoformat(),
                        when.isoformat(),
                        when.isoformat() if deleted[i] else r"\N",
                    )
                )
                + "\n"
            )
        group_ids = sorted({int(g) for g in groups[ids] if g})[:200]
        yield (
            samples.getvalue(),
            links.getvalue(),
            tag_links.getvalue(),
            group_ids,
            [int(h) for h in phashes[ids[:: max(1, n // 500)]]],
        )


SAMPLE_COLUMNS = (
    "id, sha256, phash, width, height, format, size_bytes, original_name, org_code, sector, scope, source,"
    " site_id, enterprise_id, camera_id, inspection_record, tags, captured_at, dup_group, annotation_status,"
    " class_keys, created_at, updated_at, deleted_at"
)


def load(url: str, rows: int, seed: int = 7, log: Callable[[str], None] = print) -> Loaded:
    """Migrate an empty schema to head (the shipped indexes) and COPY ``rows`` samples into it."""
    from sqlalchemy import text

    from hazardlens.db import make_engine, upgrade

    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    loaded = Loaded(rows=rows, orgs=ORGS, sites=20000, cameras=6000, enterprises=8000, classes=class_keys())
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO organisations (code, name, created_at, settings) VALUES (:c, :n, now(), '{}')"),
            [{"c": code, "n": f"org {code}"} for code in ORGS],
        )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        done = 0
        for samples, links, tag_links, groups, hashes in generate(rows, seed):
            cur.copy_expert(f"COPY samples ({SAMPLE_COLUMNS}) FROM STDIN", io.StringIO(samples))
            cur.copy_expert("COPY sample_classes (sample_id, class_key) FROM STDIN", io.StringIO(links))
            cur.copy_expert("COPY sample_tags (sample_id, tag) FROM STDIN", io.StringIO(tag_links))
            raw.commit()
            loaded.group_ids += groups
            loaded.phash_sample += hashes
            done += samples.count("\n")
            log(f"  loaded {done:,} samples ({time.perf_counter() - started:.0f} s)")
        cur.execute("SELECT setval(pg_get_serial_sequence('samples', 'id'), (SELECT max(id) FROM samples))")
        raw.commit()
        raw.driver_connection.autocommit = True  # VACUUM cannot run in a transaction
        cur.execute("VACUUM ANALYZE samples")
        cur.execute("VACUUM ANALYZE sample_classes")
        cur.execute("VACUUM ANALYZE sample_tags")
    finally:
        raw.close()
    engine.dispose()
    loaded.load_s = time.perf_counter() - started
    return loaded


@contextmanager
def scratch_schema(keep: bool = False) -> Iterator[str]:
    """A URL on a new schema of the test database, dropped afterwards (other users never see it)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(PG_BASE)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password, dbname=parsed.database
    )
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        if keep:
            print(f"kept schema {schema}")
        else:
            conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


# --- the queries -------------------------------------------------------------------------------


@dataclass
class Query:
    name: str
    kind: str  # anchor | search | near_dup
    run: Callable[[Any, random.Random], Any]  # (session, rng) -> result


def queries(ctx: Any, loaded: Loaded) -> list[Query]:
    """What the console and the API ask, as a curator of a mid-sized organisation: each query
    draws its varying part (a site, a cursor, a hash) from ``rng`` on every run."""
    from hazardlens.auth import Principal
    from hazardlens.contracts.filters import SampleFilter
    from hazardlens.datasets.near_duplicates import find_near_duplicates
    from hazardlens.datasets.search import encode_cursor, search
    from hazardlens.datasets.tenancy import get_sample

    me = Principal(user_id=None, name="bench", org_code=loaded.orgs[4], role="curator")
    n = loaded.rows
    year = timedelta(days=365)
    end = START + YEARS * year

    def page(**filters: Any) -> Callable[[Any, random.Random], Any]:
        f = SampleFilter.parse(filters)
        return lambda s, r: search(s, me, f, 50)

    def varying(make: Callable[[random.Random], dict[str, Any]]) -> Callable[[Any, random.Random], Any]:
        return lambda s, r: search(s, me, SampleFilter.parse(make(r)), 50)

    def deep(fraction: float, **filters: Any) -> Callable[[Any, random.Random], Any]:
        f = SampleFilter.parse(filters)
        return lambda s, r: search(s, me, f, 50, encode_cursor(int(n * fraction * (0.9 + 0.2 * r.random())) + 1))

    def month(r: random.Random, years_ago: float) -> tuple[str, str]:
        lo = end - years_ago * year + timedelta(days=r.randint(0, 300))
        return lo.date().isoformat(), (lo + timedelta(days=30)).date().isoformat()

    def near(variant: bool) -> Callable[[Any, random.Random], Any]:
        def run(s: Any, r: random.Random) -> Any:
            h = r.choice(loaded.phash_sample)
            if variant:  # the next frame: a few bits away from a photo in the library
                for _ in range(r.randint(1, 5)):
                    h ^= 1 << r.randrange(64)
            else:
                h = r.getrandbits(64)
            h = h - (1 << 64) if h >= 1 << 63 else h
            return find_near_duplicates(ctx, s, me, h)

        return run

    rare_class, common_class = loaded.classes[-1], loaded.classes[0]
    return [
        Query("anchor: SELECT 1", "anchor", lambda s, r: s.execute(_select_one()).scalar()),
        Query("anchor: sample by id", "anchor", lambda s, r: get_sample(s, me, _visible_id(r, n))),
        Query("newest first", "search", page()),
        Query("sector (10 %)", "search", page(sector="aluminium")),
        Query("status submitted (review queue)", "search", page(status="submitted")),
        Query("status rejected (curator queue)", "search", page(status="rejected")),
        Query("own organisation", "search", page(org=me.org_code)),
        Query("another org's shared", "search", page(org=loaded.orgs[20])),
        Query("scope shared", "search", page(scope="shared")),
        Query("source feedback (5 %)", "search", page(source="feedback")),
        Query("site", "search", varying(lambda r: {"site": f"site-{r.randrange(loaded.sites)}"})),
        Query("camera", "search", varying(lambda r: {"camera": f"cam-{r.randrange(loaded.cameras)}"})),
        Query("enterprise", "search", varying(lambda r: {"enterprise": f"ent-{r.randrange(loaded.enterprises)}"})),
        Query(
            "inspection record",
            "search",
            varying(lambda r: {"inspection_record": f"R{me.org_code}-{r.randrange(max(1, n // 6))}"}),
        ),
        Query("dup group", "search", varying(lambda r: {"dup_group": r.choice(loaded.group_ids or [1])})),
        Query("tag (0.6 %)", "search", page(tag="retake")),
        Query(
            "captured last 30 days",
            "search",
            varying(lambda r: dict(zip(("captured_from", "captured_to"), month(r, 0.1), strict=True))),
        ),
        Query(
            "captured a month 3 y ago",
            "search",
            varying(lambda r: dict(zip(("captured_from", "captured_to"), month(r, 3), strict=True))),
        ),
        Query(
            "created a month 3 y ago",
            "search",
            varying(lambda r: dict(zip(("created_from", "created_to"), month(r, 3), strict=True))),
        ),
        Query(f"class {common_class}", "search", page(class_key=common_class)),
        Query(f"class {rare_class} (rare)", "search", page(class_key=rare_class)),
        Query(f"class {common_class} + approved", "search", page(class_key=common_class, status="approved")),
        Query("sector + status", "search", page(sector="steel", status="submitted")),
        Query("keyset page at 50 %", "search", deep(0.5)),
        Query("keyset page at 5 % (oldest)", "search", deep(0.05)),
        Query("keyset page at 50 %, approved", "search", deep(0.5, status="approved")),
        Query("keyset page at 5 %, class", "search", deep(0.05, class_key=common_class)),
        Query("near-dup: next frame (hit)", "near_dup", near(True)),
        Query("near-dup: new photo (miss)", "near_dup", near(False)),
    ]


def _select_one() -> Any:
    from sqlalchemy import text

    return text("SELECT 1")


def _visible_id(r: random.Random, n: int) -> int:
    return r.randint(1, n)


def time_query(ctx: Any, q: Query, repeat: int, seed: int = 11) -> list[float]:
    """Milliseconds per run, each in a read session of its own (a request's), after one warm-up."""
    from hazardlens.errors import NotFound

    rng = random.Random(seed)
    out: list[float] = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        # NotFound: the anchor's random id was another organisation's private sample (same query).
        with ctx.db.read_session() as s, suppress(NotFound):
            q.run(s, rng)
        if i:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def captured_sql(ctx: Any, q: Query, seed: int = 11) -> list[tuple[str, Any]]:
    """The statements (SQL, parameters) that one run of ``q`` sends, as the driver gets them."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "pg_" not in statement:
            seen.append((statement, parameters))

    engine = ctx.db.read_engine
    event.listen(engine, "before_cursor_execute", grab)
    from hazardlens.errors import NotFound

    try:
        with ctx.db.read_session() as s, suppress(NotFound):
            q.run(s, random.Random(seed))
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    return seen


def db_times(ctx: Any, q: Query, repeat: int, seed: int = 11) -> list[float]:
    """The database's own execution time (ms, EXPLAIN ANALYZE without per-node timing) of the main
    statement of ``repeat`` runs: the server's share, without the client's (a Python process on
    a busy machine waits for a core far longer than PostgreSQL takes to answer)."""
    rng = random.Random(seed)
    out = []
    raw = ctx.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        for _ in range(repeat):
            statement, params = captured_sql(ctx, q, rng.randrange(1 << 30))[-1]
            cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, params)
            out.append(float(cur.fetchone()[0][0]["Execution Time"]))
            raw.rollback()
    finally:
        raw.close()
    return out


def explain(ctx: Any, q: Query, analyze: bool = True, seed: int = 11) -> str:
    """EXPLAIN of the main statement ``q`` sends (its last SELECT), on the driver's own cursor."""
    statement, params = captured_sql(ctx, q, seed)[-1]
    raw = ctx.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ") + statement, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
        raw.rollback()
        return plan
    finally:
        raw.close()


def measure(ctx: Any, loaded: Loaded, repeat: int, show_plans: bool = False) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for q in queries(ctx, loaded):
        try:
            ms = time_query(ctx, q, repeat)
        except ProgrammingError as exc:  # e.g. the tag query before sample_tags existed (--compare)
            print(f"  {q.name:<36} not available at this revision ({type(exc.orig).__name__})", flush=True)
            continue
        db = db_times(ctx, q, repeat)
        results[q.name] = {
            "p50": statistics.median(ms),
            "p95": percentile(ms, 0.95),
            "db_p50": statistics.median(db),
            "db_p95": percentile(db, 0.95),
            "kind": q.kind,
        }
        r = results[q.name]
        print(
            f"  {q.name:<36} p50 {r['p50']:7.2f} ms  p95 {r['p95']:7.2f} ms"
            f"  (db p50 {r['db_p50']:.2f} p95 {r['db_p95']:.2f})",
            flush=True,
        )
        if show_plans and q.kind != "anchor":
            print("    " + explain(ctx, q).replace("\n", "\n    "))
    return results


def report(after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]] | None, rows: int) -> bool:
    """The table: end to end (the project's code in a request's read session) and the database's
    own execution time, with the goal judged on both; ``before`` adds the same at migration 0009."""
    anchor = after["anchor: sample by id"]["p95"]
    print(f"\n{rows:,} samples; ratio = p95 / p95 of the anchor 'anchor: sample by id' ({anchor:.2f} ms)")
    print("end to end: the project's call in a read session of its own; db: PostgreSQL's execution time")
    head = f"{'query':<36} {'p50':>7} {'p95':>7} {'ratio':>6} {'db p50':>7} {'db p95':>7} {'goal':>5}"
    if before:
        head += f" | {'before p95':>10} {'db p95':>8}"
    print(head)
    ok_e2e = ok_db = True
    for name, r in after.items():
        goal = {"search": SEARCH_GOAL_MS, "near_dup": NEAR_DUP_GOAL_MS}.get(str(r["kind"]))
        met = ""
        if goal is not None:
            ok_e2e &= r["p95"] < goal
            ok_db &= r["db_p95"] < goal
            met = "ok" if r["p95"] < goal else ("db ok" if r["db_p95"] < goal else "MISS")
        line = (
            f"{name:<36} {r['p50']:7.2f} {r['p95']:7.2f} {r['p95'] / anchor:6.1f} "
            f"{r['db_p50']:7.2f} {r['db_p95']:7.2f} {met:>5}"
        )
        if before and name in before:
            line += f" | {before[name]['p95']:10.2f} {before[name]['db_p95']:8.2f}"
        print(line)
    for kind, goal in (("search", SEARCH_GOAL_MS), ("near_dup", NEAR_DUP_GOAL_MS)):
        worst = max((r for r in after.values() if r["kind"] == kind), key=lambda r: r["p95"])
        worst_db = max(r["db_p95"] for r in after.values() if r["kind"] == kind)
        print(
            f"worst {kind} p95: {worst['p95']:.1f} ms end to end, {worst_db:.1f} ms in the database (goal < {goal:.0f})"
        )
    print(f"goals end to end: {'met' if ok_e2e else 'NOT met'}; in the database: {'met' if ok_db else 'NOT met'}")
    return ok_e2e


def downgrade_to(url: str, revision: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from hazardlens.db import alembic_config, make_engine

    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE samples"))
        conn.execute(text("ANALYZE sample_classes"))
        conn.commit()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per query (after one warm-up)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="also measure at migration 0009 (before)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) per query")
    parser.add_argument("--keep", action="store_true", help="keep the schema (its name is printed)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from hazardlens.context import Context
    from hazardlens.db import make_engine, upgrade
    from hazardlens.settings import Settings

    migration_s = None
    with scratch_schema(args.keep) as url:
        print(f"loading {args.rows:,} samples into a fresh schema (migrations to head, COPY)", flush=True)
        loaded = load(url, args.rows, args.seed)
        print(f"loaded in {loaded.load_s:.0f} s", flush=True)
        ctx = Context(Settings(home=Path(os.environ.get("TMPDIR", "/tmp")) / "catalogue-scale", database_url=url))
        print("with the shipped indexes (head):")
        after = measure(ctx, loaded, args.repeat, args.explain)
        before = None
        if args.compare:
            ctx.db.dispose()
            print(f"at migration {BEFORE_REVISION} (before this issue's indexes):", flush=True)
            downgrade_to(url, BEFORE_REVISION)
            ctx = Context(Settings(home=ctx.settings.home, database_url=url))
            before = measure(ctx, loaded, max(5, args.repeat // 4), args.explain)
            ctx.db.dispose()
            started = time.perf_counter()
            upgrade_engine = make_engine(url)
            upgrade(upgrade_engine)  # what a deployment's upgrade to this release does at this size
            upgrade_engine.dispose()
            migration_s = time.perf_counter() - started
            print(f"upgrade {BEFORE_REVISION} -> head took {migration_s:.1f} s on {args.rows:,} samples", flush=True)
        ctx.db.dispose()
    ok = report(after, before, args.rows)
    if args.json:
        figures = {"rows": args.rows, "load_s": loaded.load_s, "after": after, "before": before}
        args.json.write_text(json.dumps({**figures, "upgrade_s": migration_s}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
