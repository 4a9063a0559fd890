"""GPU tuning against PyTorch: tune each LLM kernel on the card, then time it beside torch.

    python bench/gpu_tuning.py [--trials 32] [--out DIR]   # needs a CUDA GPU, torch, cupy, nvcc

For fp16 decode GEMV (dense m=1, n=k=4096), dense m=2048 n=k=4096 (tensor cores), rmsnorm
2048x4096, softmax 65536x2048, batched decode (dense m in {4, 16, 64}, n=4096, k in
{4096, 14336}), 333 tokens beside 336, and rows of the sizes models have (softmax 4096x1000
and 256x151936, rmsnorm 1000x3584 and 7x5120, silu_mul 7x14336 and 1000x14336), the 4-bit
dense at m=1 and 16: `tunefleet.tuner.tune(target="cuda")` with
the workers' CUDA runner (every trial checked against numpy), then the best kernel and the
PyTorch equivalent are timed in this process, alternating, as replays of captured CUDA graphs with
input copies rotated past L2 (bench/gpu_kernels.py's harness; `--no-graphs` times plain
launches). The card's device-to-device copy bandwidth is
measured first; every case reports % of it for its bytes, the dense its TFLOP/s against
torch; the closing table puts each case's goal beside ours and torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

CASES = {
    "gemv": ("dense", {"m": 1, "n": 4096, "k": 4096}),
    "dense": ("dense", {"m": 2048, "n": 4096, "k": 4096}),
    "rmsnorm": ("rmsnorm", {"m": 2048, "n": 4096}),
    "softmax": ("softmax", {"m": 65536, "n": 2048}),
    # batched decode and short chunks: the weight's bytes decide, tensor cores do the math
    "dense_m4": ("dense", {"m": 4, "n": 4096, "k": 4096}),
    "dense_m16": ("dense", {"m": 16, "n": 4096, "k": 4096}),
    "dense_m64": ("dense", {"m": 64, "n": 4096, "k": 4096}),
    "dense_m4_k14336": ("dense", {"m": 4, "n": 4096, "k": 14336}),
    "dense_m16_k14336": ("dense", {"m": 16, "n": 4096, "k": 14336}),
    "dense_m64_k14336": ("dense", {"m": 64, "n": 4096, "k": 14336}),
    # a real prompt's token count beside its nearest multiple of the 16-row fragment
    "dense_m333": ("dense", {"m": 333, "n": 4096, "k": 4096}),
    "dense_m336": ("dense", {"m": 336, "n": 4096, "k": 4096}),
    # rows at the sizes models have: no thread stride divides 1000, 3584 or 151936 columns
    "softmax_m4096_n1000": ("softmax", {"m": 4096, "n": 1000}),
    "rmsnorm_m1000_n3584": ("rmsnorm", {"m": 1000, "n": 3584}),
    "rmsnorm_m7_n5120": ("rmsnorm", {"m": 7, "n": 5120}),
    "softmax_m256_n151936": ("softmax", {"m": 256, "n": 151936}),
    "silu_mul_m7_n14336": ("silu_mul", {"m": 7, "n": 14336}),
    "silu_mul_m1000_n14336": ("silu_mul", {"m": 1000, "n": 14336}),
    # 4-bit weights (groups of 32): torch runs the fp16 dense of the same shape
    "q4_m1": ("q4_dense", {"m": 1, "n": 4096, "k": 4096}),
    "q4_m1_k14336": ("q4_dense", {"m": 1, "n": 4096, "k": 14336}),
    "q4_m16": ("q4_dense", {"m": 16, "n": 4096, "k": 4096}),
}
# the goal for each case, printed beside it (tuned time over torch's, or % of copy)
GOALS = {
    "dense": ">= 0.9x torch",
    **{c: ">= 1.0x torch" for c in CASES if c.startswith("dense_m")},
    "dense_m333": ">= 90% of dense_m336's TFLOP/s",
    "rmsnorm": ">= 80% copy",
    "softmax": ">= 80% copy",
    **{c: ">= 80% copy and >= 1.0x torch" for c in CASES if "_m" in c and "_n" in c},
    "q4_m1": ">= 85% copy",
    "q4_m1_k14336": ">= 85% copy",
    "q4_m16": ">= 2.0x torch (fp16 dense)",
}


def torch_case(name: str, copies: int) -> tuple[list[list[Any]], list[Any], Any, int, int]:
    """Input sets (x, w / weight), torch callables per set, output factory, bytes, flops."""
    import torch
    import torch.nn.functional as F

    op, d = CASES[name]
    h = torch.float16
    if op == "dense":
        m, n, k = d["m"], d["n"], d["k"]
        sets = [
            [torch.randn(m, k, device="cuda", dtype=h), torch.randn(n, k, device="cuda", dtype=h)]
            for _ in range(copies)
        ]
        fns = [lambda s=s: F.linear(s[0], s[1]) for s in sets]
        return sets, fns, (m, n), 2 * (m * k + n * k + m * n), 2 * m * n * k
    if op == "q4_dense":
        return _q4_case(d["m"], d["n"], d["k"], copies)
    m, n = d["m"], d["n"]
    if op == "rmsnorm":
        sets = [
            [torch.randn(m, n, device="cuda", dtype=h), torch.randn(n, device="cuda", dtype=h)]
            for _ in range(copies)
        ]
        fns = [lambda s=s: F.rms_norm(s[0], (n,), s[1], 1e-5) for s in sets]
        return sets, fns, (m, n), 2 * (2 * m * n + n), 0
    if op == "silu_mul":
        sets = [[torch.randn(m, n, device="cuda", dtype=h) for _ in "gu"] for _ in range(copies)]
        fns = [lambda s=s: F.silu(s[0]) * s[1] for s in sets]
        return sets, fns, (m, n), 2 * 3 * m * n, 0
    sets = [[torch.randn(m, n, device="cuda", dtype=h)] for _ in range(copies)]
    fns = [lambda s=s: torch.softmax(s[0], dim=-1) for s in sets]
    return sets, fns, (m, n), 2 * 2 * m * n, 0


def _q4_case(
    m: int, n: int, k: int, copies: int
) -> tuple[list[list[Any]], list[Any], Any, int, int]:
    """q4_dense inputs (x, 4-bit words, group scales) and torch's fp16 dense over the same
    weight dequantised, which is also the reference for the error."""
    import torch
    import torch.nn.functional as F

    h, group = torch.float16, 32
    sets, fns = [], []
    for _ in range(copies):
        x = torch.randn(m, k, device="cuda", dtype=h)
        words = torch.randint(-(2**31), 2**31, (n, k // 8), device="cuda", dtype=torch.int64)
        qweight = words.to(torch.int32)
        scales = (torch.rand(n, k // group, device="cuda") * 0.02 + 0.005).to(h)
        shifts = torch.arange(8, device="cuda", dtype=torch.int64) * 4
        nib = ((words.unsqueeze(-1) & 0xFFFFFFFF) >> shifts) & 15  # element 8w+t is nibble t
        w = ((nib.reshape(n, k) - 8).float() * scales.float().repeat_interleave(group, 1)).to(h)
        sets.append([x, qweight, scales])
        fns.append(lambda x=x, w=w: F.linear(x, w))
    nbytes = 2 * m * k + n * k // 2 + 2 * n * (k // group) + 2 * m * n
    return sets, fns, (m, n), nbytes, 2 * m * n * k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default="bench-gpu-tuning-out")
    parser.add_argument("--db", help="record store URL (default: a throwaway SQLite file)")
    parser.add_argument("--stall-s", type=float, default=60.0, help="dump stacks if stuck")
    parser.add_argument(
        "--no-graphs", action="store_true", help="time plain launches, not graph replays"
    )
    args = parser.parse_args()
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    import faulthandler

    faulthandler.dump_traceback_later(args.stall_s, repeat=True, file=sys.stderr)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    import gpu_kernels
    import torch
    from gpu_kernels import (
        Launcher,
        compile_cubin,
        copies_needed,
        copy_bandwidth,
        rel_err,
        time_pair,
    )

    from tunefleet.ir import Trace, build_source, ops
    from tunefleet.tuner import tune

    gpu_kernels.GRAPHS = not args.no_graphs
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    device = torch.cuda.get_device_name(0)
    log(f"{device} {arch}")
    bw = copy_bandwidth()
    log(f"copy bandwidth {bw:.0f} GB/s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-gpu-tune-") as tmp:
        work = Path(tmp)
        for name in args.cases.split(","):
            op, dims = CASES[name]
            start = time.perf_counter()
            log(f"tuning {name}")
            try:
                res = tune(
                    op, dims, dtype="float16", target="cuda", trials=args.trials,
                    db_url=args.db or f"sqlite:///{work / 'records.db'}",
                    cache_dir=str(work / "kernels"),
                    model_dir=str(work / "models"), seed=0, batch_size=16,
                    on_progress=lambda p: log(f"  trial {p.trials_done} {p.status} "
                                              f"{p.median_ms} best {p.best_ms}"),
                )  # fmt: skip
            except Exception as err:  # report and go on
                rows.append({"case": name, "error": f"{type(err).__name__}: {err}"[:400]})
                continue
            tune_s = time.perf_counter() - start
            func = ops.get_op(op).build(dims, "float16")
            if res.best_trace_json is None:
                rows.append({"case": name, "error": "no valid schedule", "failures": res.failures})
                continue
            sch = Trace.from_json(res.best_trace_json).apply(func)
            ks = build_source(sch, target="cuda")
            launcher = Launcher(ks, compile_cubin(ks.source, arch, work, f"best_{name}"))
            _, _, shape, nbytes, flops = torch_case(name, 1)
            copies = copies_needed(nbytes)
            sets, torch_fns, shape, nbytes, flops = torch_case(name, copies)
            outs = [torch.empty(*shape, device="cuda", dtype=torch.float16) for _ in sets]
            ours = [launcher.bind(*s, o) for s, o in zip(sets, outs, strict=True)]
            outs[0].fill_(float("nan"))
            ours[0]()
            torch.cuda.synchronize()
            err = rel_err(outs[0], torch_fns[0]().double())
            times = time_pair({"tuned": ours, "torch": torch_fns}, reps=30)
            row = {
                "case": name, "op": op, "dims": dims, "trials": res.trials,
                "failures": res.failures, "tune_s": round(tune_s, 1),
                "tuned_us": times["tuned"], "torch_us": times["torch"], "rel_err_vs_torch": err,
                "tuner_best_ms": res.best_ms, "default_ms": res.default_ms,
                "goal": GOALS.get(name, ""),
                "tuned_pct_copy": 100 * nbytes / (times["tuned"] * 1e-6) / 1e9 / bw,
                "torch_pct_copy": 100 * nbytes / (times["torch"] * 1e-6) / 1e9 / bw,
            }  # fmt: skip
            row["tuned_vs_torch"] = times["torch"] / times["tuned"]
            if flops:
                row["tuned_tflops"] = flops / (times["tuned"] * 1e-6) / 1e12
                row["torch_tflops"] = flops / (times["torch"] * 1e-6) / 1e12
            rows.append(row)
            print(json.dumps(row), flush=True)
    payload = {
        "device": device, "arch": arch, "copy_gbps": bw, "graphs": gpu_kernels.GRAPHS,
        "rows": rows,
    }  # fmt: skip
    (out_dir / "gpu_tuning.json").write_text(json.dumps(payload, indent=2, default=str))
    print(json.dumps(payload, indent=2, default=str))
    print(f"\n{'case':18} {'ours us':>9} {'torch us':>9} {'ratio':>6} {'% copy':>7}  goal")
    for row in rows:
        if "error" in row:
            print(f"{row['case']:18} {row['error']}")
            continue
        ratio = row["torch_us"] / row["tuned_us"]
        print(f"{row['case']:18} {row['tuned_us']:9.2f} {row['torch_us']:9.2f} {ratio:6.2f} "
              f"{row['tuned_pct_copy']:7.1f}  {row['goal']}")  # fmt: skip


if __name__ == "__main__":
    main()
