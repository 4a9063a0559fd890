"""Where compile takes each best record from: the record store, read through the fleet's
best-schedule cache (Redis, `coordinator/fleet_state.py`) when one is given.

A cache entry only points at a record (id, median, trace hash), and Redis holds nothing the
database cannot rebuild, so an entry is trusted only as far as the database confirms it: a hit
is used only if the record it names exists here, is sound (ok and not flagged invalid: what
`RecordStore.best` may answer with), belongs to the same workload and target, and has the
entry's trace hash. Any other entry is ignored, and, like a missing one, the store's best
answers and replaces it. Every tuning job with this Redis replaces the entry when it lands a
new best (coordinator/jobs.py), so a confirmed hit is the database's best; a record that
reached the database otherwise (`db import`, a job without Redis), or that a job landed
while this lookup was filling the entry with the older best, is seen once the entry expires
(`FleetConfig.best_ttl_s`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunefleet.coordinator.fleet_state import BestEntry, FleetState, FleetStateError
from tunefleet.database import RecordStore, TuningRecord


@dataclass
class CacheCounts:
    """How the cache answered: `hits` (records it named, confirmed by the database), `misses`
    (bests the store answered and that were then cached) and `ignored` (entries that did not
    check out; each was followed by a store lookup)."""

    hits: int = 0
    misses: int = 0
    ignored: int = 0


class BestLookup:
    """The best record of a (workload, target) pair for compile: from `store`, through
    `fleet`'s best cache when given (see the module doc). When the fleet state fails, `warn`
    gets one line and the remaining lookups go to the store alone (`unavailable` turns True).
    Used from one thread."""

    def __init__(
        self,
        store: RecordStore,
        fleet: FleetState | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.counts = CacheCounts()
        self.unavailable = False
        self._warn = warn or (lambda line: None)

    def best(self, workload_key: str, target_fp: str) -> TuningRecord | None:
        """The best sound record of the pair, or None when the database has none."""
        if self.fleet is None:
            return self._store_best(workload_key, target_fp)
        try:
            entry = self.fleet.get_best(workload_key, target_fp)
        except FleetStateError as err:
            self._drop(err)
            return self._store_best(workload_key, target_fp)
        except (ValueError, KeyError, TypeError):  # an entry that is not BestEntry JSON
            entry, ignored = None, True
        else:
            if entry is not None:
                record = self._confirmed(entry, workload_key, target_fp)
                if record is not None:
                    self.counts.hits += 1
                    return record
            ignored = entry is not None
        self.counts.ignored += int(ignored)
        record = self._store_best(workload_key, target_fp)
        if record is not None:
            self.counts.misses += 1
            self._update(workload_key, target_fp, record)
        elif ignored:
            self._update(workload_key, target_fp, None)
        return record

    def _store_best(self, workload_key: str, target_fp: str) -> TuningRecord | None:
        best = self.store.best(workload_key, target_fp)
        return best[0] if best else None

    def _confirmed(self, entry: BestEntry, key: str, fp: str) -> TuningRecord | None:
        """The entry's record if the database confirms it for this pair, else None."""
        record = self.store.get_record(entry.record_id, sound=True)
        if record is None:
            return None
        same = (record.workload_key, record.target_fingerprint, record.trace_hash)
        return record if same == (key, fp, entry.trace_hash) else None

    def _update(self, workload_key: str, target_fp: str, record: TuningRecord | None) -> None:
        """Cache the store's best, or drop an ignored entry where the store has none."""
        assert self.fleet is not None
        try:
            if record is None or record.median_ms is None:
                self.fleet.invalidate_best(workload_key, target_fp)
            else:
                entry = BestEntry(record.id, record.median_ms, record.trace_hash)
                self.fleet.set_best(workload_key, target_fp, entry)
        except FleetStateError as err:
            self._drop(err)

    def _drop(self, err: FleetStateError) -> None:
        self._warn(f"tunefleet: warning: {err}; compile continues from the database alone")
        self.fleet = None
        self.unavailable = True
