"""Running a compiled model: its weights in the kernels' layouts, a session whose memory is
planned once, prefill and greedy decode steps.

Data flow of one decoder layer (t tokens; H = heads + 2 kv heads):

    x[t, hidden] -rmsnorm-> hn -dense+rope-> qkv[t, H, 2, d/2]  (the memory of [t, H, d])
    qkv's k and v heads -> the layer's kv cache [batch, kv, max_len, d] at the tokens' positions
    q heads -> q[b, h, n, d]; cache[:, :, :m] -> staged k, v [b, kv, m, d]
    attention(q, k, v) -> ctx[b, h, n, d]  (prefill: transposed to [n, h*d])
    dense+add(ctx, o, residual x) -> x1 -rmsnorm-> hn2 -dense+act-> act[t, inter]
    dense+add(act, down, residual x1) -> x2

The attention kernels take the cache as dense `[b, kv, m, d]` with `m` the kv length, so
each step stages the first `m` positions of the cache into a buffer planned at the maximum
size (a copy of the cache prefix; a kernel taking the cache's stride would avoid it).

The same code runs on every backend: buffers and weights are arrays of the backend's module
(numpy, or cupy on the GPU) and the copies above are that module's slicing, except a decode
step's position-dependent copies (`Backend.decode_moves`). On the GPU the kernels and those
copies read the sizes from the backend's dims array, so a decode step is captured once as a
CUDA graph and replayed at every later position its kernels serve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tunefleet.coordinator.graph import Phase
from tunefleet.ir.dtypes import from_float32
from tunefleet.runtime.backend import Backend, GraphUnsafe, KernelCall, backend_for
from tunefleet.runtime.dispatch import in_range
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import KernelEntry, Manifest, TaskEntry, read_manifest
from tunefleet.runtime.memory import MemoryPlan
from tunefleet.runtime.quant import dequantized, quantize_q4
from tunefleet.runtime.shared_memory import shared_memory_overflow
from tunefleet.runtime.weights import Weights, random_weights
from tunefleet.workers.targets import Target, TargetError, detect_cpu, resolve_target

# fused call names of the graph (coordinator/graph.py, fused by coordinator/fusion.py)
CALLS = {
    "embed": "embed",
    "norm": "input_norm",
    "qkv": "qkv_proj+rope",
    "attention": "attn_scores+attn_softmax+attn_context",
    "o": "o_proj+attn_residual",
    "gate_up": "gate_up_proj+act",
    "down": "down_proj+mlp_residual",
    "lm_head": "lm_head",
}


Projection = tuple[np.ndarray, ...]  # (weight,) or q4's (qweight, scales), in kernel layout


@dataclass(frozen=True)
class LayerWeights:
    """One layer's weights in the kernels' layouts and storage dtype."""

    input_norm: np.ndarray
    qkv: Projection  # [H, 2, d/2, hidden]; q rows scaled by 1/sqrt(d)
    qkv_bias: np.ndarray | None  # [H, 2, d/2]
    o: Projection
    o_bias: np.ndarray | None
    post_norm: np.ndarray
    gate_up: Projection  # [2, inter, hidden]
    gate_up_bias: np.ndarray | None  # [2, inter]
    down: Projection
    down_bias: np.ndarray | None


def _rows(w: Weights) -> dict[str, np.ndarray]:
    """The weight rows of each dense kernel as the kernels see them ([n, k], float32):
    per layer q|k|v with 1/sqrt(d) folded into q, o, gate|up and down; then the LM head."""
    cfg = w.config
    scale = 1.0 / math.sqrt(cfg.head_dim)
    out = {}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        out[p + "qkv"] = np.concatenate([w[p + "q"] * scale, w[p + "k"], w[p + "v"]])
        out[p + "o"] = w[p + "o"]
        out[p + "gate_up"] = np.concatenate([w[p + "gate"], w[p + "up"]])
        out[p + "down"] = w[p + "down"]
    out["lm_head"] = w["lm_head"]
    return out


def effective_weights(w: Weights, quant: str) -> Weights:
    """The canonical weights a model compiled with `quant` computes with: `w` itself, or for
    q4 every projection and the LM head quantised and unpacked again (the numpy reference
    runs on these to check a q4 model)."""
    if quant == "none":
        return w
    cfg = w.config
    sqrt_d = math.sqrt(cfg.head_dim)
    tensors = dict(w.tensors)
    for name, rows in _rows(w).items():
        deq = dequantized(np.asarray(rows, np.float32))
        if name.endswith("qkv"):
            p = name.removesuffix("qkv")
            q, kv = cfg.q_size, cfg.kv_size
            tensors |= {p + "q": deq[:q] * sqrt_d, p + "k": deq[q : q + kv], p + "v": deq[q + kv :]}
        elif name.endswith("gate_up"):
            p = name.removesuffix("gate_up")
            inter = cfg.intermediate_size
            tensors |= {p + "gate": deq[:inter], p + "up": deq[inter:]}
        else:
            tensors[name] = deq
    return Weights(cfg, tensors)


def pack_weights(w: Weights, quant: str = "none") -> tuple[list[LayerWeights], dict[str, Any]]:
    """Canonical weights in the kernels' layouts: q|k|v and gate|up concatenated and viewed
    as the fused kernels' grids, 1/sqrt(d) folded into q, Gemma's norm as 1 + weight; with
    q4, each projection and the LM head quantised to (qweight, scales)."""
    cfg = w.config
    dt = cfg.dtype
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    grid = (h + 2 * kv, 2, d // 2)
    scale = 1.0 / math.sqrt(d)
    plus = 1.0 if cfg.family == "gemma" else 0.0
    rows = _rows(w)

    def store(a: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
        out = np.ascontiguousarray(from_float32(np.asarray(a, np.float32), dt))
        return out.reshape(shape) if shape is not None else out

    def proj(name: str, lead: tuple[int, ...] | None = None) -> Projection:
        a = rows[name]
        if quant == "none":
            return (store(a, None if lead is None else (*lead, a.shape[1])),)
        qw, sc = quantize_q4(np.asarray(a, np.float32))
        if lead is None:
            return qw, sc
        return qw.reshape(*lead, qw.shape[1]), sc.reshape(*lead, sc.shape[1])

    def opt(name: str) -> np.ndarray | None:
        a = w.get(name)
        return None if a is None else store(a)

    layers = []
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        qkv_bias = None
        if cfg.qkv_bias:
            qkv_bias = store(
                np.concatenate([w[p + "q_bias"] * scale, w[p + "k_bias"], w[p + "v_bias"]]), grid
            )
        gu_bias = None
        if cfg.mlp_bias:
            gu_bias = store(np.concatenate([w[p + "gate_bias"], w[p + "up_bias"]]),
                            (2, cfg.intermediate_size))  # fmt: skip
        layers.append(
            LayerWeights(
                input_norm=store(w[p + "input_norm"] + plus),
                qkv=proj(p + "qkv", grid),
                qkv_bias=qkv_bias,
                o=proj(p + "o"),
                o_bias=opt(p + "o_bias"),
                post_norm=store(w[p + "post_norm"] + plus),
                gate_up=proj(p + "gate_up", (2, cfg.intermediate_size)),
                gate_up_bias=gu_bias,
                down=proj(p + "down"),
                down_bias=opt(p + "down_bias"),
            )
        )
    glob = {
        "embed": store(w["embed"]),
        "final_norm": store(w["final_norm"] + plus),
        "lm_head": proj("lm_head"),
    }
    return layers, glob


class CompiledModel:
    """A compiled model with its kernels loaded and its weights packed."""

    def __init__(self, model_dir: Path, manifest: Manifest, weights: Weights, backend: Backend):
        self.model_dir = model_dir
        self.manifest = manifest
        self.config = manifest.model
        self.backend = backend
        layers, glob = pack_weights(weights, manifest.quant)
        self.layers = [_placed(lw, backend.to_device) for lw in layers]
        self.globals = {k: _put(v, backend.to_device) for k, v in glob.items()}
        self._loaded: dict[tuple[str, str], KernelCall] = {}

    def kernel(self, task: TaskEntry, dims: dict[str, int]) -> tuple[KernelCall, dict[str, int]]:
        """The loaded kernel `choose` picks for `dims`, and the dims to call it with."""
        k, call_dims = self.choose(task, dims)
        key = (k.binary, k.entry)
        if key not in self._loaded:
            self._loaded[key] = self.backend.load(self.model_dir, k)
        return self._loaded[key], call_dims

    def choose(
        self, task: TaskEntry, dims: dict[str, int]
    ) -> tuple[KernelEntry, dict[str, int]]:
        """The kernel of the bucket holding `dims` and the sizes to run it at: the actual
        ones, or for an exact kernel its point, when the sizes differ from it only along its
        `pad` dims (rows beyond the actual ones are computed and ignored); the task's default
        at the other sizes of an exact kernel's bucket."""
        k = self.holder(task, dims)
        if not k.exact:
            return k, dims
        differ = [s for s in task.symbolic if dims[s] != k.bucket[s]]
        if all(s in k.pad and dims[s] < k.bucket[s] for s in differ):
            return k, {**dims, **{s: k.bucket[s] for s in differ}}
        return task.fallback, dims

    def holder(self, task: TaskEntry, dims: dict[str, int]) -> KernelEntry:
        """The kernel of the bucket whose ranges hold `dims`."""
        for k in task.kernels:
            if all(in_range(dims[s], *k.ranges[s]) for s in task.symbolic):
                return k
        raise RuntimeModelError(f"{task.phase}/{task.name}: no kernel holds sizes {dims}")

    def padded(self, phase: Phase, dim: str, size: int) -> int:
        """The most rows a call of `phase` with `size` along `dim` may run: the point of an
        exact kernel that pads up to it, else `size` (the memory plan reserves this)."""
        most = size
        for task in self.manifest.tasks:
            if task.phase != phase.value:
                continue
            for k in task.kernels:
                if k.exact and dim in k.pad and in_range(size, *k.ranges[dim]):
                    most = max(most, k.bucket[dim])
        return most

    def session(
        self,
        batch: int = 1,
        max_len: int = 256,
        max_prompt: int | None = None,
        graphs: bool = True,
    ) -> Session:
        """A session for `batch` sequences of at most `max_len` tokens (prompt and generated);
        every buffer is allocated here, once, with room for the rows exact kernels pad to.
        `graphs`: replay decode steps as CUDA graphs where the backend has them."""
        max_prompt = max_len if max_prompt is None else max_prompt
        rows = {
            "batch": self.padded(Phase.DECODE, "b", batch),
            "prompt": self.padded(Phase.PREFILL, "n", max_prompt) if max_prompt >= 1 else 1,
        }
        limit = self.backend.shared_limit
        if limit is not None:  # a kernel outgrowing the multiprocessor fails at its launch
            tops = {
                Phase.DECODE.value: {"b": rows["batch"], "n": 1, "m": max_len},
                Phase.PREFILL.value: {"b": 1, "n": rows["prompt"], "m": max_prompt},
            }
            overflow = shared_memory_overflow(self.manifest, limit, tops)
            if overflow is not None:
                raise RuntimeModelError(overflow)
        plan = MemoryPlan.create(self.config, batch, max_len, max_prompt, rows, self.backend.xp)
        return Session(self, plan, graphs)


def _put(value: Any, to_device: Any) -> Any:
    """An array, a tuple of arrays or None, moved by `to_device`."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(to_device(a) for a in value)
    return to_device(value)


def _placed(lw: LayerWeights, to_device: Any) -> LayerWeights:
    """A layer's weights where the backend's kernels read them."""
    return replace(lw, **{f.name: _put(getattr(lw, f.name), to_device) for f in fields(lw)})


def load_model(
    model_dir: str | Path,
    weights: Weights | None = None,
    *,
    target: Target | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> CompiledModel:
    """Load a compiled model for this machine (random weights when `weights` is None).

    The model must have been compiled for this machine's target: a different kind or
    fingerprint is refused, since its kernels were chosen and built for another device.
    `threads` is the OpenMP thread count of the CPU kernels (None: every core).
    """
    path = Path(model_dir)
    manifest = read_manifest(path)
    backend = backend_for(manifest.target_kind, threads)
    here = target or _this_machine(manifest.target_kind)
    if here.fingerprint != manifest.target_fingerprint:
        raise RuntimeModelError(
            f"{path} was compiled for target {manifest.target_fingerprint} "
            f"({manifest.target_device}), this machine is {here.fingerprint} ({here.device}); "
            "compile it again here with 'tunefleet compile'"
        )
    if weights is None:
        weights = random_weights(manifest.model, seed)
    if weights.config != manifest.model:
        raise RuntimeModelError(
            f"the weights are for model {weights.config.name!r}, the compiled model is "
            f"{manifest.model.name!r}"
        )
    return CompiledModel(path, manifest, weights, backend)


def _this_machine(kind: str) -> Target:
    """This machine's target of `kind` (the first GPU for cuda)."""
    if kind == "cpu":
        return detect_cpu()
    try:
        return resolve_target(kind)
    except TargetError as err:
        raise RuntimeModelError(str(err)) from None


class Session:
    """Prefill then decode for a batch of sequences, on buffers planned once.

    With `graphs` on a backend that has them, a decode step whose kernels serve a range of
    kv lengths is captured as a graph the second time that set of kernels runs, launched
    with room for the range's largest length, and replayed for every later step in the
    range (a new bucket's kernels make a new graph; a kernel whose grid changes with the
    length, or one specialised at a single length, runs without one)."""

    def __init__(self, model: CompiledModel, plan: MemoryPlan, graphs: bool = True) -> None:
        self.model = model
        self.plan = plan
        self.cfg = model.config
        self.length = 0  # tokens in the kv cache of every sequence
        self.moves = model.backend.decode_moves(plan, self.cfg)
        self.use_graphs = graphs and model.backend.has_graphs
        self.graphs: dict[tuple[Any, ...], Any] = {}  # decode kernels -> captured step
        self._seen: set[tuple[Any, ...]] = set()
        self._unsafe: set[tuple[Any, ...]] = set()
        self._span: tuple[int, int, Any] = (1, 0, None)  # kv lengths the last span serves
        m = model.manifest
        self.tasks = {
            phase: {k: m.task_for(phase.value, call) for k, call in CALLS.items()}
            for phase in Phase
        }
        for phase in Phase:  # final_norm shares the norm task
            m.task_for(phase.value, "final_norm")

    def reset(self) -> None:
        """Forget the sequences (the cache is overwritten by the next prefill)."""
        self.length = 0

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Run the prompts `ids[batch, n]`; the logits of every prompt position,
        `[batch, n, vocab]` (a view of the session's buffer, valid until the next call)."""
        ids = np.asarray(ids)
        pl = self.plan
        if ids.ndim != 2 or ids.shape[0] != pl.batch:
            raise RuntimeModelError(f"prefill takes ids of shape [{pl.batch}, n], got {ids.shape}")
        n = ids.shape[1]
        if n < 1 or n > pl.max_prompt:
            raise RuntimeModelError(
                f"prompt of {n} tokens is longer than the maximum {pl.max_prompt} of this "
                "session; start one with a larger max_len"
            )
        self._check_ids(ids)
        backend = self.model.backend
        with backend.active():
            backend.set_dims({"n": n, "m": n})
            for s in range(pl.batch):
                backend.upload(pl.ids, ids[s].astype(np.int32))
                self._forward(Phase.PREFILL, n, s, pl.prefill_logits[s])
        self.length = n
        return pl.prefill_logits[:, :n]

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """One token `ids[batch]` for each sequence; the next logits `[batch, vocab]` (a view)."""
        ids = np.asarray(ids)
        pl = self.plan
        if ids.shape != (pl.batch,):
            raise RuntimeModelError(f"decode takes ids of shape [{pl.batch}], got {ids.shape}")
        if self.length == 0:
            raise RuntimeModelError("decode needs a prefill first")
        if self.length >= pl.max_len:
            raise RuntimeModelError(f"the sequences reached the maximum length {pl.max_len}")
        self._check_ids(ids)
        backend = self.model.backend

        def forward(launch_m: int | None = None) -> None:
            self._forward(Phase.DECODE, pl.batch, None, pl.decode_logits, launch_m)

        with backend.active():
            backend.upload(pl.ids, ids.astype(np.int32))
            backend.set_dims({"b": pl.batch, "m": self.length + 1})
            span = self._graph_span() if self.use_graphs else None
            graph = None
            if span is not None:
                key, top = span
                graph = self.graphs.get(key)
                if graph is None and key in self._seen and key not in self._unsafe:
                    try:
                        graph = self.graphs[key] = backend.capture(lambda: forward(top))
                    except GraphUnsafe:
                        self._unsafe.add(key)
                self._seen.add(key)
            if graph is not None:
                backend.replay(graph)
            else:
                forward()
        self.length += 1
        return pl.decode_logits[: pl.batch]

    def _graph_span(self) -> tuple[tuple[Any, ...], int] | None:
        """The graph key of this step (its kernels, the batch and the largest kv length they
        all serve: buckets sharing one kernel get a graph each, sized for their lengths) and
        that length; None when a kernel is specialised at this length (no graph for one
        step)."""
        m = self.length + 1
        low, high, span = self._span
        if low <= m <= high:  # the kernels of the last step serve this length too
            return span
        model, t, top = self.model, self.plan.batch, self.plan.max_len
        dims = {"b": t, "m": m}
        chosen, bottom, exact = [], 1, False
        for task in self.tasks[Phase.DECODE].values():
            task_dims = {s: dims[s] for s in task.symbolic}
            kernel, _ = model.choose(task, task_dims)
            if "m" in task.symbolic:
                if kernel.exact:
                    self._span = (m, m, None)
                    return None
                holder = model.holder(task, task_dims)  # the bucket, when the default runs
                exact = exact or holder.exact  # its exact kernel serves one length of it
                lo, hi = holder.ranges["m"]
                bottom, top = max(bottom, lo), min(top, hi) if hi else top
            chosen.append((kernel.binary, kernel.entry))
        span = ((tuple(chosen), t, top), top)
        self._span = (m, m, span) if exact else (bottom, top, span)
        return span

    def greedy(self, logits: Any) -> np.ndarray:
        """argmax over the vocabulary into the session's token buffer (no allocation for
        float32 and float16 logits); the picks on the host (a view of the buffer on the CPU)."""
        backend = self.model.backend
        xp = backend.xp
        out = self.plan.tokens[: logits.shape[0]]
        with backend.active():
            if self.cfg.dtype == "bfloat16":  # bit patterns: the high half of a float32
                logits = (logits.astype(xp.uint32) << 16).view(xp.float32)
            xp.argmax(logits, axis=-1, out=out)
        return backend.to_host(out)

    def host(self, array: Any) -> np.ndarray:
        """A buffer's values (logits, say) as a numpy array; waits for the kernels."""
        return self.model.backend.to_host(array)

    def synchronize(self) -> None:
        """Wait for every kernel launched so far (timings of a GPU session need it)."""
        self.model.backend.synchronize()

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise RuntimeModelError(f"token ids must lie in [0, {self.cfg.vocab_size})")

    # ------------------------------------------------------------------ one forward pass

    def _forward(
        self,
        phase: Phase,
        t: int,
        seq: int | None,
        logits: np.ndarray,
        launch_m: int | None = None,
    ) -> None:
        """Embedding, the layers, the final norm and the LM head for `t` tokens: one prompt
        of sequence `seq` (prefill) or one token of each sequence (decode). `launch_m`: the
        largest kv length the launches must serve (a decode step captured as a graph)."""
        cfg, pl, model = self.cfg, self.plan, self.model
        tasks = self.tasks[phase]
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        big = h + 2 * kv
        if phase is Phase.PREFILL:
            pos, tok_dims = 0, {"n": t}
            att = {"n": t, "m": t}
            b, n = 1, t
            pl.cos[: t * (d // 2)] = pl.cos_table[:t].reshape(-1)
            pl.sin[: t * (d // 2)] = pl.sin_table[:t].reshape(-1)
        else:
            pos, tok_dims = self.length, {"b": t}
            att = {"b": t, "m": pos + 1}
            b, n = t, 1
            self.moves.rope_rows(t, pos)
        m = att["m"]

        def run(task: TaskEntry, dims: dict[str, int], *arrays: np.ndarray | None) -> None:
            call, call_dims = model.kernel(task, dims)
            top = None
            if launch_m is not None and "m" in call_dims:
                top = {**call_dims, "m": launch_m}
            call([a for a in arrays if a is not None], call_dims, top)

        x, x_other = pl.x0, pl.x1
        run(tasks["embed"], tok_dims, pl.ids, model.globals["embed"], x)
        qkv = pl.qkv[: t * big * d].reshape(t, big, d)
        for li, lw in enumerate(model.layers):
            run(tasks["norm"], tok_dims, x, lw.input_norm, pl.hn)
            run(tasks["qkv"], tok_dims, pl.hn, *lw.qkv, lw.qkv_bias, pl.cos, pl.sin, pl.qkv)
            kc, vc = pl.k_cache[li], pl.v_cache[li]
            q = pl.q[: b * h * n * d].reshape(b, h, n, d)
            if phase is Phase.PREFILL:  # the prompt's keys into the cache, and key-major
                kc[:t, seq] = qkv[:, h : h + kv]
                vc[:t, seq] = qkv[:, h + kv :]
                q[0] = qkv[:, :h].transpose(1, 0, 2)
                for stage, lo in ((pl.k_stage, h), (pl.v_stage, h + kv)):
                    rows = qkv[:, lo : lo + kv]  # [n, kv, d] -> [kv, n, d]
                    stage[: kv * m * d].reshape(kv, m, d)[:] = rows.transpose(1, 0, 2)
                keys, values = pl.k_stage, pl.v_stage
            else:  # the cache's first m rows are the attention's [m, b, kv, d] as they stand
                self.moves.append_kv(li, qkv, t, pos)
                q[:, :, 0] = qkv[:, :h]
                keys, values = kc, vc
            run(tasks["attention"], att, pl.q, keys, values, pl.ctx)
            ctx = pl.ctx
            if phase is Phase.PREFILL:  # [1, h, n, d] -> [n, h, d]
                pl.ctx_t[: n * h * d].reshape(n, h, d)[:] = (
                    pl.ctx[: h * n * d].reshape(h, n, d).transpose(1, 0, 2)
                )
                ctx = pl.ctx_t
            run(tasks["o"], tok_dims, ctx, *lw.o, lw.o_bias, x, x_other)
            run(tasks["norm"], tok_dims, x_other, lw.post_norm, pl.hn)
            run(tasks["gate_up"], tok_dims, pl.hn, *lw.gate_up, lw.gate_up_bias, pl.act)
            run(tasks["down"], tok_dims, pl.act, *lw.down, lw.down_bias, x_other, x)
        run(tasks["norm"], tok_dims, x, model.globals["final_norm"], pl.hn)
        run(tasks["lm_head"], tok_dims, pl.hn, *model.globals["lm_head"], logits.reshape(-1))

