"""The annotate primitive: key/value pairs on blocks and loops that later passes read."""

from __future__ import annotations

import dataclasses
from typing import Any

from .annotation_keys import check_annotation
from .errors import ScheduleError
from .instruction_traits import primitive
from .schedule_state import ScheduleState
from .trace import RV


@primitive()
def annotate(state: ScheduleState, target: RV, key: str, value: Any) -> None:
    """Attach a key/value annotation to a block or a loop (JSON-able value, or an integer
    handle from a sampling step, so that a replay with another decision annotates anew).

        for k in range(64): ...        annotate(k, "software_pipeline_stages", 3) ->
        for k in range(64): [software_pipeline_stages=3]
    """
    check_annotation(
        key, value, "block" if isinstance(target, RV) and target.kind == "b" else "loop"
    )
    value = state.value(value) if isinstance(value, RV) else value
    if not isinstance(value, str | int | float | bool):
        raise ScheduleError(f"annotation values must be str, int, float or bool, got {value!r}")
    if isinstance(target, RV) and target.kind == "b":
        br, _ = state.block(target)
        ann = (*tuple((k, v) for k, v in br.block.annotations if k != key), (key, value))
        state.replace_block(br.block.name, dataclasses.replace(br.block, annotations=ann))
    else:
        lp, _ = state.loop(target)
        ann = (*tuple((k, v) for k, v in lp.annotations if k != key), (key, value))
        state.replace_loop(lp, dataclasses.replace(lp, annotations=ann))
