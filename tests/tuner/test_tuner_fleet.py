"""Two kinds of CPU in one Ray cluster: every record lands under the target that measured it.

The cluster advertises a `tunefleet_target:<fingerprint>` resource per simulated device; each
runner is told (through its config) which target it is, and lanes are picked by fingerprint.
A third node advertises a fingerprint it does not have: its results are refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tunefleet.database import RecordStore
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner import tune
from tunefleet.workers import BuildConfig, MeasureConfig, Target

FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
SHAPE = {"m": 4, "n": 32, "k": 64}


def _wait_until_taken(ray, name: str, timeout_s: float = 10.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        left = ray.available_resources().get(name, 0.0)
        if left == 0.0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.ray
@pytest.mark.slow
def test_records_land_under_the_target_that_measured_them(tmp_path: Path, cpu) -> None:
    import ray

    from tunefleet.workers.ray_executor import RayExecutor, target_resource

    small = Target.cpu(cores=2, device="simulated 2-core CPU")
    large = Target.cpu(cores=4, device="simulated 4-core CPU")
    mislabelled = Target.cpu(cores=8, device="simulated 8-core CPU")
    # the node advertising `mislabelled` really holds a `small` device
    simulated = {small.fingerprint: small, large.fingerprint: large, mislabelled.fingerprint: small}
    resources = {target_resource(t.fingerprint): 1.0 for t in (small, large, mislabelled)}
    ray.init(address="local", num_cpus=4, resources=resources, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    results = {}
    try:
        config = BuildConfig(cache_dir=str(tmp_path / "kernels"))
        with RayExecutor(config, simulated_targets=simulated) as executor:
            for target in (small, large, mislabelled):
                results[target.fingerprint] = tune(
                    "dense", SHAPE, target=target, trials=3, batch_size=3, db_url=db,
                    workers=executor, strategy="random", measure_config=FAST,
                    model_dir=str(tmp_path / "models"),
                )  # fmt: skip
            # each lane's runner holds its node's fingerprint resource: placed by fingerprint
            for target in (small, large, mislabelled):
                assert _wait_until_taken(ray, target_resource(target.fingerprint)) == 0.0
    finally:
        ray.shutdown()

    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    with RecordStore.open(db) as store:
        history = {t.fingerprint: store.history(key, t.fingerprint) for t in (small, large)}
        refused = store.history(key, mislabelled.fingerprint)
        assert store.history(key, cpu.fingerprint) == []  # nothing filed under the driver
    for target in (small, large):
        assert [r.status for r in history[target.fingerprint]] == ["ok"] * 3
        assert results[target.fingerprint].default_ms is not None
    expected = f"measured on {small.fingerprint} but the task targets {mislabelled.fingerprint}"
    assert [(r.status, r.error_msg) for r in refused] == [("run_error", expected)] * 3
    assert results[mislabelled.fingerprint].failures == 3
    assert results[mislabelled.fingerprint].default_ms is None
