"""Record-store benchmark: best() latency and commit throughput at 10^4, 10^5 and 10^6 records
on PostgreSQL and SQLite, measured in one run.

    python bench/db_queries.py [--postgres URL] [--sizes 10000,100000,1000000] [--json FILE]

The PostgreSQL URL defaults to $TUNEFLEET_TEST_POSTGRES_URL; the bench works in a schema of
its own and drops it afterwards. Rows are bulk-loaded (COPY on PostgreSQL, executemany on
SQLite) up to each size; then best() is timed through the public API on random
(workload, target) pairs and commit() with batches of 1 and 100 records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tunefleet.database import NewRecord, RecordStore, TargetInfo, WorkloadInfo, mask_url
from tunefleet.database.engine import EngineOptions, make_engine

WORKLOADS = 200
TARGETS = (
    TargetInfo("cuda", "cuda-h100-sm90-nvcc13.0", "NVIDIA H100 80GB HBM3", "sm_90", {}),
    TargetInfo("cuda", "cuda-a100-sm80-nvcc13.0", "NVIDIA A100-SXM4-80GB", "sm_80", {}),
)
COLUMNS = (
    "uid", "workload_id", "target_id", "trace_json", "trace_hash", "status", "timings_ms",
    "median_ms", "error_msg", "job_id", "space_version", "created_at",
)  # fmt: skip
BEST_CALLS = 400


@dataclass(frozen=True)
class Row:
    """One result line of the bench."""

    backend: str
    records: int
    load_s: float
    best_k1_ms_median: float
    best_k1_ms_p99: float
    best_sql_ms_median: float
    best_k10_ms_median: float
    has_measured_ms_median: float
    commit_1_per_s: float
    commit_100_records_per_s: float


def workload(i: int) -> WorkloadInfo:
    shape = {"m": 1 + i, "n": 4096, "k": 4096}
    key = hashlib.sha256(json.dumps(shape).encode()).hexdigest()
    return WorkloadInfo(key, "dense", shape, "float16", json.dumps({"op": "dense", **shape}))


def trace_text(rng: random.Random) -> str:
    tiles = [[rng.randint(1, 64) for _ in range(4)] for _ in range(3)]
    return json.dumps({"insts": [["sample_perfect_tile", t] for t in tiles], "decisions": tiles})


def synthetic_rows(
    n: int, workload_ids: list[int], target_ids: list[int], seed: int
) -> Iterator[tuple]:
    """n record rows spread evenly over (workload, target) pairs; 15% failures."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for _ in range(n):
        text = trace_text(rng)
        ok = rng.random() >= 0.15
        median = round(rng.lognormvariate(-3.0, 1.0), 6) if ok else None
        timings = json.dumps([median] * 3 if ok else [])
        yield (
            uuid.uuid4().hex,
            rng.choice(workload_ids),
            rng.choice(target_ids),
            text,
            hashlib.sha256(text.encode()).hexdigest(),
            "ok" if ok else "build_error",
            timings,
            median,
            "" if ok else "nvcc: error: too many resources requested for launch",
            None,
            "bench-v1",
            now,
        )


def bulk_load(url: str, n: int, workload_ids: list[int], target_ids: list[int], seed: int) -> None:
    """Append n synthetic rows with the fastest path of the backend."""
    engine = make_engine(url, EngineOptions())
    try:
        rows = synthetic_rows(n, workload_ids, target_ids, seed)
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if engine.dialect.name == "postgresql":
                copy_sql = f"COPY tuning_records ({', '.join(COLUMNS)}) FROM STDIN"
                with cursor.copy(copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute("ANALYZE tuning_records")
            else:
                cursor.execute("BEGIN")
                marks = ", ".join("?" for _ in COLUMNS)
                insert = f"INSERT INTO tuning_records ({', '.join(COLUMNS)}) VALUES ({marks})"
                stamp = [(*r[:-1], r[-1].strftime("%Y-%m-%d %H:%M:%S.%f")) for r in rows]
                cursor.executemany(insert, stamp)
                cursor.execute("COMMIT")
                cursor.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def time_calls(fn, calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Wall times of `calls` invocations in milliseconds."""
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def time_raw_best(url: str, pairs: list[tuple[int, int]]) -> list[float]:
    """best(k=1) as bare SQL on the driver's cursor: the database's share of the latency."""
    engine = make_engine(url, EngineOptions())
    mark = "%s" if engine.dialect.name == "postgresql" else "?"
    sql = (
        "SELECT id, median_ms, trace_json FROM tuning_records WHERE workload_id = "
        f"{mark} AND target_id = {mark} AND status = 'ok' ORDER BY median_ms, id LIMIT 1"
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        it = iter(pairs)

        def once() -> None:
            cursor.execute(sql, next(it))
            cursor.fetchall()

        return time_calls(once, len(pairs))
    finally:
        raw.close()
        engine.dispose()


def measure(
    store: RecordStore, url: str, ids: tuple[list[int], list[int]], size: int, load_s: float
) -> Row:
    """best(), has_measured() and commit() timings on a store holding `size` records."""
    rng = random.Random(size)
    keys = [workload(i).key for i in range(WORKLOADS)]
    raw = time_raw_best(url, [(rng.choice(ids[0]), rng.choice(ids[1])) for _ in range(BEST_CALLS)])
    pairs = [(rng.choice(keys), rng.choice(TARGETS).fingerprint) for _ in range(BEST_CALLS)]
    it = iter(pairs * 3)
    store.best(*pairs[0])  # warm the id caches and the connection pool
    k1 = time_calls(lambda: store.best(*next(it), 1), BEST_CALLS)
    k10 = time_calls(lambda: store.best(*next(it), 10), BEST_CALLS)
    seen = time_calls(lambda: store.has_measured(*next(it), "0" * 64), BEST_CALLS)
    assert all(len(store.best(*p, 10)) == 10 for p in pairs[:20])

    def new(n: int) -> list[NewRecord]:
        batch = []
        for _ in range(n):
            text = trace_text(rng)
            median = rng.lognormvariate(-3.0, 1.0)
            batch.append(
                NewRecord(rng.choice(keys), rng.choice(TARGETS).fingerprint, text,
                          hashlib.sha256(text.encode()).hexdigest(), "ok", [median] * 3, median,
                          space_version="bench-v1")
            )  # fmt: skip
        return batch

    singles = [new(1) for _ in range(200)]
    start = time.perf_counter()
    for batch in singles:
        store.commit(batch)
    commit_1 = len(singles) / (time.perf_counter() - start)
    batches = [new(100) for _ in range(30)]
    start = time.perf_counter()
    for batch in batches:
        store.commit(batch)
    commit_100 = 100 * len(batches) / (time.perf_counter() - start)
    return Row(
        backend=store.backend,
        records=size,
        load_s=round(load_s, 2),
        best_k1_ms_median=round(statistics.median(k1), 3),
        best_k1_ms_p99=round(sorted(k1)[int(0.99 * len(k1))], 3),
        best_sql_ms_median=round(statistics.median(raw), 3),
        best_k10_ms_median=round(statistics.median(k10), 3),
        has_measured_ms_median=round(statistics.median(seen), 3),
        commit_1_per_s=round(commit_1, 1),
        commit_100_records_per_s=round(commit_100, 1),
    )


def run_backend(url: str, sizes: list[int]) -> list[Row]:
    """Grow one database through `sizes`, measuring at each."""
    rows = []
    with RecordStore.open(url) as store:
        target_ids = [store.ensure_target(t) for t in TARGETS]
        workload_ids = [store.ensure_workload(workload(i)) for i in range(WORKLOADS)]
        for size in sizes:
            missing = size - store.stats().records
            start = time.perf_counter()
            if missing > 0:
                bulk_load(url, missing, workload_ids, target_ids, seed=size)
            load_s = time.perf_counter() - start
            row = measure(store, url, (workload_ids, target_ids), size, load_s)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: Row) -> str:
    return (
        f"{row.backend:<10} {row.records:>9}  load {row.load_s:>7.1f} s  "
        f"best k=1 {row.best_k1_ms_median:>6.3f} ms (p99 {row.best_k1_ms_p99:>6.3f}, "
        f"SQL alone {row.best_sql_ms_median:>6.3f})  "
        f"k=10 {row.best_k10_ms_median:>6.3f} ms  "
        f"has_measured {row.has_measured_ms_median:>6.3f} ms  "
        f"commit x1 {row.commit_1_per_s:>7.1f}/s  x100 {row.commit_100_records_per_s:>8.1f} rec/s"
    )


def pg_schema(url: str, name: str, create: bool) -> str:
    """Create (or drop) the bench's own schema; returns a URL whose connections use it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if create:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        else:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()
    query = {"options": f"-csearch_path={name}"}
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("TUNEFLEET_TEST_POSTGRES_URL"))
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: list[Row] = []
    print(f"sizes {sizes}, {WORKLOADS} workloads x {len(TARGETS)} targets, {BEST_CALLS} calls")
    if args.postgres:
        print(f"postgresql: {mask_url(args.postgres)} (schema tunefleet_bench)")
        url = pg_schema(args.postgres, "tunefleet_bench", create=True)
        try:
            results += run_backend(url, sizes)
        finally:
            pg_schema(args.postgres, "tunefleet_bench", create=False)
    else:
        print("postgresql: skipped (no --postgres and no TUNEFLEET_TEST_POSTGRES_URL)")
    with tempfile.TemporaryDirectory() as tmp:
        results += run_backend(f"sqlite:///{tmp}/bench.db", sizes)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
