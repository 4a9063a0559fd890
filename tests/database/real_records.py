"""Records with a real workload IR and real traces (sampled from the op's CPU design space),
so they pass the checks of `tunefleet db import`, `merge` and `verify`."""

from __future__ import annotations

import functools
import random

from records_factory import CPU

from tunefleet.database import NewRecord, TargetInfo, WorkloadInfo
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers import Target

EPYC = TargetInfo("cpu", "cpu-epyc-avx2-gcc12", "AMD EPYC 7B13", "x86_64-avx2", {"gcc": "12.2.0"})
TRACES_PER_WORKLOAD = 40

__all__ = ["CPU", "EPYC", "real_batch", "real_traces", "real_workload"]


def _shape(i: int) -> dict[str, int]:
    return {"m": 2**i, "n": 32, "k": 64}


@functools.cache
def real_workload(i: int) -> WorkloadInfo:
    """A small dense workload keyed and stored as the tuner stores it."""
    func = ops.get_op("dense").build(_shape(i), "float32")
    return WorkloadInfo(structural_hash(func), "dense", _shape(i), "float32", func.to_json())


@functools.cache
def real_traces(i: int) -> tuple[tuple[str, str], ...]:
    """Distinct (trace JSON, trace hash) pairs of workload i's CPU design space."""
    func = ops.get_op("dense").build(_shape(i), "float32")
    target = Target.cpu()
    ctx = SpaceContext(target)
    sketches = SpaceGenerator(*rules_for(target.kind)).generate(func, ctx, seed=0)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs(target.kind))
    found = sampler.sample_unique(random.Random(i), TRACES_PER_WORKLOAD, set())
    return tuple((c.trace_json, c.trace_hash) for c in found)


def real_batch(i: int, t: TargetInfo, n: int, seed: int) -> list[NewRecord]:
    """n records of workload i with distinct real traces, random medians (three repeats
    around each) and some failures, reproducible from `seed`."""
    rng = random.Random(seed)
    traces = rng.sample(real_traces(i), n)
    out = []
    for text, digest in traces:
        failed = rng.random() < 0.2
        median = None if failed else round(rng.uniform(0.01, 5.0), 6)
        out.append(
            NewRecord(
                workload_key=real_workload(i).key,
                target_fingerprint=t.fingerprint,
                trace_json=text,
                trace_hash=digest,
                status=rng.choice(["build_error", "timeout"]) if failed else "ok",
                timings_ms=[] if median is None else [median * f for f in (0.99, 1.0, 1.02)],
                median_ms=median,
                error_msg="candidate failed" if failed else "",
                space_version="cpu-test",
            )
        )
    return out
