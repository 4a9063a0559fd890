"""Whether a tuning record's trace still builds: the check imports, merges and `db verify` run.

A record is worth keeping only if the builder can rebuild its kernel. `TraceCheck` makes sure
the workload's IR (`ir_json`) parses and hashes to its key, and that the record's trace parses,
hashes to its `trace_hash`, replays on the workload with its own decisions and generates source
for the target's kind, as `workers.builder.lower` does before compiling. The database package
cannot import the IR, so the `tunefleet db` commands pass this check to the store.
"""

from __future__ import annotations

from tunefleet.database.checks import Verifier, all_of, timings_check
from tunefleet.database.records import CommittedRecord, TargetInfo, WorkloadInfo
from tunefleet.ir import build_source, from_json, structural_hash
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import Trace, trace_hash


class TraceCheck:
    """A Verifier that replays each record's trace; workloads are parsed once, and a trace
    already checked on a workload for a target kind is not replayed again."""

    def __init__(self) -> None:
        self._funcs: dict[str, PrimFunc | str] = {}  # workload key -> PrimFunc or the problem
        self._verdicts: dict[tuple[str, str, str], str | None] = {}

    def __call__(
        self, target: TargetInfo, workload: WorkloadInfo, record: CommittedRecord
    ) -> str | None:
        """Why `record` cannot be rebuilt on `workload` for `target`, or None if it can."""
        func = self._workload(workload)
        if isinstance(func, str):
            return func
        key = (workload.key, target.kind, record.trace_json)
        if key not in self._verdicts:
            self._verdicts[key] = _trace_problem(func, target.kind, record)
        reason = self._verdicts[key]
        if reason is None and trace_hash(Trace.from_json(record.trace_json)) != record.trace_hash:
            return f"trace_hash {record.trace_hash[:16]} is not the hash of its trace"
        return reason

    def _workload(self, workload: WorkloadInfo) -> PrimFunc | str:
        if workload.key not in self._funcs:
            self._funcs[workload.key] = _parse_workload(workload)
        return self._funcs[workload.key]


def record_verifier() -> Verifier:
    """What `tunefleet db import`, `merge` and `verify` check: times, then the trace."""
    return all_of(timings_check, TraceCheck())


def _parse_workload(workload: WorkloadInfo) -> PrimFunc | str:
    """The workload's PrimFunc, or why its IR is unusable."""
    try:
        func = from_json(workload.ir_json)
    except Exception as err:  # any damage to the stored IR makes it unusable
        return f"workload {workload.key[:16]} has no readable IR ({type(err).__name__}: {err})"
    if not isinstance(func, PrimFunc):
        return f"workload {workload.key[:16]} IR is a {type(func).__name__}, not a PrimFunc"
    if structural_hash(func) != workload.key:
        return f"workload {workload.key[:16]} IR does not hash to its key"
    return func


def _trace_problem(func: PrimFunc, kind: str, record: CommittedRecord) -> str | None:
    """Why the record's trace does not parse, replay on `func` or generate `kind` source."""
    try:
        trace = Trace.from_json(record.trace_json)
    except Exception as err:  # malformed JSON, missing keys, unknown values
        return f"trace is not a valid trace ({type(err).__name__}: {err})"
    try:
        schedule = trace.apply(func, trace.decisions)
    except Exception as err:  # an instruction or a decision that no longer fits
        return f"trace does not replay on its workload ({type(err).__name__}: {err})"
    try:
        build_source(schedule, target=kind)
    except Exception as err:  # lowering or rendering fails as the builder's would
        return f"no {kind} source from the replayed trace ({type(err).__name__}: {err})"
    return None
