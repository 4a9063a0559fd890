"""Noisy trials in the tuning loop: failures, not times; no cost-model sample; measured again
by the next run; counted in the result so the summary can say results were taken under load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunefleet.database import RecordStore
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner import tune
from tunefleet.tuner.cost_model import RandomModel, Sample
from tunefleet.workers import MeasureConfig

SHAPE = {"m": 4, "n": 32, "k": 64}
QUIET = MeasureConfig(repeats=3, warmup_ms=0.5, min_repeat_ms=0.3, guard_noise=False)
# a spread can never be below -1: every attempt is judged noisy, through the real runner
ALWAYS_NOISY = MeasureConfig(
    repeats=3, warmup_ms=0.5, min_repeat_ms=0.3, max_spread=-1.0, noise_retimes=0
)


class RecordingModel(RandomModel):
    """A random model that keeps every sample it is trained on."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[Sample] = []

    def update(self, samples: Sequence[Sample]) -> None:
        self.seen.extend(samples)
        super().update(samples)


def _run(tmp_path: Path, executor, db: str, config: MeasureConfig, model: RecordingModel):
    return tune(
        "dense", SHAPE, trials=4, db_url=db, workers=executor, batch_size=4, seed=3,
        strategy="random", cost_model=model, model_dir=str(tmp_path / "models"),
        measure_config=config, measure_default=False,
    )  # fmt: skip


def test_noisy_trials_are_failures_kept_out_of_the_model_and_measured_again(
    tmp_path: Path, executor, cpu
) -> None:
    db = f"sqlite:///{tmp_path / 'records.db'}"
    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    model = RecordingModel()
    loud = _run(tmp_path, executor, db, ALWAYS_NOISY, model)
    assert loud.trials == 4 and loud.noisy == 4 and loud.failures == 4
    assert loud.best_ms is None and loud.to_json_dict()["noisy"] == 4
    assert [kind[0] for kind in loud.failure_kinds] == ["noisy"]
    assert model.seen == []  # no time, and not a failure to steer away from either
    with RecordStore.open(db) as store:
        first = store.history(key, cpu.fingerprint)
        assert [r.status for r in first] == ["noisy"] * 4
        assert all(r.median_ms is None and r.timings_ms and r.attempts == 1 for r in first)
        assert store.measured_hashes(key, cpu.fingerprint) == set()
    noisy_hashes = {r.trace_hash for r in first}

    model = RecordingModel()
    quiet = _run(tmp_path, executor, db, QUIET, model)
    assert quiet.noisy == 0 and quiet.best_ms is not None
    with RecordStore.open(db) as store:
        again = store.history(key, cpu.fingerprint)[4:]
    # the same seed proposes the same traces: the noisy ones are measured again, now for real
    assert {r.trace_hash for r in again} == noisy_hashes
    assert {s.trace_hash for s in model.seen} == noisy_hashes
