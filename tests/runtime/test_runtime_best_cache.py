"""`tunefleet compile --redis`: the best records read through the Redis best-schedule cache,
with measured records committed to a real database. A first compile fills the cache, a second
takes every best from it; entries the database does not confirm (or that cannot be read) are
ignored; an unreachable Redis is one line, and a Redis that dies mid-compile leaves the rest to
the database."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from runtime_models import HF_CONFIGS, tiny

from tunefleet.coordinator.fleet_redis import PREFIX
from tunefleet.coordinator.fleet_state import BestEntry, open_fleet_state
from tunefleet.coordinator.graph import PINNED, Phase
from tunefleet.coordinator.job_plan import bucket_points, specialize
from tunefleet.coordinator.task_problems import task_dims, task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.database import NewRecord, RecordStore
from tunefleet.ir import structural_hash
from tunefleet.runtime.best_lookup import BestLookup
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.tuner.task_tuner import target_info, workload_info
from tunefleet.workers.builder import BuildInput, build
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import detect_cpu

pytestmark = pytest.mark.slow  # measured records and several CLI compiles

CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
BUCKETS = {"b": (1,), "n": (8,), "m": (64,)}  # one point per task keeps the compiles short
BUCKET_SPEC = "b=1,n=8,m=64"
FAST = MeasureConfig(guard_noise=False, warmup_ms=0.5, repeats=1, min_repeat_ms=0.1, timeout_s=20)
TUNED = {"lm_head": 2, "o_proj+attn_residual": 1}  # decode task -> records committed


def cli(tmp: Path, cache_dir: str, *args: str, env: dict[str, str] | None = None):
    """Run `tunefleet ARGS` in a fresh process with the runtime tests' kernel cache."""
    full = dict(os.environ, HOME=str(tmp / "home"), TUNEFLEET_CACHE_DIR=cache_dir, **(env or {}))
    if env is None or "TUNEFLEET_REDIS_URL" not in env:
        full.pop("TUNEFLEET_REDIS_URL", None)
    full.pop("TUNEFLEET_DB_URL", None)
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=full, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def records(tmp_path_factory, build_config) -> dict:
    """A tiny Qwen2 on disk and a database with measured records of two decode tasks at b=1:
    two candidates of lm_head, one of o_proj (`keys`: task -> workload key, `ids`: task -> its
    record ids, fastest first)."""
    tmp = tmp_path_factory.mktemp("best-cache")
    model_dir = tmp / "qwen2"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(HF_CONFIGS["qwen2"]))
    db = f"sqlite:///{tmp / 'records.db'}"
    target = detect_cpu()
    keys: dict[str, str] = {}
    ids: dict[str, list[int]] = {}
    with RecordStore.open(db) as store, Runner(
        RunnerConfig(device="cpu", cache_dir=build_config.cache_dir)
    ) as runner:
        store.ensure_target(target_info(target))
        for task in model_tasks(tiny("qwen2"), Phase.DECODE, buckets=BUCKETS):
            if task.name not in TUNED:
                continue
            (point,) = bucket_points(task)
            dims = {**PINNED[Phase.DECODE], **task_dims(task, {**PINNED[Phase.DECODE], **point})}
            func = specialize(task.func, dims)
            shape = {k: v.evaluate(dims) for k, v in task.shape}
            store.ensure_workload(workload_info(func, task.op, shape, task.dtype))
            ctx = SpaceContext(target)
            space = SpaceGenerator(*rules_for(target.kind)).generate(func, ctx)
            sampler = SpaceSampler(func, space, ctx, default_postprocs(target.kind))
            new = []
            for cand in sampler.sample_unique(random.Random(1), TUNED[task.name], set()):
                built = build(BuildInput(target, workload=func, trace=cand.trace_json),
                              build_config)  # fmt: skip
                assert built.status is Status.OK, built.message
                ran = runner.run(RunInput(built.artifact, task_problem(task, dims), FAST))
                assert ran.status is Status.OK, ran.message
                new.append(NewRecord(structural_hash(func), target.fingerprint, cand.trace_json,
                                     cand.trace_hash, "ok", ran.timings_ms,
                                     ran.median_ms))  # fmt: skip
            store.commit(new)
            keys[task.name] = structural_hash(func)
            ids[task.name] = [r.id for r in store.best(keys[task.name], target.fingerprint, 10)]
    assert {name: len(found) for name, found in ids.items()} == TUNED
    return {"tmp": tmp, "db": db, "model_dir": model_dir, "fp": target.fingerprint,
            "keys": keys, "ids": ids}  # fmt: skip


@pytest.fixture
def cache(records, redis_url):
    """The test Redis with the best entries of the database's pairs dropped, before and after."""
    with open_fleet_state(redis_url) as fleet:
        for key in records["keys"].values():
            fleet.invalidate_best(key, records["fp"])
        yield fleet
        for key in records["keys"].values():
            fleet.invalidate_best(key, records["fp"])


def compile_json(records, build_config, out: str, *extra: str) -> dict:
    done = cli(records["tmp"], build_config.cache_dir, "compile", "--model",
               str(records["model_dir"]), "--target", "cpu", "--db", records["db"], "--out",
               str(records["tmp"] / out), "--buckets", BUCKET_SPEC, "--json", *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def picked(report: dict) -> dict[tuple[str, str], int | None]:
    return {(k["phase"], k["task"]): k["record_id"] for k in report["kernels"]}


def manifest_ids(folder: Path) -> dict[tuple[str, str], int | None]:
    """The record id of each (phase, task) kernel in a compiled model's manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {(t["phase"], t["name"]): k["record_id"] for t in manifest["tasks"]
            for k in t["kernels"]}  # fmt: skip


@pytest.mark.redis
def test_a_first_compile_fills_the_cache_and_a_second_hits_for_every_best(
    records, cache, redis_url, build_config
) -> None:
    first = compile_json(records, build_config, "first", "--redis", redis_url)
    assert first["cache"] == {"hits": 0, "misses": 2, "ignored": 0, "unavailable": False}
    keys, ids = records["keys"], records["ids"]
    with RecordStore.open(records["db"]) as store:
        for name, key in keys.items():
            best = store.get_record(ids[name][0])
            assert cache.get_best(key, records["fp"]) == BestEntry(
                best.id, best.median_ms, best.trace_hash
            )
    tuned = {k["workload_key"]: k["record_id"] for k in first["kernels"] if k["record_id"]}
    assert tuned == {keys[name]: ids[name][0] for name in TUNED}  # the fastest of each

    # the second compile in text mode: its line says where the bests came from
    done = cli(records["tmp"], build_config.cache_dir, "compile", "--model",
               str(records["model_dir"]), "--db", records["db"], "--out",
               str(records["tmp"] / "second"), "--buckets", BUCKET_SPEC, "--redis", redis_url,
               env={"TUNEFLEET_REDIS_URL": "redis://unused.invalid:1/0"})  # --redis wins
    assert done.returncode == 0, done.stderr
    assert "best records: 2 from the Redis cache, 0 from the database (now cached)\n" in done.stdout
    assert manifest_ids(records["tmp"] / "second") == manifest_ids(records["tmp"] / "first")
    assert set(manifest_ids(records["tmp"] / "second").values()) - {None} == set(tuned.values())

    without = compile_json(records, build_config, "plain")
    assert without["cache"] is None and picked(without) == picked(first)


@pytest.mark.redis
def test_entries_the_database_does_not_confirm_are_ignored(
    records, cache, redis_url, build_config
) -> None:
    head, proj = records["keys"]["lm_head"], records["keys"]["o_proj+attn_residual"]
    head_ids, proj_ids = records["ids"]["lm_head"], records["ids"]["o_proj+attn_residual"]
    fp = records["fp"]
    with RecordStore.open(records["db"]) as store:
        best = store.get_record(head_ids[0])
        # a failed run of lm_head's best trace: same workload, target and hash, not sound
        (failed,) = store.commit([NewRecord(head, fp, best.trace_json, best.trace_hash,
                                            "run_error", error_msg="planted")])  # fmt: skip
    cache.set_best(head, fp, BestEntry(failed, best.median_ms / 10, best.trace_hash))
    cache.set_best(proj, fp, BestEntry(best.id, best.median_ms, best.trace_hash))  # lm_head's
    report = compile_json(records, build_config, "planted", "--redis", redis_url)
    assert report["cache"] == {"hits": 0, "misses": 2, "ignored": 2, "unavailable": False}
    tuned = {k["workload_key"]: k["record_id"] for k in report["kernels"] if k["record_id"]}
    assert tuned == {head: head_ids[0], proj: proj_ids[0]}
    assert cache.get_best(head, fp).record_id == head_ids[0]  # replaced by the database's best
    assert cache.get_best(proj, fp).record_id == proj_ids[0]


def test_an_unreachable_redis_is_one_line_and_exit_1(records, build_config) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0"  # nothing listens on port 1
    for extra, env in ((["--redis", url], None), ([], {"TUNEFLEET_REDIS_URL": url})):
        done = cli(records["tmp"], build_config.cache_dir, "compile", "--model",
                   str(records["model_dir"]), "--db", records["db"], "--out",
                   str(records["tmp"] / "never"), *extra, env=env)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in done.stderr
        assert "s3cret" not in done.stderr
        assert not (records["tmp"] / "never").exists()


@pytest.mark.redis
def test_a_redis_that_dies_mid_compile_leaves_the_rest_to_the_database(records, own_redis) -> None:
    proc, port = own_redis
    head, proj = records["keys"]["lm_head"], records["keys"]["o_proj+attn_residual"]
    head_ids, proj_ids = records["ids"]["lm_head"], records["ids"]["o_proj+attn_residual"]
    fp, warnings = records["fp"], []
    with RecordStore.open(records["db"]) as store, open_fleet_state(
        f"redis://:pw-own@127.0.0.1:{port}/0"
    ) as fleet:
        lookup = BestLookup(store, fleet, warn=warnings.append)
        assert lookup.best(head, fp).id == head_ids[0]
        assert fleet.get_best(head, fp).record_id == head_ids[0]
        proc.kill()
        proc.wait(10)
        assert lookup.best(proj, fp).id == proj_ids[0]
        assert lookup.best(head, fp).id == head_ids[0]
        assert lookup.best("0" * 64, fp) is None
    assert lookup.unavailable and len(warnings) == 1
    assert warnings[0].startswith(f"tunefleet: warning: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert warnings[0].endswith("compile continues from the database alone")
    assert lookup.counts.misses == 1 and lookup.counts.hits == 0


@pytest.mark.redis
def test_an_unreadable_entry_is_ignored_and_replaced(records, cache, redis_url) -> None:
    head, fp = records["keys"]["lm_head"], records["fp"]
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{PREFIX}best:{head}|{fp}", "not json", px=60_000)
    finally:
        client.close()
    with RecordStore.open(records["db"]) as store:
        lookup = BestLookup(store, cache)
        assert lookup.best(head, fp).id == records["ids"]["lm_head"][0]
    assert (lookup.counts.ignored, lookup.counts.misses, lookup.counts.hits) == (1, 1, 0)
    assert cache.get_best(head, fp).record_id == records["ids"]["lm_head"][0]
