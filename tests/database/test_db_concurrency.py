"""A fleet writing at once: 8 processes commit 500 records each, with racing target and
workload upserts, and the database ends with exactly 4000 rows and no error."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback

import pytest

PROCESSES = 8
RECORDS_EACH = 500
BATCH = 10
DEADLINE_S = 240


def _worker(url: str, index: int, fresh: bool, barrier, results) -> None:  # type: ignore[no-untyped-def]
    """Open (creating the schema if `fresh`) at the same moment as the others, register the
    shared target and workloads, then commit in batches with a few reads in between."""
    try:
        from records_factory import H100, random_batch, workload

        from tunefleet.database import RecordStore

        barrier.wait(timeout=120)
        with RecordStore.open(url, create=fresh) as store:
            store.ensure_target(H100)
            workloads = [workload(i) for i in range(4)]
            for w in workloads:
                store.ensure_workload(w)
            ids: list[int] = []
            for b in range(RECORDS_EACH // BATCH):
                w = workloads[b % len(workloads)]
                ids += store.commit(random_batch(w, H100, BATCH, seed=index * 1000 + b))
                if b % 10 == 0:
                    store.best(w.key, H100.fingerprint, 3)
            results.put((index, ids, None))
    except BaseException:
        results.put((index, [], traceback.format_exc()))


def _collect(procs: list, results) -> list:  # type: ignore[no-untyped-def]
    """Results of every process; fails early if one dies without reporting."""
    outcomes: list = []
    deadline = time.monotonic() + DEADLINE_S
    while len(outcomes) < len(procs):
        try:
            outcomes.append(results.get(timeout=1))
            continue
        except queue.Empty:
            pass
        reported = {index for index, _, _ in outcomes}
        dead = [i for i, p in enumerate(procs) if i not in reported and p.exitcode is not None]
        if dead and results.empty():
            pytest.fail(f"writer processes {dead} exited without reporting")
        if time.monotonic() > deadline:
            pytest.fail(f"writers did not finish within {DEADLINE_S} s")
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True], ids=["initialised", "fresh"])
def test_eight_writers_lose_no_row(db_url: str, fresh: bool) -> None:
    from tunefleet.database import RecordStore

    if not fresh:  # created once, as `tunefleet db init` would; else all 8 race to migrate
        RecordStore.open(db_url).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(db_url, i, fresh, barrier, results))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = _collect(procs, results)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [err for _, _, err in outcomes if err]
    assert errors == []
    all_ids = [i for _, ids, _ in outcomes for i in ids]
    assert len(all_ids) == len(set(all_ids)) == PROCESSES * RECORDS_EACH
    with RecordStore.open(db_url, create=False) as store:
        stats = store.stats()
        assert stats.records == PROCESSES * RECORDS_EACH
        assert (stats.targets, stats.workloads) == (1, 4)
