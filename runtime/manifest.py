"""The compiled-model format: a versioned JSON manifest beside kernel sources and binaries.

    DIR/manifest.json      model config, target, buckets, tasks and their kernels
    DIR/kernels/NAME.c     a CPU kernel's source (the generated C and its timing harness)
    DIR/kernels/NAME.so    the shared library built from it
    DIR/kernels/NAME.cu    a CUDA kernel's source
    DIR/kernels/NAME.cubin the cubin built from it; its launch (grid, block, dynamic shared
                           bytes, as ints or expressions over the dims) is in the manifest

Nothing is pickled: the manifest is plain JSON and every path in it is relative to DIR.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunefleet.coordinator.models import ModelConfig, ModelConfigError
from tunefleet.runtime.errors import RuntimeModelError

FORMAT = "tunefleet.compiled-model"
VERSION = 3  # 2: CUDA kernels carry their launch configuration; 3: and read dims from memory
# the dims array a CUDA kernel reads its symbolic dims from, in slot order (one per session)
DIM_SLOTS = ("b", "n", "m")
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class KernelArg:
    """One parameter of a kernel: a buffer (shape as ints or dim expressions) or a dim scalar."""

    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str
    shape: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class Launch:
    """A CUDA kernel's launch: (x, y, z) grid and block extents and the dynamic shared bytes,
    each an int or a launch expression over the symbolic dims (workers/launch.py). With
    `dim_slots` the kernel takes, after its buffers, a pointer to a device array holding
    these dims, instead of the dims as scalars (so a captured CUDA graph serves any size)."""

    grid: tuple[int | str, ...]
    block: tuple[int | str, ...]
    shared_bytes: int | str = 0
    dim_slots: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KernelEntry:
    """A built kernel and where its schedule came from.

    `record_id` is the tuning record whose trace built it (None: the default schedule);
    `workload_key` the key the record belongs to (the task specialised at `bucket`);
    `exact` marks a kernel specialised at the bucket point: it serves sizes of its bucket
    below the point only along the dims in `pad` (rows that are computed independently, so
    the runtime runs the point's rows and ignores the extra ones), and the point itself.
    """

    bucket: Mapping[str, int]
    ranges: Mapping[str, tuple[int, int]]  # dim -> (low, high); high 0 = unbounded
    exact: bool
    pad: tuple[str, ...]
    record_id: int | None
    workload_key: str
    target_fingerprint: str
    median_ms: float | None
    source: str
    binary: str
    entry: str
    args: tuple[KernelArg, ...]
    launch: Launch | None = None  # CUDA kernels only

    @property
    def tuned(self) -> bool:
        return self.record_id is not None


@dataclass(frozen=True)
class TaskEntry:
    """A task of one phase: the fused calls it runs, its buckets, one kernel per bucket point
    and the symbolic default kernel that serves sizes an exact kernel does not."""

    name: str
    phase: str
    calls: tuple[str, ...]
    op: str
    kind: str
    weight: int
    workload_key: str
    symbolic: tuple[str, ...]
    buckets: Mapping[str, tuple[int, ...]]
    kernels: tuple[KernelEntry, ...]
    fallback: KernelEntry


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to run a compiled model except the weights."""

    model: ModelConfig
    quant: str
    target_kind: str
    target_fingerprint: str
    target_device: str
    tasks: tuple[TaskEntry, ...]
    estimated_ms: Mapping[str, float] = field(default_factory=dict)
    version: int = VERSION

    def task_for(self, phase: str, call: str) -> TaskEntry:
        """The task running fused call `call` (e.g. `o_proj+attn_residual`) in `phase`."""
        for task in self.tasks:
            if task.phase == phase and call in task.calls:
                return task
        raise RuntimeModelError(f"compiled model has no kernel for {phase} call {call!r}")

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain JSON data."""
        return {
            "format": FORMAT,
            "version": self.version,
            "model": asdict(self.model),
            "quant": self.quant,
            "target": {
                "kind": self.target_kind,
                "fingerprint": self.target_fingerprint,
                "device": self.target_device,
            },
            "estimated_ms": dict(self.estimated_ms),
            "tasks": [_task_json(t) for t in self.tasks],
        }

    def write(self, out_dir: Path) -> Path:
        """Write `manifest.json` into `out_dir` (the kernels are already there)."""
        path = out_dir / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate `DIR/manifest.json`; every failure is one RuntimeModelError line."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise RuntimeModelError(
            f"{model_dir}: not a compiled model (no {MANIFEST_NAME}); make one with "
            "'tunefleet compile'"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RuntimeModelError(f"{path}: cannot read the manifest: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RuntimeModelError(f"{path}: not a {FORMAT} manifest")
    if data.get("version") != VERSION:
        raise RuntimeModelError(
            f"{path}: manifest version {data.get('version')!r}, this runtime reads version "
            f"{VERSION}; compile the model again"
        )
    try:
        model = ModelConfig(**data["model"])
        target = data["target"]
        return Manifest(
            model=model,
            quant=str(data["quant"]),
            target_kind=str(target["kind"]),
            target_fingerprint=str(target["fingerprint"]),
            target_device=str(target["device"]),
            tasks=tuple(_task_from(t) for t in data["tasks"]),
            estimated_ms={k: float(v) for k, v in data.get("estimated_ms", {}).items()},
        )
    except (KeyError, TypeError, ValueError, ModelConfigError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise RuntimeModelError(f"{path}: malformed manifest ({problem})") from None


def _kernel_json(k: KernelEntry) -> dict[str, Any]:
    out = asdict(k)
    out["ranges"] = {d: list(r) for d, r in k.ranges.items()}
    out["pad"] = list(k.pad)
    out["args"] = [asdict(a) | {"shape": list(a.shape)} for a in k.args]
    if k.launch is not None:
        slots = k.launch.dim_slots
        out["launch"] = {"grid": list(k.launch.grid), "block": list(k.launch.block),
                         "shared_bytes": k.launch.shared_bytes,
                         "dim_slots": None if slots is None else list(slots)}  # fmt: skip
    return out


def _task_json(t: TaskEntry) -> dict[str, Any]:
    return {
        "name": t.name,
        "phase": t.phase,
        "calls": list(t.calls),
        "op": t.op,
        "kind": t.kind,
        "weight": t.weight,
        "workload_key": t.workload_key,
        "symbolic": list(t.symbolic),
        "buckets": {d: list(v) for d, v in t.buckets.items()},
        "kernels": [_kernel_json(k) for k in t.kernels],
        "fallback": _kernel_json(t.fallback),
    }


def _kernel_from(d: Mapping[str, Any]) -> KernelEntry:
    return KernelEntry(
        bucket={k: int(v) for k, v in d["bucket"].items()},
        ranges={k: (int(v[0]), int(v[1])) for k, v in d["ranges"].items()},
        exact=bool(d["exact"]),
        pad=tuple(str(x) for x in d["pad"]),
        record_id=None if d["record_id"] is None else int(d["record_id"]),
        workload_key=str(d["workload_key"]),
        target_fingerprint=str(d["target_fingerprint"]),
        median_ms=None if d["median_ms"] is None else float(d["median_ms"]),
        source=str(d["source"]),
        binary=str(d["binary"]),
        entry=str(d["entry"]),
        args=tuple(
            KernelArg(a["name"], a["kind"], a["dtype"], tuple(a["shape"])) for a in d["args"]
        ),
        launch=_launch_from(d["launch"]) if d.get("launch") is not None else None,
    )


def _launch_from(d: Mapping[str, Any]) -> Launch:
    def extent(v: Any) -> int | str:
        return v if isinstance(v, int | str) and not isinstance(v, bool) else str(v)

    return Launch(
        grid=tuple(extent(v) for v in d["grid"]),
        block=tuple(extent(v) for v in d["block"]),
        shared_bytes=extent(d.get("shared_bytes", 0)),
        dim_slots=None if d.get("dim_slots") is None else tuple(str(x) for x in d["dim_slots"]),
    )


def _task_from(d: Mapping[str, Any]) -> TaskEntry:
    return TaskEntry(
        name=str(d["name"]),
        phase=str(d["phase"]),
        calls=tuple(d["calls"]),
        op=str(d["op"]),
        kind=str(d["kind"]),
        weight=int(d["weight"]),
        workload_key=str(d["workload_key"]),
        symbolic=tuple(d["symbolic"]),
        buckets={k: tuple(int(x) for x in v) for k, v in d["buckets"].items()},
        kernels=tuple(_kernel_from(k) for k in d["kernels"]),
        fallback=_kernel_from(d["fallback"]),
    )
