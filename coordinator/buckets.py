"""Bucket values of the symbolic dims and the dim values that costs are reported at.

A task is tuned at each bucket value of its symbolic dims, and compiled code dispatches on
them. Costs (FLOPs, bytes, roofline share) are reported at one point, `eval_dims`.
"""

from __future__ import annotations

from collections.abc import Mapping

from tunefleet.coordinator.graph import PINNED, Phase

DIM_NAMES: dict[str, str] = {"b": "batch", "n": "new tokens", "m": "kv length"}

DEFAULT_BUCKETS: dict[Phase, dict[str, tuple[int, ...]]] = {
    Phase.DECODE: {"b": (1, 4, 16, 64), "m": (4096,)},
    Phase.PREFILL: {"n": (128, 512, 2048), "m": (4096,)},
}

# Reported by default: one sequence; a 2048-token prompt with no cached context (m = n),
# or one token appended to a 4096-token context.
DEFAULT_EVAL: dict[Phase, dict[str, int]] = {
    Phase.DECODE: {"b": 1, "n": 1, "m": 4096},
    Phase.PREFILL: {"b": 1, "n": 2048},
}


class DimSpecError(ValueError):
    """A `name=value` dim specification is malformed or names an unknown dim."""


def parse_assignments(text: str) -> dict[str, tuple[int, ...]]:
    """Parse `n=128,b=1,m=4096` or `b=1:4:16` (colon-separated lists) into values per dim."""
    out: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise DimSpecError(f"expected NAME=VALUE, got {item!r}")
        if name not in DIM_NAMES:
            known = ", ".join(f"{k} ({v})" for k, v in DIM_NAMES.items())
            raise DimSpecError(f"unknown dim {name!r}; known dims: {known}")
        try:
            values = tuple(int(v) for v in value.split(":"))
        except ValueError:
            raise DimSpecError(f"{name}: expected positive integers, got {value!r}") from None
        if any(v <= 0 for v in values):
            raise DimSpecError(f"{name}: values must be positive, got {value!r}")
        out[name] = values
    return out


def eval_dims(phase: Phase, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """Dim values for cost reports: defaults of the phase with `overrides` applied.

    Decode pins n to 1 and prefill b to 1; in prefill an unset kv length defaults to the
    prompt length.
    """
    dims = dict(DEFAULT_EVAL[phase])
    dims.update(overrides or {})
    if phase is Phase.DECODE and dims.get("n", 1) != 1:
        raise DimSpecError("decode adds one token per sequence: n must be 1 (use --phase prefill)")
    if phase is Phase.PREFILL and dims.get("b", 1) != 1:
        raise DimSpecError(
            "prefill runs one prompt (pack several into n tokens): b must be 1 "
            "(use --phase decode for batches)"
        )
    dims.update(PINNED[phase])
    dims.setdefault("m", dims["n"])
    if dims["m"] < dims["n"]:
        raise DimSpecError(f"kv length m={dims['m']} is shorter than the new tokens n={dims['n']}")
    return dims


def buckets_for(
    phase: Phase, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Bucket values per symbolic dim of the phase, defaults replaced by `overrides`."""
    out = dict(DEFAULT_BUCKETS[phase])
    for name, values in (overrides or {}).items():
        if name in PINNED[phase]:
            continue  # not symbolic in this phase
        if name not in out:
            raise DimSpecError(f"{phase.value} has no symbolic dim {name!r} to bucket")
        out[name] = tuple(sorted(set(values)))
    return out
