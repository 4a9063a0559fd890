"""End-to-end model bench: one Llama-3-8B layer and the whole model, PyTorch eager and
torch.compile (each with CUDA graphs where they help) against the card's floor, in one run.

    python bench/e2e_model.py [--device cuda] [--dtype bfloat16] [--only layer|model]
                              [--layers 32] [--out DIR]
    python bench/e2e_model.py --device cpu --tiny     # a small config: checks the script itself

needs torch (not a dependency of tunefleet). Measures, in this order:

1. the copy bandwidth of the card (a 2 GiB device-to-device copy, bytes read + written);
2. one layer, decode b=1 at kv length 4096: the floor is the layer's bytes (its weights and
   its kv cache: 453 MB for Llama-3-8B in bf16) over that bandwidth;
3. one layer, prefill of n=2048 tokens (causal);
4. the whole model with random weights: decode tokens/s at b=1 and b=16 (kv 4096) and the
   time to first token of a 2048-token prompt.

Each torch line is the median of repeats timed with CUDA events. Eager runs as written and
as a captured CUDA graph; torch.compile as `max-autotune-no-cudagraphs` and `reduce-overhead`
(CUDA graphs).

The tunefleet lines (`--device cuda`) compile the same model with `tunefleet.runtime` for this
GPU, from the best records of `--db` (a database a model job filled; defaults where it has
none), and time our session's prefill and decode calls by wall clock around a device
synchronize (median of repeats), Python launches included. Decode steps replay as CUDA
graphs (a session's default); "tunefleet, no graphs" launches every kernel from Python, for
comparison. How they are made:
- "layer": a one-layer model with a 1024-token vocabulary (its embedding, final norm and LM
  head add about 8 MB to the layer's bytes); decode runs at kv length 4096 by setting the
  session's length after a short prefill (the cache holds zeros: the kernels read it all);
- "model": the full vocabulary, and 32 layers that share one layer's weights on the GPU
  (each layer's 453 MB streams from memory again, far beyond the L2; this saves generating
  and converting 8B random values on the host).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

LLAMA3_8B = {"hidden": 4096, "inter": 14336, "heads": 32, "kv": 8, "d": 128, "vocab": 128256,
             "layers": 32, "theta": 500000.0, "eps": 1e-5}  # fmt: skip
TINY = {"hidden": 256, "inter": 704, "heads": 4, "kv": 2, "d": 64, "vocab": 1024,
        "layers": 2, "theta": 10000.0, "eps": 1e-5}  # fmt: skip
OURS_VOCAB = 1024  # the layer model's vocabulary


@dataclass(frozen=True)
class Line:
    """One measured configuration."""

    case: str
    impl: str
    ms: float
    note: str = ""


class Clock:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, torch: Any, device: str, repeats: int) -> None:
        self.torch, self.device, self.repeats = torch, device, repeats

    def ms(self, fn: Callable[[], Any], warmup: int = 3) -> float:
        torch = self.torch
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.device == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def layer_weights(torch: Any, c: dict, dtype: Any, device: str, gen: Any) -> dict:
    """Random weights of one layer (N(0, 1/fan_in)), q|k|v and gate|up concatenated."""
    hid, d = c["hidden"], c["d"]

    def w(n: int, k: int) -> Any:
        return (torch.randn(n, k, generator=gen, device=device) / math.sqrt(k)).to(dtype)

    return {
        "in_norm": torch.ones(hid, device=device, dtype=dtype),
        "qkv": w((c["heads"] + 2 * c["kv"]) * d, hid),
        "o": w(hid, c["heads"] * d),
        "post_norm": torch.ones(hid, device=device, dtype=dtype),
        "gate_up": w(2 * c["inter"], hid),
        "down": w(hid, c["inter"]),
    }


def layer_bytes(c: dict, kv_len: int, batch: int, itemsize: int) -> int:
    """Bytes one decode step of a layer must move: its weights and its kv cache."""
    d = c["d"]
    weights = c["hidden"] * ((c["heads"] + 2 * c["kv"]) * d + c["heads"] * d + 3 * c["inter"])
    cache = 2 * batch * c["kv"] * kv_len * d
    return (weights + cache + 2 * c["hidden"]) * itemsize


def make_layer(torch: Any, c: dict) -> Callable[..., Any]:
    """The layer as plain torch ops: rmsnorm, q|k|v, rope, cache write, GQA attention
    (causal over the cache), o + residual, rmsnorm, SwiGLU, down + residual."""
    F = torch.nn.functional
    h, kv, d = c["heads"], c["kv"], c["d"]

    def rms(x: Any, w: Any) -> Any:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + c["eps"])).to(x.dtype) * w

    def rope(x: Any, cos: Any, sin: Any) -> Any:
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def layer(x: Any, w: dict, k_cache: Any, v_cache: Any, pos: int, cos: Any, sin: Any) -> Any:
        b, n, _ = x.shape
        qkv = rms(x, w["in_norm"]) @ w["qkv"].T
        q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
        q = rope(q.view(b, n, h, d), cos, sin).transpose(1, 2)
        k = rope(k.view(b, n, kv, d), cos, sin).transpose(1, 2)
        k_cache[:, :, pos : pos + n] = k
        v_cache[:, :, pos : pos + n] = v.view(b, n, kv, d).transpose(1, 2)
        keys, vals = k_cache[:, :, : pos + n], v_cache[:, :, : pos + n]
        att = F.scaled_dot_product_attention(q, keys, vals, is_causal=n > 1, enable_gqa=True)
        x = x + att.transpose(1, 2).reshape(b, n, h * d) @ w["o"].T
        gate, up = (rms(x, w["post_norm"]) @ w["gate_up"].T).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ w["down"].T

    return layer


def rope_tables(torch: Any, c: dict, positions: Any, dtype: Any) -> tuple[Any, Any]:
    d = c["d"]
    inv = 1.0 / (c["theta"] ** (torch.arange(0, d, 2, device=positions.device).double() / d))
    ang = positions.double()[:, None] * inv[None, :]
    return ang.cos().to(dtype)[None, :, None, :], ang.sin().to(dtype)[None, :, None, :]


COMPILE = [True]  # --no-torch-compile clears it: torch.compile's autotuning takes minutes


def variants(torch: Any, fn: Callable[[], Any], device: str) -> dict[str, Callable[[], Any]]:
    """Eager, eager in a CUDA graph, torch.compile without and with CUDA graphs."""
    out: dict[str, Callable[[], Any]] = {"eager": fn}
    if device == "cuda":
        out["eager+cudagraph"] = capture(torch, fn)
    if not COMPILE[0]:
        return out
    out["torch.compile"] = torch.compile(fn, mode="max-autotune-no-cudagraphs")
    if device == "cuda":
        out["torch.compile+cudagraph"] = torch.compile(fn, mode="reduce-overhead")
    return out


def capture(torch: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` captured into a CUDA graph (after a warm-up on a side stream); replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth(torch: Any, clock: Clock, device: str, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + written)."""
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device)
    dst = torch.empty_like(src)
    ms = clock.ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / (ms / 1e3)


def bench_layer(torch: Any, c: dict, dtype: Any, device: str, clock: Clock) -> list[Line]:
    gen = torch.Generator(device=device).manual_seed(0)
    w = layer_weights(torch, c, dtype, device, gen)
    layer = make_layer(torch, c)
    lines = []
    kv_len = 4096 if c["hidden"] == LLAMA3_8B["hidden"] else 256
    # decode b=1 at kv_len: the cache holds kv_len - 1 tokens, the step writes the last
    k_cache = torch.randn(1, c["kv"], kv_len, c["d"], generator=gen, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    x = torch.randn(1, 1, c["hidden"], generator=gen, device=device).to(dtype)
    cos, sin = rope_tables(torch, c, torch.tensor([kv_len - 1], device=device), dtype)
    step = lambda: layer(x, w, k_cache, v_cache, kv_len - 1, cos, sin)  # noqa: E731
    for impl, fn in variants(torch, step, device).items():
        lines.append(Line(f"layer decode b=1 kv={kv_len}", impl, clock.ms(fn)))
    n = 2048 if c["hidden"] == LLAMA3_8B["hidden"] else 128
    kc = torch.zeros(1, c["kv"], n, c["d"], device=device, dtype=dtype)
    vc = torch.zeros_like(kc)
    xp = torch.randn(1, n, c["hidden"], generator=gen, device=device).to(dtype)
    cos_p, sin_p = rope_tables(torch, c, torch.arange(n, device=device), dtype)
    pre = lambda: layer(xp, w, kc, vc, 0, cos_p, sin_p)  # noqa: E731
    for impl, fn in variants(torch, pre, device).items():
        lines.append(Line(f"layer prefill n={n}", impl, clock.ms(fn)))
    return lines


def bench_model(torch: Any, c: dict, dtype: Any, device: str, clock: Clock) -> list[Line]:
    """The whole model (random weights): decode at b=1 and b=16 with kv 4096, and TTFT."""
    gen = torch.Generator(device=device).manual_seed(1)
    layers = [layer_weights(torch, c, dtype, device, gen) for _ in range(c["layers"])]
    embed = torch.randn(c["vocab"], c["hidden"], generator=gen, device=device).to(dtype)
    head = (torch.randn(c["vocab"], c["hidden"], generator=gen, device=device)
            / math.sqrt(c["hidden"])).to(dtype)  # fmt: skip
    layer = make_layer(torch, c)
    kv_len = 4096 if c["hidden"] == LLAMA3_8B["hidden"] else 256
    lines = []
    for batch in (1, 16):
        caches = [(torch.zeros(batch, c["kv"], kv_len, c["d"], device=device, dtype=dtype),
                   torch.zeros(batch, c["kv"], kv_len, c["d"], device=device, dtype=dtype))
                  for _ in layers]  # fmt: skip
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        cos, sin = rope_tables(torch, c, torch.tensor([kv_len - 1], device=device), dtype)

        def step(ids: Any = ids, caches: list = caches, cos: Any = cos, sin: Any = sin) -> Any:
            x = embed[ids]
            for w, (kc, vc) in zip(layers, caches, strict=True):
                x = layer(x, w, kc, vc, kv_len - 1, cos, sin)
            return (x @ head.T).argmax(-1)

        for impl, fn in variants(torch, step, device).items():
            ms = clock.ms(fn)
            lines.append(Line(f"model decode b={batch} kv={kv_len}", impl, ms,
                              f"{batch * 1e3 / ms:.1f} tokens/s"))  # fmt: skip
        del caches
    n = 2048 if c["hidden"] == LLAMA3_8B["hidden"] else 128
    caches = [(torch.zeros(1, c["kv"], n, c["d"], device=device, dtype=dtype),
               torch.zeros(1, c["kv"], n, c["d"], device=device, dtype=dtype))
              for _ in layers]  # fmt: skip
    prompt = torch.zeros(1, n, dtype=torch.long, device=device)
    cos_p, sin_p = rope_tables(torch, c, torch.arange(n, device=device), dtype)

    def prefill() -> Any:
        x = embed[prompt]
        for w, (kc, vc) in zip(layers, caches, strict=True):
            x = layer(x, w, kc, vc, 0, cos_p, sin_p)
        return (x[:, -1] @ head.T).argmax(-1)

    for impl, fn in variants(torch, prefill, device).items():
        lines.append(Line(f"model TTFT n={n}", impl, clock.ms(fn)))
    return lines


def ours_config(c: dict, dtype: str, layers: int, vocab: int) -> Any:
    """The bench's Llama as a tunefleet ModelConfig (Llama-3-8B's task shapes, so records
    a model job made for llama-3-8b serve it)."""
    from tunefleet.coordinator.models import ModelConfig

    return ModelConfig(name=f"llama-bench-{layers}l-v{vocab}", family="llama",
                       hidden_size=c["hidden"], intermediate_size=c["inter"],
                       num_layers=layers, num_heads=c["heads"],
                       num_kv_heads=c["kv"], head_dim=c["d"], vocab_size=vocab, dtype=dtype,
                       rope_theta=c["theta"], norm_eps=c["eps"])  # fmt: skip


def wall_ms(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmup: int = 2
            ) -> float:  # fmt: skip
    """Median wall milliseconds of `fn` followed by `sync`."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_ours(c: dict, dtype: str, db_url: str | None, work: Path, repeats: int,
               only: str | None) -> tuple[list[Line], dict]:  # fmt: skip
    """tunefleet's compiled model on this GPU: the layer and the whole-model cases."""
    import numpy as np

    from tunefleet.database import RecordStore
    from tunefleet.runtime import CompileOptions, compile_model, load_model
    from tunefleet.runtime.cli import coverage
    from tunefleet.runtime.weights import random_weights
    from tunefleet.workers import BuildConfig, resolve_target

    target = resolve_target("cuda")
    store = RecordStore.open(db_url, create=False) if db_url else None
    build = BuildConfig(cache_dir=str(work / "kernels"))
    lines: list[Line] = []
    info: dict = {}
    kv_len, n = (4096, 2048) if c["hidden"] == LLAMA3_8B["hidden"] else (256, 128)

    def compiled(layers: int, vocab: int) -> Any:
        cfg = ours_config(c, dtype, layers, vocab)
        folder = work / cfg.name
        t0 = time.perf_counter()
        manifest = compile_model(CompileOptions(cfg, target, str(folder), build, store, jobs=16))
        cov = coverage(manifest)
        info[cfg.name] = {"tuned": cov["tuned"], "default": cov["default"],
                          "compile_s": time.perf_counter() - t0}  # fmt: skip
        t0 = time.perf_counter()
        model = load_model(folder, random_weights(cfg, seed=0))
        info[cfg.name]["load_s"] = time.perf_counter() - t0
        return model

    def decode_ms(model: Any, batch: int, graphs: bool = True) -> float:
        session = model.session(batch, kv_len, 8, graphs=graphs)
        session.prefill(np.zeros((batch, 8), dtype=np.int64))
        tok = np.zeros(batch, dtype=np.int64)

        def step() -> None:
            session.length = kv_len - 1  # the last position: attention reads the whole cache
            session.decode(tok)

        return wall_ms(step, session.synchronize, repeats)

    def prefill_ms(model: Any) -> float:
        session = model.session(1, n, n)
        ids = np.zeros((1, n), dtype=np.int64)
        return wall_ms(lambda: session.prefill(ids), session.synchronize, max(3, repeats // 4))

    if only in (None, "layer"):
        layer = compiled(1, OURS_VOCAB)
        lines.append(Line(f"layer decode b=1 kv={kv_len}", "tunefleet", decode_ms(layer, 1),
                          f"+ a {OURS_VOCAB}-token head"))  # fmt: skip
        lines.append(Line(f"layer decode b=1 kv={kv_len}", "tunefleet, no graphs",
                          decode_ms(layer, 1, graphs=False)))  # fmt: skip
        lines.append(Line(f"layer prefill n={n}", "tunefleet", prefill_ms(layer)))
        del layer
    if only in (None, "model"):
        model = compiled(1, c["vocab"])
        model.layers = model.layers * c["layers"]  # one layer's device weights, every layer
        model.config = replace(model.config, num_layers=c["layers"])
        for batch in (1, 16):
            ms = decode_ms(model, batch)
            rate = f"{batch * 1e3 / ms:.1f} tokens/s; layers share weights"
            lines.append(Line(f"model decode b={batch} kv={kv_len}", "tunefleet", ms, rate))
        lines.append(Line(f"model TTFT n={n}", "tunefleet", prefill_ms(model),
                          "layers share weights"))  # fmt: skip
    if store is not None:
        store.close()
    return lines, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--only", choices=["layer", "model"])
    parser.add_argument("--layers", type=int, help="layers of the whole model (default: all)")
    parser.add_argument("--tiny", action="store_true", help="a small config (checks the script)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="folder for e2e_model.json")
    parser.add_argument("--db", help="records for our kernels (a model job's database URL)")
    parser.add_argument("--work", help="folder for our compiled models (default: a temp one)")
    parser.add_argument("--no-ours", action="store_true", help="torch lines only")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="eager and eager+cudagraph only (no torch.compile lines)")  # fmt: skip
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("e2e_model: needs torch (pip install torch beside tunefleet)")
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("e2e_model: no CUDA device; use --device cpu --tiny to check the script")
        return 1
    COMPILE[0] = not args.no_torch_compile
    c = dict(TINY if args.tiny else LLAMA3_8B)
    if args.layers:
        c["layers"] = args.layers
    dtype = getattr(torch, args.dtype)
    clock = Clock(torch, args.device, args.repeats)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    bw = copy_bandwidth(torch, clock, args.device, (2 << 30) if not args.tiny else (64 << 20))
    kv_len = 256 if args.tiny else 4096
    floor_bytes = layer_bytes(c, kv_len, 1, itemsize)
    floor_ms = floor_bytes / bw * 1e3
    lines = [Line("copy bandwidth", "torch copy_", 0.0, f"{bw / 1e9:.0f} GB/s"),
             Line(f"layer decode b=1 kv={kv_len}", "floor", floor_ms,
                  f"{floor_bytes / 1e6:.0f} MB / copy bandwidth")]  # fmt: skip
    with torch.inference_mode():
        if args.only in (None, "layer"):
            lines += bench_layer(torch, c, dtype, args.device, clock)
        if args.only in (None, "model"):
            lines += bench_model(torch, c, dtype, args.device, clock)
    info: dict = {}
    if args.device == "cuda" and not args.no_ours:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tf-e2e-") as tmp:
            ours, info = bench_ours(c, args.dtype, args.db, Path(args.work or tmp),
                                    args.repeats, args.only)  # fmt: skip
        lines += ours
    order = {case: i for i, case in reversed(list(enumerate(x.case for x in lines)))}
    lines.sort(key=lambda line: order[line.case])
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"e2e_model on {device}, {args.dtype}, torch {torch.__version__}")
    for name, what in info.items():
        print(f"ours {name}: {what}")
    print(f"{'case':34} {'impl':26} {'ms':>10}  note")
    for line in lines:
        ms = "-" if math.isnan(line.ms) or line.impl == "torch copy_" else f"{line.ms:.4f}"
        print(f"{line.case:34} {line.impl:26} {ms:>10}  {line.note}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = [asdict(line) | {"ms": None if math.isnan(line.ms) else line.ms} for line in lines]
        data = {"device": device, "rows": rows, "ours": info}
        (out / "e2e_model.json").write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
