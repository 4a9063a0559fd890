"""Builders of targets, workloads and records shared by the database tests."""

from __future__ import annotations

import hashlib
import json
import random

from tunefleet.database import NewRecord, TargetInfo, WorkloadInfo

H100 = TargetInfo(
    "cuda",
    "cuda-h100-sm90-nvcc13.0",
    "NVIDIA H100 80GB HBM3",
    "sm_90",
    {"nvcc": "13.0", "memory_gb": 80},
)
A100 = TargetInfo(
    "cuda", "cuda-a100-sm80-nvcc13.0", "NVIDIA A100-SXM4-80GB", "sm_80", {"nvcc": "13.0"}
)
CPU = TargetInfo(
    "c", "c-xeon-avx512-gcc12", "Intel Xeon (Cascade Lake)", "x86_64-avx512", {"gcc": "12.2.0"}
)


def workload(i: int) -> WorkloadInfo:
    """A matmul-like workload with a deterministic structural key."""
    shape = {"m": 2**i, "n": 4096, "k": 4096}
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
    return WorkloadInfo(key, "dense", shape, "float16", json.dumps({"op": "dense", **shape}))


def trace(seed: int) -> tuple[str, str]:
    """A trace JSON text and its hash."""
    text = json.dumps({"insts": [["split", [seed % 7, seed % 11]]], "decisions": [seed]})
    return text, hashlib.sha256(text.encode()).hexdigest()


def record(
    w: WorkloadInfo, t: TargetInfo, seed: int, median: float | None, status: str = "ok"
) -> NewRecord:
    """A record of trace `seed`; failures carry a message and no median."""
    text, digest = trace(seed)
    timings = [] if median is None else [median * f for f in (0.99, 1.0, 1.02)]
    return NewRecord(
        workload_key=w.key,
        target_fingerprint=t.fingerprint,
        trace_json=text,
        trace_hash=digest,
        status=status,
        timings_ms=timings,
        median_ms=median,
        error_msg="" if status == "ok" else f"{status}: candidate {seed} failed",
        space_version="dense-v1",
    )


def random_batch(w: WorkloadInfo, t: TargetInfo, n: int, seed: int) -> list[NewRecord]:
    """n records with random medians and some failures, reproducible from `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.2:
            out.append(
                record(w, t, seed * 100_000 + i, None, rng.choice(["build_error", "timeout"]))
            )
        else:
            out.append(record(w, t, seed * 100_000 + i, round(rng.uniform(0.01, 5.0), 6)))
    return out
