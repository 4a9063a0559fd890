"""How fast the workers build and measure, and what measuring costs on top of the kernels.

Reports, in one run, for each device present (the CPU always; CUDA where a GPU is):
  - builds per second per core (distinct sources, fresh cache, one build process per core),
    and cache hits per second for sources already built;
  - measured candidates per second per device (build done beforehand, default MeasureConfig),
    with the time inside the timed repeats against the wall time per candidate;
  - the harness's floor per call: the median time of a one-element kernel, i.e. what a ctypes
    call (CPU) or a launch timed by CUDA events (GPU) adds to every measured call;
  - where more than one GPU is present: measurement throughput of the local executor with one
    runner per GPU against a single runner, on the same batch of prebuilt candidates.

    python bench/measure_overhead.py [--device cpu|cuda|all] [--builds N] [--candidates N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.local_executor import LocalExecutor
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import Target, detect_cpu, detect_cuda, nvcc_version

SIZES = {"cpu": 1 << 20, "cuda": 1 << 24}


def kernel_for(target: Target, variant: int) -> Any:
    if target.kind == "cpu":
        return pk.c_vector_add("correct", variant)
    return pk.cuda_vector_add("correct", variant)


def bench_builds(target: Target, count: int, workers: int) -> dict[str, Any]:
    """Distinct sources into an empty cache with `workers` build processes, then cache hits."""
    nonce = uuid.uuid4().int % 1_000_000  # never the same sources as an earlier run
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as cache:
        config = BuildConfig(cache_dir=cache)
        inputs = [BuildInput(target, kernel=kernel_for(target, nonce + i)) for i in range(count)]
        with LocalExecutor(config, build_workers=workers) as executor:
            # start the pool's processes before the clock: their start is not build time
            warm = BuildInput(target, kernel=kernel_for(target, nonce + count + 1))
            for f in executor.build([warm] * workers):
                f.result()
            start = time.perf_counter()
            results = [f.result() for f in executor.build(inputs)]
            wall = time.perf_counter() - start
            start = time.perf_counter()
            hits = [f.result() for f in executor.build(inputs)]
            hit_wall = time.perf_counter() - start
    assert all(r.status is Status.OK for r in results), results[0].message
    assert all(r.cache_hit for r in hits)
    return {
        "builds": count,
        "workers": workers,
        "wall_s": wall,
        "builds_per_s": count / wall,
        "builds_per_s_per_core": count / wall / workers,
        "median_build_s": statistics.median(r.build_s for r in results),
        "cache_hits_per_s": count / hit_wall,
    }


def bench_runner(target: Target, count: int, cache_dir: str) -> dict[str, Any]:
    """Measure `count` distinct artifacts of one workload on one runner, default settings."""
    config = BuildConfig(cache_dir=cache_dir)
    nonce = uuid.uuid4().int % 1_000_000
    artifacts = []
    for i in range(count):
        result = build(BuildInput(target, kernel=kernel_for(target, nonce + i)), config)
        assert result.status is Status.OK, result.message
        artifacts.append(result.artifact)
    problem = pk.vector_add_problem(SIZES[target.kind])
    tiny = pk.vector_add_problem(1)
    measure = MeasureConfig()
    runner_config = RunnerConfig(device=target.kind, device_index=target.index, cache_dir=cache_dir)
    with Runner(runner_config) as runner:
        first = runner.run(RunInput(artifacts[0], problem, measure))  # start, draw inputs
        assert first.status is Status.OK, first.message
        walls, timed, medians = [], [], []
        start = time.perf_counter()
        for art in artifacts:
            t0 = time.perf_counter()
            result = runner.run(RunInput(art, problem, measure))
            walls.append(time.perf_counter() - t0)
            assert result.status is Status.OK, result.message
            timed.append(sum(result.timings_ms) * result.calls_per_repeat / 1e3)
            medians.append(result.median_ms)
        total = time.perf_counter() - start
        floor = runner.run(RunInput(artifacts[0], tiny, measure))
        assert floor.status is Status.OK, floor.message
    wall = statistics.median(walls)
    inside = statistics.median(timed)
    kernel_ms = statistics.median(medians)
    nbytes = 3 * 4 * SIZES[target.kind]
    return {
        "device": first.device,
        "candidates": count,
        "candidates_per_s": count / total,
        "wall_per_candidate_ms": wall * 1e3,
        "timed_repeats_ms": inside * 1e3,
        "overhead_per_candidate_ms": (wall - inside) * 1e3,
        "overhead_ratio": wall / inside,
        "kernel_median_ms": kernel_ms,
        "kernel_gbps": nbytes / (kernel_ms / 1e3) / 1e9,
        "input_sets": first.input_sets,
        "per_call_floor_us": floor.median_ms * 1e3,
        "warmup_ms": measure.warmup_ms,
        "repeats": measure.repeats,
    }


def _measure_batch(artifacts: list[Any], devices: list[int], cache_dir: str) -> float:
    """Candidates per second for `artifacts` spread over runners on `devices` (started first)."""
    problem = pk.vector_add_problem(SIZES["cuda"])
    config = BuildConfig(cache_dir=cache_dir)
    with LocalExecutor(config, cuda_devices=devices) as executor:
        warm = [RunInput(artifacts[0], problem)] * len(devices)  # start every runner's worker
        for f in executor.run(warm):
            assert f.result().status is Status.OK
        start = time.perf_counter()
        results = [f.result() for f in executor.run([RunInput(a, problem) for a in artifacts])]
        wall = time.perf_counter() - start
    assert all(r.status is Status.OK for r in results), results[0].message
    return len(artifacts) / wall


def bench_gpu_scaling(gpus: list[Target], count: int, cache_dir: str) -> dict[str, Any]:
    """Measurement throughput with one runner per GPU against one runner, same batch, same run."""
    config = BuildConfig(cache_dir=cache_dir)
    nonce = uuid.uuid4().int % 1_000_000
    artifacts = []
    for i in range(count):
        result = build(BuildInput(gpus[0], kernel=kernel_for(gpus[0], nonce + i)), config)
        assert result.status is Status.OK, result.message
        artifacts.append(result.artifact)
    devices = [t.index for t in gpus]
    one = _measure_batch(artifacts, devices[:1], cache_dir)
    many = _measure_batch(artifacts, devices, cache_dir)
    return {
        "gpus": len(devices),
        "candidates": count,
        "one_runner_per_s": one,
        "all_runners_per_s": many,
        "speedup": many / one,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--builds", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", dest="json_path", help="also write the numbers here")
    args = parser.parse_args(argv)

    targets = []
    gpus: list[Target] = []
    if args.device in ("cpu", "all"):
        targets.append(detect_cpu())
    if args.device in ("cuda", "all"):
        gpus = detect_cuda()
        if not gpus and args.device == "cuda":
            print("no CUDA device here", file=sys.stderr)
            return 1
        targets.extend(gpus[:1])

    report: dict[str, Any] = {"cores": os.cpu_count(), "targets": {}}
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-run-") as cache:
        for target in targets:
            entry: dict[str, Any] = {"device": target.device, "arch": target.arch}
            if target.kind == "cpu" or nvcc_version():
                entry["build"] = bench_builds(target, args.builds, args.workers)
            entry["run"] = bench_runner(target, args.candidates, cache)
            report["targets"][target.kind] = entry
        if len(gpus) > 1:
            report["gpu_scaling"] = bench_gpu_scaling(gpus, 4 * args.candidates, cache)

    print(f"{'device':<28} {'builds/s/core':>13} {'hits/s':>8} {'cand/s':>7} "
          f"{'wall/cand ms':>12} {'timed ms':>9} {'overhead':>9} {'floor us':>9}")  # fmt: skip
    for kind, entry in report["targets"].items():
        b, r = entry.get("build", {}), entry["run"]
        print(
            f"{(kind + ' ' + r['device'])[:28]:<28} {b.get('builds_per_s_per_core', 0):>13.2f} "
            f"{b.get('cache_hits_per_s', 0):>8.0f} {r['candidates_per_s']:>7.1f} "
            f"{r['wall_per_candidate_ms']:>12.1f} {r['timed_repeats_ms']:>9.1f} "
            f"{r['overhead_ratio']:>8.2f}x {r['per_call_floor_us']:>9.2f}"
        )
    for kind, entry in report["targets"].items():
        r = entry["run"]
        print(
            f"{kind}: vector add of {SIZES[kind]} floats {r['kernel_median_ms']:.4f} ms "
            f"({r['kernel_gbps']:.1f} GB/s, {r['input_sets']} rotated input sets)"
        )
    scaling = report.get("gpu_scaling")
    if scaling:
        print(
            f"cuda: {scaling['candidates']} candidates, "
            f"1 runner {scaling['one_runner_per_s']:.1f}/s, "
            f"{scaling['gpus']} runners (one per GPU) {scaling['all_runners_per_s']:.1f}/s: "
            f"{scaling['speedup']:.2f}x"
        )
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
