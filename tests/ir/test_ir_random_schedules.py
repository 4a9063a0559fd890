"""Random sequences of primitives on every op: whatever is accepted must keep the semantics.

Refused primitives (ScheduleError) must leave the schedule untouched; accepted ones must
still match numpy through gcc, at odd and at symbolic shapes, and replay identically.
"""

from __future__ import annotations

import random
import shutil

import pytest
from ir_gcc_harness import check_against_reference

from tunefleet.ir import Const, PrimFunc, Var, ops
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import blocks

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

ODD = (1, 7, 77, 129)


def random_dims(name: str, rng: random.Random) -> dict[str, int]:
    """Odd sizes for every shape parameter, adjusted where an op needs divisibility."""
    op = ops.get_op(name)
    dims = {p: rng.choice(ODD) for p in op.params}
    if name == "rope":
        dims["d"] = rng.choice((2, 8, 16))
    if name == "q4_dense":
        dims["k"] = rng.choice((32, 64, 128))
    if name == "batch_matmul":
        dims["b"] = rng.choice((1, 2))
        dims["h"] = rng.choice((2, 4))
        for p in ("m", "n", "k"):
            dims[p] = rng.choice((1, 7, 33))
    if name in ("matmul", "dense", "q4_dense"):
        dims["m"] = rng.choice((1, 7, 33))
    return dims


NAMES = sorted(op.name for op in ops.list_ops())


def _try(sch: Schedule, fn, *args):
    before, trace = sch.func, sch.trace
    try:
        return fn(*args)
    except ScheduleError:
        assert sch.func == before and sch.trace == trace
        return None


def random_schedule(sch: Schedule, rng: random.Random) -> Schedule:
    names = [br.block.name for br, _ in blocks(sch.func)]
    for name in names:
        b = _try(sch, sch.get_block, name)
        if b is None:
            continue
        for _ in range(rng.randint(1, 5)):
            loops = _try(sch, sch.get_loops, b)
            if not loops:
                break
            choice = rng.choice(
                [
                    "split",
                    "split",
                    "reorder",
                    "fuse",
                    "compute_at",
                    "parallel",
                    "vectorize",
                    "unroll",
                    "decompose",
                    "cache_read",
                    "cache_write",
                    "rfactor",
                    "inline",
                ]
            )
            loop = rng.choice(loops)
            if choice == "split":
                _try(sch, sch.split, loop, [None, rng.choice([1, 2, 3, 4, 8])])
            elif choice == "reorder" and len(loops) >= 2:
                a, c = rng.sample(loops, 2)
                _try(sch, sch.reorder, a, c)
            elif choice == "fuse" and len(loops) >= 2:
                i = rng.randrange(len(loops) - 1)
                _try(sch, sch.fuse, loops[i], loops[i + 1])
            elif choice == "compute_at":
                loc = _try(sch, sch.sample_compute_location, b)
                if loc is not None:
                    _try(sch, sch.compute_at, b, loc)
            elif choice == "parallel":
                _try(sch, sch.parallel, loops[0])
            elif choice == "vectorize":
                _try(sch, sch.vectorize, loops[-1])
            elif choice == "unroll":
                _try(sch, sch.unroll, loop)
            elif choice == "decompose":
                _try(sch, sch.decompose_reduction, b, loop)
            elif choice == "cache_read":
                cb = _try(sch, sch.cache_read, b, 0, "local")
                if cb is not None:
                    loc = _try(sch, sch.get_loops, b)
                    if loc:
                        _try(sch, sch.compute_at, cb, rng.choice(loc))
            elif choice == "cache_write":
                wb = _try(sch, sch.cache_write, b, 0, "local")
                if wb is not None:
                    loc = _try(sch, sch.get_loops, b)
                    if loc:
                        _try(sch, sch.reverse_compute_at, wb, rng.choice(loc))
            elif choice == "rfactor":
                _try(sch, sch.rfactor, loop, 0)
            elif choice == "inline":
                _try(sch, sch.compute_inline, b)
            elif choice == "reverse_inline":
                _try(sch, sch.reverse_compute_inline, b)
            elif choice == "parallel_any":
                _try(sch, rng.choice([sch.parallel, sch.vectorize, sch.unroll]), loop)
            elif choice == "reorder_many" and len(loops) >= 3:
                _try(sch, sch.reorder, *rng.sample(loops, rng.randint(2, len(loops))))
            elif choice == "tile":
                info = sch.get(loop)
                if isinstance(info.extent, Const):
                    tiles = _try(sch, sch.sample_perfect_tile, loop, rng.randint(2, 3), 8)
                    if tiles:
                        _try(sch, sch.split, loop, tiles)
            elif choice == "split3":
                f1, f2 = rng.choice([1, 2, 3, 5]), rng.choice([2, 4, 7])
                _try(
                    sch,
                    sch.split,
                    loop,
                    rng.choice([[None, f1, f2], [f1, None, f2], [f1, f2, None]]),
                )
            elif choice == "rfactor_any":
                nd = len(sch.get(b).writes[0].buffer.shape)
                _try(sch, sch.rfactor, loop, rng.randint(0, nd))
            elif choice == "cache_read_any":
                nreads = len(sch.get(b).reads)
                cb = _try(sch, sch.cache_read, b, rng.randrange(max(nreads, 1)), "local")
                if cb is not None and rng.random() < 0.7:
                    loc = _try(sch, sch.get_loops, b)
                    if loc:
                        _try(sch, sch.compute_at, cb, rng.choice(loc))
            elif choice == "compute_at_any":
                others = [br.block.name for br, _ in blocks(sch.func) if br.block.name != name]
                if others:
                    ob = _try(sch, sch.get_block, rng.choice(others))
                    oloops = _try(sch, sch.get_loops, ob) if ob is not None else None
                    if oloops:
                        target = rng.choice(oloops)
                        _try(sch, rng.choice([sch.compute_at, sch.reverse_compute_at]), b, target)
    return sch


@pytest.mark.parametrize("name", NAMES)
def test_random_schedules_keep_semantics(name: str) -> None:
    op = ops.get_op(name)
    attrs = {"group": 2} if name == "batch_matmul" else {}
    for seed in range(4):
        rng = random.Random(seed * 31 + len(name))
        dims = random_dims(name, rng)
        symbolic = seed % 2 == 1
        shape = {p: Var(p) if symbolic and rng.random() < 0.7 else v for p, v in dims.items()}
        dtype = "float16" if seed % 4 == 3 else "float32"
        func = op.build(shape, dtype, **attrs)
        sch = random_schedule(Schedule(func, seed=seed), rng)
        check_against_reference(sch, op, dims, dtype, seed=seed, **attrs)
        assert sch.trace.apply(func).func == sch.func
        assert PrimFunc.from_json(sch.func.to_json()) == sch.func
