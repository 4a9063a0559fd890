"""Fleet state: one behaviour suite run against the in-process state and against real Redis."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tunefleet.coordinator.fleet_local import LocalFleetState
from tunefleet.coordinator.fleet_redis import KEYS, PREFIX, RedisFleetState
from tunefleet.coordinator.fleet_state import (
    BestEntry,
    FleetConfig,
    FleetState,
    FleetStateError,
    FleetStateUnavailable,
    LeaseLost,
    mask_fleet_url,
    open_fleet_state,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = FleetConfig(best_ttl_s=30.0, poison_ttl_s=0.6, events_ttl_s=60.0)
TARGET = "cpu|x86_64|gcc-13"


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def state(request: pytest.FixtureRequest) -> Iterator[FleetState]:
    if request.param == "local":
        with LocalFleetState(CONFIG) as local:
            yield local
        return
    url = request.getfixturevalue("redis_url")
    with RedisFleetState(url, CONFIG) as remote:
        yield remote
    client = redis.Redis.from_url(url)  # drop the keys of this run from the shared server
    try:
        for name in client.scan_iter(match=f"{PREFIX}*{WORKLOAD_TAG}*"):
            client.delete(name)
    finally:
        client.close()


WORKLOAD_TAG = f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workload() -> str:
    """A workload key no other test (or earlier run on the shared server) uses."""
    return f"{WORKLOAD_TAG}{uuid.uuid4().hex[:16]}"


# -- leases ------------------------------------------------------------------------------------


def test_lease_excludes_second_holder(state: FleetState, workload: str) -> None:
    first = state.acquire_lease(workload, TARGET, "job-a", ttl_s=5)
    assert first is not None and first.holder == "job-a" and first.token >= 1
    assert state.acquire_lease(workload, TARGET, "job-b", ttl_s=5) is None
    # another target of the same workload is a different task
    assert state.acquire_lease(workload, "cuda|sm_90", "job-b", ttl_s=5) is not None


def test_expired_lease_goes_to_next_holder_with_higher_token(
    state: FleetState, workload: str
) -> None:
    first = state.acquire_lease(workload, TARGET, "job-a", ttl_s=0.3)
    assert first is not None
    assert first.expires_at <= time.monotonic() + 0.3
    time.sleep(0.45)
    second = state.acquire_lease(workload, TARGET, "job-b", ttl_s=5)
    assert second is not None and second.holder == "job-b"
    assert second.token > first.token
    assert state.fencing_token(workload, TARGET) == second.token


def test_renewal_extends_the_lease(state: FleetState, workload: str) -> None:
    lease = state.acquire_lease(workload, TARGET, "node-1:4242:job-a", ttl_s=0.6)
    assert lease is not None
    for _ in range(3):  # 1.2 s in all: twice the TTL, held throughout by heartbeats
        time.sleep(0.4)
        renewed = state.renew_lease(lease)
        assert renewed.token == lease.token and renewed.expires_at > lease.expires_at
        lease = renewed
        assert state.acquire_lease(workload, TARGET, "job-b", ttl_s=5) is None


def test_renewal_after_expiry_raises(state: FleetState, workload: str) -> None:
    lease = state.acquire_lease(workload, TARGET, "job-a", ttl_s=0.2)
    assert lease is not None
    time.sleep(0.35)
    with pytest.raises(LeaseLost, match="expired or was taken"):
        state.renew_lease(lease)
    # taken by another holder: the old lease can neither renew nor release the new one
    taken = state.acquire_lease(workload, TARGET, "job-b", ttl_s=5)
    assert taken is not None
    with pytest.raises(LeaseLost):
        state.renew_lease(lease)
    state.release_lease(lease)
    assert state.acquire_lease(workload, TARGET, "job-c", ttl_s=5) is None
    assert state.renew_lease(taken).holder == "job-b"


def test_release_lets_the_next_holder_in(state: FleetState, workload: str) -> None:
    lease = state.acquire_lease(workload, TARGET, "job-a", ttl_s=30)
    assert lease is not None
    state.release_lease(lease)
    state.release_lease(lease)  # twice is harmless
    nxt = state.acquire_lease(workload, TARGET, "job-b", ttl_s=30)
    assert nxt is not None and nxt.token > lease.token
    with pytest.raises(LeaseLost):
        state.renew_lease(lease)


def test_tokens_strictly_increase_and_respect_the_floor(state: FleetState, workload: str) -> None:
    assert state.fencing_token(workload, TARGET) == 0
    tokens = []
    for i in range(4):
        lease = state.acquire_lease(workload, TARGET, f"job-{i}", ttl_s=30)
        assert lease is not None
        tokens.append(lease.token)
        assert state.fencing_token(workload, TARGET) == lease.token
        state.release_lease(lease)
    assert tokens == sorted(set(tokens))
    # a fleet state that lost its counters is re-seeded from the record store's highest token
    seeded = state.acquire_lease(workload, TARGET, "job-x", ttl_s=30, floor=100)
    assert seeded is not None and seeded.token == 101
    # the same holder re-acquiring gets a fresh token and fences out its older lease
    again = state.acquire_lease(workload, TARGET, "job-x", ttl_s=30)
    assert again is not None and again.token == 102
    with pytest.raises(LeaseLost):
        state.renew_lease(seeded)
    assert state.renew_lease(again).token == 102


def test_lease_acquisition_is_exclusive_under_contention(state: FleetState, workload: str) -> None:
    winners: list[str] = []
    start = threading.Barrier(8)

    def contend(holder: str) -> None:
        start.wait()
        if state.acquire_lease(workload, TARGET, holder, ttl_s=30) is not None:
            winners.append(holder)

    threads = [threading.Thread(target=contend, args=(f"job-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(winners) == 1
    assert state.fencing_token(workload, TARGET) == 1


# -- events ------------------------------------------------------------------------------------


def test_events_round_trip_in_order(state: FleetState, workload: str) -> None:
    job = f"job-{workload}"
    ids = [
        state.publish(job, {"trial": i, "median_ms": 0.25 * i, "task": "matmul"}) for i in range(5)
    ]
    events = state.read_events(job)
    assert [e.id for e in events] == ids
    assert [e.fields for e in events] == [
        {"trial": str(i), "median_ms": repr(0.25 * i), "task": "matmul"} for i in range(5)
    ]
    assert [e.fields["trial"] for e in state.read_events(job, after=ids[1])] == ["2", "3", "4"]
    assert [e.fields["trial"] for e in state.read_events(job, count=2)] == ["0", "1"]
    assert state.read_events(job, after=ids[-1]) == []
    assert state.read_events(f"no-such-{workload}") == []
    with pytest.raises(TypeError):
        state.publish(job, {"bad": [1, 2]})  # type: ignore[dict-item]


def test_blocking_read_returns_new_events(state: FleetState, workload: str) -> None:
    job = f"job-{workload}"
    state.publish(job, {"trial": 0})
    began = time.monotonic()
    assert state.read_events(job, after="$", block_ms=200) == []
    assert 0.15 <= time.monotonic() - began < 2

    def later() -> None:
        time.sleep(0.2)
        state.publish(job, {"trial": 1})

    publisher = threading.Thread(target=later)
    began = time.monotonic()
    publisher.start()
    events = state.read_events(job, after="$", block_ms=10_000)
    publisher.join()
    assert [e.fields for e in events] == [{"trial": "1"}]
    assert time.monotonic() - began < 5


def test_event_stream_is_capped(workload: str) -> None:
    with LocalFleetState(FleetConfig(events_maxlen=3)) as local:
        for i in range(10):
            local.publish("job", {"trial": i})
        assert [e.fields["trial"] for e in local.read_events("job")] == ["7", "8", "9"]


# -- best cache --------------------------------------------------------------------------------


def test_best_cache_set_get_invalidate_and_ttl(state: FleetState, workload: str) -> None:
    entry = BestEntry(record_id=42, median_ms=0.125, trace_hash="ab" * 16)
    assert state.get_best(workload, TARGET) is None
    state.set_best(workload, TARGET, entry)
    assert state.get_best(workload, TARGET) == entry
    assert state.get_best(workload, "cuda|sm_90") is None
    state.invalidate_best(workload, TARGET)
    assert state.get_best(workload, TARGET) is None
    state.set_best(workload, TARGET, entry, ttl_s=0.3)
    assert state.get_best(workload, TARGET) == entry
    time.sleep(0.45)
    assert state.get_best(workload, TARGET) is None


# -- poison list -------------------------------------------------------------------------------


def test_poison_after_two_reports_not_one(state: FleetState, workload: str) -> None:
    assert state.report_failure(workload, TARGET, "trace-a", "crash") == 1
    assert state.report_failure(workload, TARGET, "trace-b", "hang") == 1
    assert state.poisoned(workload, TARGET) == set()
    assert state.report_failure(workload, TARGET, "trace-a", "hang") == 2
    assert state.poisoned(workload, TARGET) == {"trace-a"}
    assert state.poisoned(workload, "cuda|sm_90") == set()
    with pytest.raises(ValueError, match="crash, hang"):
        state.report_failure(workload, TARGET, "trace-b", "wrong_result")
    # TTL'd: forgotten after a quiet poison_ttl_s, so the database can rebuild it
    time.sleep(CONFIG.poison_ttl_s + 0.2)
    assert state.poisoned(workload, TARGET) == set()


# -- opening and failures ----------------------------------------------------------------------


def test_non_redis_url_gives_one_line_error() -> None:
    with pytest.raises(FleetStateError) as info:
        open_fleet_state("postgresql://tf:hunter2@db.example/tf")
    message = str(info.value)
    assert "unsupported fleet-state URL" in message and "redis://" in message
    assert "\n" not in message and "hunter2" not in message
    assert not isinstance(info.value, FleetStateUnavailable)


def test_no_url_is_the_in_process_state() -> None:
    with open_fleet_state(None) as local:
        assert isinstance(local, LocalFleetState)


def test_unreachable_redis_is_unavailable_without_password() -> None:
    began = time.monotonic()
    with pytest.raises(FleetStateUnavailable) as info:
        open_fleet_state("redis://:s3cret-pw@127.0.0.1:1/0")
    message = str(info.value)
    assert time.monotonic() - began < 10
    assert message.startswith("cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "leave --redis out" in message
    assert "s3cret-pw" not in message and "\n" not in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_masking_covers_user_info_and_query_passwords() -> None:
    assert mask_fleet_url("redis://user:pw@h:6379/1") == "redis://user:***@h:6379/1"
    assert mask_fleet_url("unix:///run/redis.sock?db=2&password=pw") == (
        "unix:///run/redis.sock?db=2&password=***"
    )
    assert mask_fleet_url("redis://h:6379/0") == "redis://h:6379/0"


def test_every_key_is_under_the_prefix() -> None:
    assert {name for name, _, _ in KEYS.values()} == {
        f"{PREFIX}{kind}:{{{'job_id' if kind == 'events' else 'pair'}}}" for kind in KEYS
    }


# -- a Redis server of our own, to kill (the `own_redis` fixture is in tests/conftest.py) --


@pytest.mark.redis
def test_redis_killed_mid_use_is_unavailable_from_the_next_call(
    own_redis: tuple[subprocess.Popen[bytes], int], workload: str
) -> None:
    proc, port = own_redis
    with open_fleet_state(f"redis://:pw-own@127.0.0.1:{port}/0", CONFIG) as remote:
        lease = remote.acquire_lease(workload, TARGET, "job-a", ttl_s=30)
        assert lease is not None
        remote.publish("job", {"trial": 1})
        proc.terminate()
        proc.wait(10)
        began = time.monotonic()
        with pytest.raises(FleetStateUnavailable) as info:
            remote.renew_lease(lease)
        assert time.monotonic() - began < 10
        message = str(info.value)
        assert f"redis://:***@127.0.0.1:{port}/0" in message
        assert "pw-own" not in message and "\n" not in message
        for call in (
            lambda: remote.publish("job", {"trial": 2}),
            lambda: remote.read_events("job", block_ms=100),
            lambda: remote.get_best(workload, TARGET),
            lambda: remote.poisoned(workload, TARGET),
        ):
            with pytest.raises(FleetStateUnavailable):
                call()


@pytest.mark.redis
def test_wrong_redis_password_is_unavailable_without_password(
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = own_redis
    with pytest.raises(FleetStateUnavailable) as info:
        open_fleet_state(f"redis://:not-the-pw@127.0.0.1:{port}/0")
    message = str(info.value)
    assert "refused the login" in message and "not-the-pw" not in message
    assert "\n" not in message
