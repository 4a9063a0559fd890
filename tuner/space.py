"""Design spaces: rules applied to each block (consumers first) turn a workload into sketches.

A sketch is a trace with sampling instructions; its decisions are one point of the space, and
`resample` draws others. A rule is a small class in a name registry; `apply` returns the
schedules it forks into (an empty list when it does not apply to the block), and the first
rule that applies to a block claims it. Rules see a `SpaceContext`: the `Target` the space is
for and the capabilities they read from it (kind predicates, cores, vector width, arch).

Every space also holds the untuned default schedule (ir's `default_schedule` for the target,
the kernel a workload gets without tuning) as a sketch of one point, so a search always
measures it and tuning never ends slower than the default; where the rules' sketches all
fail (a fused chain no rule can place on the GPU) it is the space's one valid point.

A space version names the rule set of a target kind (`space_version`): it changes when a rule
is added, removed, reordered or bumps its own `version`. Records carry it, and the tuner
re-checks records from another version before it trusts them as seeds.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunefleet.ir.default_key_tiles import key_tiled, key_tiles_schedule
from tunefleet.ir.default_schedule import default_schedule
from tunefleet.ir.default_schedule_cuda import default_cuda_schedule, kv_group, sm_version
from tunefleet.ir.errors import IRError, ScheduleError
from tunefleet.ir.key_tiles_mma import key_tiles_mma_schedule
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import blocks
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import Trace
from tunefleet.workers.targets import Target, TargetKind

from .registry import load_entry


class SpaceError(ValueError):
    """A design space could not be generated (unknown rule, no valid sketch)."""


@dataclass(frozen=True)
class SpaceContext:
    """What rules may depend on: the target a space is generated for. The properties are the
    capabilities rules read; for CUDA the architecture matters ("sm_90" enables Hopper-only
    schedules)."""

    target: Target

    @property
    def kind(self) -> TargetKind:
        return self.target.kind

    @property
    def is_cpu(self) -> bool:
        return self.target.is_cpu

    @property
    def is_gpu(self) -> bool:
        return self.target.is_gpu

    @property
    def cores(self) -> int:
        return self.target.cores

    @property
    def vector_bytes(self) -> int:
        return self.target.vector_bytes

    @property
    def arch(self) -> str:
        return self.target.arch


@dataclass(frozen=True)
class Sketch:
    """One structure of the space: the rules that made it and a trace with sampling steps."""

    name: str
    trace: Trace


class ScheduleRule(ABC):
    """Schedules one block; returns the forked schedules, or [] when it does not apply.

    An `exclusive` rule that applies claims the block; a non-exclusive one adds its sketches
    and lets the following rules add alternatives of their own.
    """

    name = "abstract"
    exclusive = True
    version = 1  # bump when the rule's sketches change, so the space version changes

    @abstractmethod
    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        """Fork `sch` (never modify it) into schedules where `block` is handled."""


class GlobalRule(ABC):
    """Runs once over the whole function after the per-block rules (e.g. parallel loops)."""

    name = "abstract"
    version = 1  # bump when the rule's effect changes, so the space version changes

    @abstractmethod
    def apply(self, sch: Schedule, ctx: SpaceContext) -> Schedule:
        """A schedule with the rule applied (a copy; `sch` stays as it was)."""


_RULES: dict[str, str] = {
    "auto_inline": "tunefleet.tuner.rule_auto_inline:AutoInline",
    "packed_dense": "tunefleet.tuner.rule_packed_dense:PackedDense",
    "split_k_reduction": "tunefleet.tuner.rule_split_k_reduction:SplitKReduction",
    "multi_level_tiling": "tunefleet.tuner.rule_multi_level_tiling:MultiLevelTiling",
    "vectorize_spatial": "tunefleet.tuner.rule_vectorize_spatial:VectorizeSpatial",
    "parallel_outer": "tunefleet.tuner.rule_parallel_outer:ParallelOuter",
    "auto_unroll": "tunefleet.tuner.rule_auto_unroll:AutoUnroll",
    "gpu_gemv": "tunefleet.tuner.rule_gpu_gemv:GpuGemv",
    "gpu_tensor_core": "tunefleet.tuner.rule_gpu_tensor_core:GpuTensorCore",
    "gpu_multi_level_tiling": "tunefleet.tuner.rule_gpu_multi_level_tiling:GpuMultiLevelTiling",
    "gpu_rows": "tunefleet.tuner.rule_gpu_rows:GpuRows",
    "gpu_elementwise": "tunefleet.tuner.rule_gpu_elementwise:GpuElementwise",
    "gpu_auto_bind": "tunefleet.tuner.rule_gpu_auto_bind:GpuAutoBind",
}

CPU_BLOCK_RULES = (
    "auto_inline",
    "multi_level_tiling",
    "packed_dense",
    "split_k_reduction",
    "vectorize_spatial",
)
CPU_GLOBAL_RULES = ("parallel_outer", "auto_unroll")
GPU_BLOCK_RULES = (
    "auto_inline",
    "gpu_gemv",
    "gpu_tensor_core",
    "gpu_multi_level_tiling",
    "gpu_rows",
    "gpu_elementwise",
)
GPU_GLOBAL_RULES = ("gpu_auto_bind",)


RULES_BY_KIND: dict[TargetKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TargetKind.CPU: (CPU_BLOCK_RULES, CPU_GLOBAL_RULES),
    TargetKind.CUDA: (GPU_BLOCK_RULES, GPU_GLOBAL_RULES),
}


DEFAULT_SKETCH = "default_schedule@12"  # untuned default; 2: keyed attention; 3: warp GEMV;
# 6: decode attention's rows also without the cluster split (a second one-point sketch);
# 7: and with a cluster per kv head's query heads (a third); 8: a prompt's attention in key
# tiles, with 4 and 16 tokens a block as one-point sketches beside the default's 8; 9: its
# key loops stop at the block's last visible key (trim_masked); 10: the block's queries in
# shared memory, a key's weights and a column's values in registers for a thread's partial sums;
# 11: decode attention's keys over 16 lanes each (two to a warp, 16-byte loads), each row of
# lanes its share of the max and sum, a key's values read into registers with one load, a
# lane's slice of the query once;
# 12: a prompt's attention also on tensor cores, scores and weighted sums (key_tiles_mma)
KEY_TILE_ROWS = (4, 16)


def rules_for(kind: TargetKind | str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (block rules, global rules) of a target kind ("cpu" or "cuda")."""
    return RULES_BY_KIND[TargetKind(kind)]


def space_version(kind: TargetKind | str) -> str:
    """The version of a kind's design space: the kind and a short hash of its rules in
    order, each with its class and `version` (e.g. "cpu-3f2a9c1d")."""
    block, global_ = rules_for(kind)
    parts = []
    for group, names in (("block", block), ("global", global_)):
        for name in names:
            cls = load_entry(_RULES, name)
            ident = f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?"
            parts.append(f"{group}:{name}={ident}@{getattr(cls, 'version', 0)}")
    parts.append(f"default:{DEFAULT_SKETCH}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
    return f"{TargetKind(kind).value}-{digest}"


def create_rule(name: str) -> ScheduleRule | GlobalRule:
    """A rule by registry name."""
    cls = load_entry(_RULES, name)
    if cls is None:
        raise SpaceError(f"unknown rule {name!r}; known: {', '.join(sorted(_RULES))}")
    return cls()


def _as(kind: type, rule: object) -> Any:
    """Check that a registry entry is the kind of rule a list expects."""
    if not isinstance(rule, kind):
        raise SpaceError(f"{type(rule).__name__} is not a {kind.__name__}")
    return rule


def block_names(func: PrimFunc) -> list[str]:
    """The compute blocks of `func` in program order."""
    return [br.block.name for br, _ in blocks(func)]


class SpaceGenerator:
    """Post-order application of block rules, then global rules, to get a workload's sketches."""

    def __init__(
        self,
        block_rules: Sequence[ScheduleRule | str] = CPU_BLOCK_RULES,
        global_rules: Sequence[GlobalRule | str] = CPU_GLOBAL_RULES,
        max_sketches: int = 16,
        with_default: bool = True,
    ) -> None:
        """`with_default` False leaves the untuned default out: the rules' sketches only
        (for looking at what the rules make)."""
        self.block_rules: list[ScheduleRule] = [
            _as(ScheduleRule, create_rule(r) if isinstance(r, str) else r) for r in block_rules
        ]
        self.global_rules: list[GlobalRule] = [
            _as(GlobalRule, create_rule(r) if isinstance(r, str) else r) for r in global_rules
        ]
        self.max_sketches = max_sketches
        self.with_default = with_default

    def generate(self, func: PrimFunc, ctx: SpaceContext, seed: int = 0) -> list[Sketch]:
        """The sketches of `func`: consumers are scheduled before their producers."""
        forks: list[tuple[str, Schedule]] = [("", Schedule(func, seed=seed))]
        for block in reversed(block_names(func)):
            nxt: list[tuple[str, Schedule]] = []
            for label, sch in forks:
                if block not in block_names(sch.func):
                    nxt.append((label, sch))
                    continue
                claimed = False
                for rule in self.block_rules:
                    made = rule.apply(sch, block, ctx)
                    if made:
                        tag = f"{rule.name}({block})"
                        nxt.extend((f"{label}+{tag}" if label else tag, s) for s in made)
                        claimed = True
                        if rule.exclusive:
                            break
                if not claimed:
                    nxt.append((label, sch))
            forks = nxt[: self.max_sketches]
        sketches = []
        for label, sch in forks:
            for rule in self.global_rules:
                sch = rule.apply(sch, ctx)
            sketches.append(Sketch(label or "identity", sch.trace))
        for default in default_sketches(func, ctx) if self.with_default else []:
            text = default.trace.as_python()
            if all(s.trace.as_python() != text for s in sketches):
                sketches.append(default)
        if not sketches:
            raise SpaceError(f"no sketch for {func.name}")
        return sketches


def default_sketches(func: PrimFunc, ctx: SpaceContext) -> list[Sketch]:
    """The untuned default schedule of `func` on the context's target as a sketch named
    "default" (no sampling: one point); [] where ir has no default for it. Where the default
    splits decode attention's rows over a cluster (sm_90), the same rows unsplit follow as
    "default_unclustered": the split pays with few rows (b=1: 0.45x SDPA against 0.15x
    unsplit at kv 4096 on an H200) and costs with many (b=16: 292.6 against 198.2 us), and
    the batch is symbolic, so a bucket's tuning picks. "default_grouped" gives a cluster
    the query heads of one kv head, which read the same keys and values: it pays with many
    rows (b=16: 362.7 against 484.6 us on an H100) and costs with few (b=1: 63.9 against
    43.8 us at kv 4096). A prompt's attention in key tiles (ir's `default_key_tiles`) gets
    blocks of 4 and 16 tokens beside the default's 8 ("key_tiles_4", "key_tiles_16"), and
    from sm_80, in fp16 or bf16, the form on tensor cores ("key_tiles_mma")."""
    try:
        sch = default_schedule(func, target="cuda" if ctx.is_gpu else "cpu", arch=ctx.target.arch)
    except IRError:
        return []
    out = [Sketch("default", sch.trace)]
    arch = ctx.target.arch
    if ctx.is_gpu and key_tiled(func):  # a prompt's attention: other token counts per block
        for rows in KEY_TILE_ROWS:
            other = key_tiles_schedule(func, group=kv_group(func), rows=rows)
            out.append(Sketch(f"key_tiles_{rows}", other.trace))
        if sm_version(arch) >= 80:  # mma.sync m16n8k16
            try:
                mma = key_tiles_mma_schedule(func, group=kv_group(func))
            except ScheduleError:  # fp32, or a group no warp layout takes
                return out
            out.append(Sketch("key_tiles_mma", mma.trace))
        return out
    unsplit = default_cuda_schedule(func, arch=arch, cluster=1) if ctx.is_gpu else sch
    if unsplit.trace.as_python() != sch.trace.as_python():  # decode attention's cluster
        out.append(Sketch("default_unclustered", unsplit.trace))
        grouped = default_cuda_schedule(func, arch=arch, group=kv_group(func))
        if grouped.trace.as_python() != sch.trace.as_python():  # not where heads = kv heads
            out.append(Sketch("default_grouped", grouped.trace))
    return out


def try_fork(sch: Schedule, build: Callable[[Schedule], object]) -> Schedule | None:
    """Run `build(copy)` on a copy of `sch`; None if a primitive refuses (the rule skips)."""
    trial = sch.copy()
    try:
        build(trial)
    except ScheduleError:
        return None
    return trial
