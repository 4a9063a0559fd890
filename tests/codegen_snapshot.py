"""Generated C and CUDA for every op's default schedules and every rule's sketches, as digests.

    python tests/codegen_snapshot.py DIR        # write every source under DIR (for diffing)
    python tests/codegen_snapshot.py --update   # rewrite tests/codegen_digests.json

Refactors of the IR, lowering and the renderers promise byte-identical output; the test
`tests/test_codegen_snapshot.py` holds them to it by comparing against the committed digests.
A change whose point is different code regenerates the digests in the same commit and says so.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from tunefleet.ir import build_source, default_schedule, ops
from tunefleet.ir.errors import IRError
from tunefleet.tuner.postproc import default_postprocs, first_rejection
from tunefleet.tuner.replay import resample
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

DIGESTS = Path(__file__).with_name("codegen_digests.json")

# Shapes beyond each op's example: decode, prefill and sizes that are not multiples of a tile.
EXTRA = [
    ("dense", {"m": 1, "n": 4096, "k": 4096}),
    ("dense", {"m": 333, "n": 777, "k": 555}),
    ("dense", {"m": 256, "n": 256, "k": 256}),
    ("matmul", {"m": 128, "n": 96, "k": 64}),
    ("softmax", {"m": 7, "n": 1000}),
    ("rmsnorm", {"m": 7, "n": 3584}),
]
CONTEXTS = {
    "cpu": SpaceContext(Target.cpu(cores=2)),
    "cuda_sm80": SpaceContext(Target.cuda("sm_80")),
    "cuda_sm90": SpaceContext(Target.cuda("sm_90")),
}
SAMPLES = 3  # drawn points per sketch


def workloads() -> Iterator[tuple[str, str, dict[str, int]]]:
    """(op, dtype, shape) for every op at its example shape plus the extra shapes."""
    for opdef in ops.list_ops():
        for dtype in ("float32", "float16"):
            yield opdef.name, dtype, dict(opdef.example)
    for name, shape in EXTRA:
        for dtype in ("float32", "float16"):
            yield name, dtype, shape


def sources() -> Iterator[tuple[str, str]]:
    """(label, generated source) pairs in a fixed order."""
    for op, dtype, shape in workloads():
        tag = f"{op}-{dtype}-" + "_".join(f"{k}{v}" for k, v in shape.items())
        try:
            func = ops.get_op(op).build(shape, dtype)
        except (ValueError, IRError):
            continue
        for target in ("cpu", "cuda"):
            try:
                yield (
                    f"{tag}/default-{target}",
                    build_source(default_schedule(func, target), target).source,
                )
            except IRError as err:
                yield f"{tag}/default-{target}", f"error: {type(err).__name__}"
        for cname, ctx in CONTEXTS.items():
            kind = ctx.kind
            try:
                sketches = SpaceGenerator(*rules_for(kind)).generate(func, ctx)
            except (ValueError, IRError) as err:
                yield f"{tag}/{cname}/space", f"error: {type(err).__name__}"
                continue
            procs = default_postprocs(kind)
            rng = random.Random(0)
            for index, sketch in enumerate(sketches):
                for draw in range(SAMPLES):
                    label = f"{tag}/{cname}/{index}-{sketch.name}/{draw}"
                    seed = rng.getrandbits(32)
                    try:
                        sch = resample(func, sketch.trace, seed)
                        if first_rejection(sch, ctx, procs) is not None:
                            yield label, "rejected"
                            continue
                        target = kind.value
                        yield label, build_source(sch, target).source
                    except IRError as err:
                        yield label, f"error: {type(err).__name__}"


def digests() -> dict[str, str]:
    """Label -> sha256 of the generated source."""
    return {label: hashlib.sha256(src.encode()).hexdigest()[:20] for label, src in sources()}


def main(argv: list[str]) -> int:
    if argv == ["--update"]:
        DIGESTS.write_text(json.dumps(digests(), indent=0, sort_keys=True) + "\n")
        print(f"wrote {DIGESTS}")
        return 0
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    for label, src in sources():
        path = out / (label.replace("/", "__") + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
    print(f"wrote sources under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
