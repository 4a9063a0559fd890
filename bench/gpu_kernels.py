"""GPU bench: the hand-written schedules in examples/ and the default attention forms against
PyTorch, side by side in one run.

    python bench/gpu_kernels.py [--out DIR] [--only dense,attention,prefill_attention]

Measures the card's device-to-device copy bandwidth first (bytes read + written), then for
each kernel: builds every variant from the IR (nvcc -cubin for the card's arch), checks it
against a float64 reference on fresh random inputs, and times it and the PyTorch equivalent
alternately: each variant's launches, rotating input copies so that L2 cannot hold them, are
captured into a CUDA graph whose replays are timed with CUDA events (median of the repeats).
Prints a table last and writes JSON and markdown under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


@dataclass(frozen=True)
class Row:
    """One timed variant: microseconds (median), GB/s or TFLOP/s, and its error."""

    kernel: str
    variant: str
    us: float
    gbps: float
    tflops: float
    rel_err: float
    note: str = ""


def compile_cubin(source: str, arch: str, workdir: Path, name: str) -> Path:
    """nvcc -cubin the translation unit; raises with the compiler log on failure."""
    src = workdir / f"{name}.cu"
    out = workdir / f"{name}.cubin"
    src.write_text(source)
    from tunefleet.ir.intrinsics_wgmma import nvcc_arch

    cmd = ["nvcc", "-cubin", f"-arch={nvcc_arch(arch, source)}", "-O3", "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {name}:\n{proc.stderr[-3000:]}")
    return out


class Launcher:
    """A loaded kernel from an ir KernelSource, callable on torch tensors."""

    def __init__(self, ks: Any, cubin: Path, dims: dict[str, int] | None = None) -> None:
        """`dims` bind the kernel's symbolic dims: its launch and its trailing arguments."""
        import cupy

        from tunefleet.workers.launch import evaluate, evaluate_all

        self.cupy = cupy
        self.ks = ks
        self.fn = cupy.RawModule(path=str(cubin)).get_function(ks.entry)
        dims = dims or {}
        self.shared = evaluate(ks.shared_bytes or 0, dims)
        if self.shared > 48 * 1024:
            self.fn.max_dynamic_shared_size_bytes = self.shared
        self.grid = evaluate_all(ks.grid, dims)
        self.block = evaluate_all(ks.block, dims)
        scalars = [a.name for a in ks.args if a.kind == "scalar"]
        self.scalars = tuple(cupy.int64(dims[n]) for n in scalars)

    def bind(self, *tensors: Any) -> Callable[[], None]:
        """A no-argument launch over these tensors (in the kernel's argument order)."""
        import torch

        cupy = self.cupy
        args = tuple(cupy.asarray(t) for t in tensors) + self.scalars
        fn, grid, block, shared = self.fn, self.grid, self.block, self.shared

        def launch() -> None:  # on torch's current stream, so a graph capture records it
            with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                fn(grid, block, args, shared_mem=shared)

        return launch


def capture(calls: list[Callable[[], None]], count: int) -> Any:
    """A CUDA graph of `count` launches cycling through `calls` (warmed up on the capture's
    side stream first, so library handles and workspaces exist before capture)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in calls * 2:
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in range(count):
            calls[c % len(calls)]()
    torch.cuda.synchronize()
    return graph


GRAPHS = True  # bench-wide: time replays of captured graphs (False: plain launches)


def time_pair(
    fns: dict[str, list[Callable[[], None]]],
    reps: int = 30,
    min_ms: float = 2.0,
    graphs: bool | None = None,
) -> dict[str, float]:
    """Median microseconds per call of each entry, from replays of a captured CUDA graph.

    Each entry's launches (cycling through its callables, which rotate input copies) are
    captured into one graph of at least `min_ms`, so host launch costs stay out of the numbers
    as they do in a decode step replayed from a graph; the entries' replays alternate, repeat
    by repeat, and each replay is timed with CUDA events. With GRAPHS off (`--no-graphs`) the
    same launches are issued from Python between the events instead; `graphs` overrides it
    for one call (device-to-device copies run on the copy engines inside a graph, slower than
    torch's copy kernel, so copies are timed as plain launches).
    """
    import torch

    use_graphs = GRAPHS if graphs is None else graphs
    runs: dict[str, tuple[Callable[[], Any], int]] = {}
    for name, lst in fns.items():  # warm up and size the graph from plain launches
        for f in lst * 3:
            f()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for f in lst:
            f()
        end.record()
        end.synchronize()
        per = max(start.elapsed_time(end) / len(lst), 1e-4)
        count = max(len(lst), math.ceil(min_ms / per / len(lst)) * len(lst))
        if use_graphs:
            graph = capture(lst, count)
            runs[name] = (graph.replay, count)
        else:
            runs[name] = (
                lambda lst=lst, count=count: [lst[c % len(lst)]() for c in range(count)],
                count,
            )
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, (run, count) in runs.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) * 1000.0 / count)
    return {n: statistics.median(v) for n, v in samples.items()}


def copies_needed(nbytes: int) -> int:
    """Input copies so that one rotation is at least three times the L2 size."""
    import torch

    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return max(2, math.ceil(3 * l2 / max(nbytes, 1)))


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: GB/s counting bytes read plus written."""
    import torch

    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us = time_pair({"copy": [lambda: dst.copy_(src)]}, reps=20, min_ms=5, graphs=False)["copy"]
    return 2 * src.numel() * 2 / (us * 1e-6) / 1e9


def rel_err(out: Any, ref: Any) -> float:
    import torch

    d = out.double() - ref
    if not torch.isfinite(out).all():
        return float("inf")
    return float(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(ref))


def bench_gemv(arch: str, work: Path, n: int = 4096, k: int = 4096) -> list[Row]:
    import torch
    from gemv_cuda import gemv_schedule

    from tunefleet.ir import build_source

    nbytes = n * k * 2
    copies = copies_needed(nbytes)
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    xs = [torch.randn(1, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    ys = [torch.empty(1, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
    moved = nbytes + 2 * k + 2 * n
    rows: list[Row] = []
    # (rows per block, hoisted loads, min blocks per SM): every variant's blocks fit one wave
    variants = {
        "rows4": (4, False, None),
        "rows4 hoist": (4, True, None),
        "rows4 hoist mb8": (4, True, 8),
        "rows8 hoist mb4": (8, True, 4),
        "rows2 hoist mb16": (2, True, 16),
        "rows1 hoist mb32 (example default)": (1, True, 32),
    }
    fns: dict[str, list[Callable[[], None]]] = {
        "torch": [lambda i=i: torch.nn.functional.linear(xs[i], ws[i]) for i in range(copies)]
    }
    ref0 = xs[0].double() @ ws[0].double().T
    errs = {"torch": rel_err(torch.nn.functional.linear(xs[0], ws[0]), ref0)}
    for name, (r, hoist, mb) in variants.items():
        sch = gemv_schedule(1, n, k, rows_per_block=r, hoist=hoist, min_blocks=mb)
        ks = build_source(sch, target="cuda")
        tag = f"gemv_{r}_{int(hoist)}_{mb}"
        launcher = Launcher(ks, compile_cubin(ks.source, arch, work, tag))
        launches = [launcher.bind(xs[i], ws[i], ys[i]) for i in range(copies)]
        ys[0].fill_(float("nan"))
        launches[0]()
        torch.cuda.synchronize()
        errs[name] = rel_err(ys[0], ref0)
        fns[name] = launches
    dsts = [torch.empty_like(ws[0]) for _ in range(copies)]
    copy_w = [lambda i=i: dsts[i].copy_(ws[i]) for i in range(copies)]
    times = time_pair(fns)
    times["torch copy of w (same bytes read)"] = time_pair({"copy": copy_w}, graphs=False)["copy"]
    for name, us in times.items():
        if name.startswith("torch copy"):  # read + write, as the copy bandwidth counts
            rows.append(Row("copy 32 MiB", name, us, 2 * nbytes / (us * 1e-6) / 1e9, 0.0, 0.0))
            continue
        gbps = moved / (us * 1e-6) / 1e9
        flops = 2 * n * k / (us * 1e-6) / 1e12
        rows.append(Row(f"gemv m=1 n={n} k={k}", name, us, gbps, flops, errs[name]))
    return rows


def bench_rmsnorm(arch: str, work: Path, m: int = 2048, n: int = 4096) -> list[Row]:
    import torch
    from rmsnorm_cuda import rmsnorm_schedule

    from tunefleet.ir import build_source

    nbytes = m * n * 2
    copies = copies_needed(nbytes)
    xs = [torch.randn(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
    wt = torch.randn(n, device="cuda", dtype=torch.float16)
    ys = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(copies)]
    moved = 2 * nbytes + 2 * n
    eps = 1e-5

    def eager(x: Any) -> Any:  # as Llama's RMSNorm module computes it
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return wt * h.to(torch.float16)

    def ref(x: Any) -> Any:
        h = x.double()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * wt.double()

    fns: dict[str, list[Callable[[], None]]] = {
        "torch eager": [lambda i=i: eager(xs[i]) for i in range(copies)],
    }
    errs = {"torch eager": rel_err(eager(xs[0]), ref(xs[0]))}
    if hasattr(torch.nn.functional, "rms_norm"):
        fused = torch.nn.functional.rms_norm
        fns["torch F.rms_norm"] = [lambda i=i: fused(xs[i], (n,), wt, eps) for i in range(copies)]
        errs["torch F.rms_norm"] = rel_err(fused(xs[0], (n,), wt, eps), ref(xs[0]))
    for threads in (128, 256, 512):
        name = f"threads{threads}"
        ks = build_source(rmsnorm_schedule(m, n, threads), target="cuda")
        launcher = Launcher(ks, compile_cubin(ks.source, arch, work, f"rmsnorm_{name}"))
        launches = [launcher.bind(xs[i], wt, ys[i]) for i in range(copies)]
        ys[0].fill_(float("nan"))
        launches[0]()
        torch.cuda.synchronize()
        errs[name] = rel_err(ys[0], ref(xs[0]))
        fns[name] = launches
    times = time_pair(fns)
    return [
        Row(f"rmsnorm {m}x{n}", name, us, moved / (us * 1e-6) / 1e9, 0.0, errs[name])
        for name, us in times.items()
    ]


def bench_attention(arch: str, work: Path) -> list[Row]:
    """Llama-3-8B's decode attention (32 query heads, 8 kv heads, d=128, bf16, one query
    token) as the runtime builds it (reading the cache position-major, [m, b, kv, d]), the
    default schedule's forms against
    F.scaled_dot_product_attention; goal (issue 18): 80% of copy bandwidth for the kv bytes
    and 1.2x SDPA."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.presets import resolve_model
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.ir import build_source
    from tunefleet.ir.default_schedule_cuda import default_cuda_schedule

    (task,) = [
        t
        for t in model_tasks(resolve_model("llama-3-8b"), Phase.DECODE)
        if t.name.startswith("attn_scores")
    ]
    forms = {  # the default's forms: keyed rows (before sm_90); over a cluster, a query head
        # per cluster (the default from sm_90) or a kv head's four (default_grouped)
        "keyed rows": default_cuda_schedule(task.func, arch="sm_80"),
        "cluster, a head each": default_cuda_schedule(task.func, arch=arch),
        "cluster, a kv head's group": default_cuda_schedule(task.func, arch=arch, group=4),
    }
    sources = {name: build_source(sch, target="cuda") for name, sch in forms.items()}
    cubins = {
        name: compile_cubin(ks.source, arch, work, f"attention_{i}")
        for i, (name, ks) in enumerate(sources.items())
    }
    rows: list[Row] = []
    for b, m in ((1, 1024), (1, 4096), (1, 32768), (16, 4096)):
        rows += _attention_case(b, m, sources, cubins)
    return rows


def _attention_case(b: int, m: int, sources: dict[str, Any], cubins: dict[str, Path]) -> list[Row]:
    """One (batch, kv length) of bench_attention: rotating inputs, every form and SDPA."""
    import torch
    import torch.nn.functional as F

    kv_bytes = 2 * b * 8 * m * 128 * 2
    copies = copies_needed(kv_bytes)

    def bf16(*shape: int) -> list[Any]:
        return [torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]

    qs, ks, vs, outs = (
        bf16(b, 32, 1, 128),
        bf16(b, 8, m, 128),
        bf16(b, 8, m, 128),
        bf16(b, 32, 1, 128),
    )

    def sdpa(i: int) -> Any:  # our kernels take the 1/sqrt(d) scale folded into q
        return F.scaled_dot_product_attention(qs[i], ks[i], vs[i], scale=1.0, enable_gqa=True)

    # ours read the session's cache as it stands: position-major [m, b, kv, d]
    kps, vps = ([a.permute(2, 0, 1, 3).contiguous() for a in xs] for xs in (ks, vs))
    kd, vd = ks[0].double().repeat_interleave(4, 1), vs[0].double().repeat_interleave(4, 1)
    ref = torch.softmax(qs[0].double() @ kd.transpose(-1, -2), dim=-1) @ vd
    fns: dict[str, list[Callable[[], None]]] = {
        "torch SDPA": [lambda i=i: sdpa(i) for i in range(copies)]
    }
    errs = {"torch SDPA": rel_err(sdpa(0), ref)}
    for name, src in sources.items():
        launcher = Launcher(src, cubins[name], {"b": b, "m": m})
        launches = [launcher.bind(qs[i], kps[i], vps[i], outs[i]) for i in range(copies)]
        outs[0].fill_(float("nan"))
        launches[0]()
        torch.cuda.synchronize()
        errs[name] = rel_err(outs[0], ref)
        fns[name] = launches
    times = time_pair(fns, reps=15)
    sdpa_us = times["torch SDPA"]
    return [
        Row(f"attention decode b={b} kv={m}", name, us, kv_bytes / (us * 1e-6) / 1e9, 0.0,
            errs[name], "" if name == "torch SDPA" else f"{sdpa_us / us:.2f}x SDPA")
        for name, us in times.items()
    ]  # fmt: skip


def bench_prefill_attention(arch: str, work: Path) -> list[Row]:
    """Llama-3-8B's causal prefill attention (32 query heads, 8 kv heads, d=128, bf16,
    n = m = 2048 and 8192) as the runtime builds it (key tiles), the default schedule, the
    same without stopping at the diagonal (`trim=False`: every block scores every key),
    other row tilings, and the form on tensor cores (`key_tiles_mma`: the scores alone, and
    the scores and the weighted sums) against
    F.scaled_dot_product_attention (its flash backend, kv heads expanded); goal (issue 18):
    0.8x SDPA."""
    import torch
    import torch.nn.functional as F

    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.presets import resolve_model
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.ir import build_source
    from tunefleet.ir.default_key_tiles import key_tiles_schedule
    from tunefleet.ir.key_tiles_mma import key_tiles_mma_schedule

    (task,) = [
        t
        for t in model_tasks(resolve_model("llama-3-8b"), Phase.PREFILL)
        if t.name.startswith("attn_scores")
    ]
    simt = partial(key_tiles_schedule, task.func, group=4)
    forms = {  # query tokens per block, of a kv head's four query heads
        "key tiles, 8 tokens x 4 heads (default)": partial(simt, rows=8),
        "key tiles, 8 x 4, every key (no trim)": partial(simt, rows=8, trim=False),
        "key tiles, 8 x 4, sums in shared memory": partial(simt, rows=8, partials=False),
        "key tiles, 4 tokens x 4 heads": partial(simt, rows=4),
        "key tiles, 16 tokens x 4 heads": partial(simt, rows=16),
        "key tiles, 16 x 4, scores on tensor cores": partial(
            key_tiles_mma_schedule, task.func, group=4, sums=False
        ),
        "key tiles, 16 x 4, scores and sums on tensor cores": partial(
            key_tiles_mma_schedule, task.func, group=4
        ),
    }
    g = torch.Generator(device="cuda").manual_seed(0)

    def bf16(*shape: int) -> Any:
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)

    built: dict[str, tuple[Any, Path]] = {}  # form -> (kernel source, cubin): one build each
    for i, (name, schedule) in enumerate(forms.items()):
        try:
            ks = build_source(schedule(), "cuda")
            built[name] = (ks, compile_cubin(ks.source, arch, work, f"prefill_{i}"))
        except Exception as err:  # a form this card cannot hold: say so, time the others
            print(f"{name}: {type(err).__name__}: {err}")
    rows: list[Row] = []
    for n in (2048, 8192):
        q, k, v = bf16(1, 32, n, 128) * 0.1, bf16(1, 8, n, 128), bf16(1, 8, n, 128)
        out = torch.empty_like(q)
        ke, ve = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
        sdpa = "torch SDPA (flash)"
        fns: dict[str, list[Callable[[], None]]] = {
            sdpa: [lambda q=q, ke=ke, ve=ve: F.scaled_dot_product_attention(
                q, ke, ve, is_causal=True, scale=1.0)]
        }
        ref = F.scaled_dot_product_attention(q.float(), ke.float(), ve.float(), is_causal=True,
                                             scale=1.0).double()  # fmt: skip
        errs = {sdpa: rel_err(fns[sdpa][0](), ref)}
        for name, (ks, cubin) in built.items():
            launch = Launcher(ks, cubin, {"n": n, "m": n}).bind(q, k, v, out)
            out.fill_(float("nan"))
            launch()
            torch.cuda.synchronize()
            errs[name] = rel_err(out, ref)
            fns[name] = [launch]
        times = time_pair(fns, reps=5)
        flops = 4 * 32 * n * n * 128 / 2  # causal: half the scores
        base = times[sdpa]
        rows += [
            Row(f"attention prefill n={n} causal", name, us, 0.0, flops / (us * 1e-6) / 1e12,
                errs[name], "" if name.startswith("torch") else f"{base / us:.3f}x SDPA")
            for name, us in times.items()
        ]  # fmt: skip
    return rows


def bench_dense_tc(arch: str, work: Path, m: int = 2048, n: int = 4096, k: int = 4096) -> list[Row]:
    import torch

    try:
        from dense_tensorcore_cuda import dense_mma_schedule, dense_tc_schedule
    except ImportError:
        return []
    from tunefleet.ir import build_source

    a = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    y = torch.empty(m, n, device="cuda", dtype=torch.float16)
    ref = a.double() @ w.double().T
    fns: dict[str, list[Callable[[], None]]] = {"torch.matmul": [lambda: torch.matmul(a, w.T)]}
    errs = {"torch.matmul": rel_err(a @ w.T, ref)}
    failed: dict[str, str] = {}

    def check(ours: Callable[[], None]) -> float:
        """Worse error of two runs on fresh inputs, the output poisoned before each."""
        worst = 0.0
        for _ in range(2):
            a.normal_()
            w.normal_()
            y.fill_(float("nan"))
            ours()
            torch.cuda.synchronize()
            worst = max(worst, rel_err(y, a.double() @ w.double().T))
        return worst

    # (kind, k step, row padding, warps, pipeline stages, block tile, fp32 tile row padding,
    # fragments loaded one 16-wide step ahead, block rasterisation group)
    variants = (
        ("wmma", 64, 8, (2, 2), 1, (128, 128), 0, False, 0),
        ("mma", 64, 8, (4, 2), 3, (256, 128), 8, False, 0),  # the default before prefetch
        ("mma", 64, 8, (4, 2), 4, (256, 128), 8, False, 0),
        ("mma", 64, 8, (4, 2), 3, (256, 128), 8, True, 0),
        ("mma", 64, 8, (4, 2), 4, (256, 128), 8, True, 0),  # the example's default
        ("mma", 64, 8, (2, 4), 4, (128, 256), 8, True, 0),
        ("mma", 64, 8, (4, 2), 4, (256, 128), 8, True, 2),
        ("mma", 64, 8, (4, 2), 4, (256, 128), 8, True, 8),
        ("mma", 32, 8, (4, 2), 4, (256, 128), 8, True, 0),
        ("mma", 128, 8, (4, 2), 2, (256, 128), 8, True, 0),
    )
    for kind, tile_k, pad, warps, stages, tile, out_pad, prefetch, raster in variants:
        name = (
            f"{kind} {tile[0]}x{tile[1]} bk{tile_k} pad{pad} warps{warps[0]}x{warps[1]} "
            f"stages{stages}"
            + (f" opad{out_pad}" if out_pad else "")
            + (" prefetch" if prefetch else "")
            + (f" raster{raster}" if raster else "")
        )
        if kind == "wmma":
            sch = dense_tc_schedule(m, n, k, "float16", tile_k, pad, warps, stages, tile)
        else:
            sch = dense_mma_schedule(
                m, n, k, "float16", tile_k, pad, warps, stages, tile,
                out_pad=out_pad, prefetch=prefetch, raster=raster,
            )  # fmt: skip
        ks = build_source(sch, target="cuda")
        tag = (
            f"dense_{kind}_{tile_k}_{pad}_{warps[0]}{warps[1]}_{stages}_{tile[0]}_{tile[1]}"
            f"_{out_pad}_{int(prefetch)}_{raster}"
        )
        try:  # one variant that fails to build or load is reported, the others still run
            launcher = Launcher(ks, compile_cubin(ks.source, arch, work, tag))
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
            continue
        fns[name] = [launcher.bind(a, w, y)]
        errs[name] = check(fns[name][0])
    major = torch.cuda.get_device_capability(0)[0]
    if major == 9:  # Hopper: the wgmma example's tilings (sm_90a)
        from dense_wgmma_cuda import dense_wgmma_schedule

        for wg, tn, st in ((2, 128, 3), (2, 128, 4), (2, 256, 3)):
            name = f"wgmma {64 * wg}x{tn} stages{st} swizzle128"
            ks = build_source(dense_wgmma_schedule(m, n, k, "float16", wg, tn, st), "cuda")
            try:
                launcher = Launcher(ks, compile_cubin(ks.source, arch, work, f"wg{wg}{tn}{st}"))
            except Exception as err:
                failed[name] = f"{type(err).__name__}: {err}"
                continue
            fns[name] = [launcher.bind(a, w, y)]
            errs[name] = check(fns[name][0])
    times = time_pair(fns, reps=10)
    flop = 2 * m * n * k
    rows = [
        Row(f"dense {m}x{n}x{k}", name, us, 0.0, flop / (us * 1e-6) / 1e12, errs[name])
        for name, us in times.items()
    ]
    return rows + [Row(f"dense {m}x{n}x{k}", n_, 0, 0, 0, 0, note) for n_, note in failed.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench-gpu-out")
    parser.add_argument(
        "--no-graphs", action="store_true", help="time plain launches, not graph replays"
    )
    parser.add_argument("--only", default="gemv,rmsnorm,dense", help="kernels to run")
    args = parser.parse_args()
    global GRAPHS
    GRAPHS = not args.no_graphs
    known = ("gemv", "rmsnorm", "dense", "attention", "prefill_attention")
    only = [k for k in args.only.split(",") if k]
    if any(k not in known for k in only):
        parser.error(f"--only takes a comma list of {', '.join(known)}; got {args.only!r}")
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    device = torch.cuda.get_device_name(0)
    bw = copy_bandwidth()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        benches = {
            "gemv": bench_gemv,
            "rmsnorm": bench_rmsnorm,
            "dense": bench_dense_tc,
            "attention": bench_attention,
            "prefill_attention": bench_prefill_attention,
        }
        for bench in (benches[k] for k in only):
            try:
                rows += bench(arch, Path(tmp))
            except Exception as err:  # report and go on with the other kernels
                note = f"{type(err).__name__}: {err}"
                rows.append(Row(bench.__name__, "FAILED", 0, 0, 0, 0, note))
    lines = [
        f"# GPU kernels on {device} ({arch}), torch {torch.__version__}",
        f"copy bandwidth: {bw:.0f} GB/s (device-to-device, read + write); timed as "
        + ("CUDA graph replays" if GRAPHS else "plain launches"),
        "",
        "| kernel | variant | us | GB/s | % of copy | TFLOP/s | rel err | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = f"{100 * r.gbps / bw:.0f}%" if r.gbps else ""
        lines.append(
            f"| {r.kernel} | {r.variant} | {r.us:.1f} | {r.gbps:.0f} | {pct} | {r.tflops:.1f} "
            f"| {r.rel_err:.1e} | {r.note[:300]} |"
        )
    text = "\n".join(lines)
    (out / "gpu_kernels.md").write_text(text + "\n")
    payload = {
        "device": device,
        "arch": arch,
        "copy_gbps": bw,
        "graphs": GRAPHS,
        "rows": [asdict(r) for r in rows],
    }
    (out / "gpu_kernels.json").write_text(json.dumps(payload, indent=2))
    print(text)


if __name__ == "__main__":
    main()
