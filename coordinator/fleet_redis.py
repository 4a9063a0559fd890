"""Fleet state in Redis (redis-py): what a fleet of tuning jobs shares on its hot path.

Every key lives under `tunefleet:` and is listed in KEYS below with its type and lifetime.
`{pair}` is `<workload_key>|<target_fp>` (workload keys are hex hashes, so the first `|`
splits). Redis holds nothing the database cannot rebuild: leases expire, cache and poison
entries carry TTLs, and lost token counters are re-seeded by `acquire_lease(floor=...)` from
the highest token the record store accepted.

Every redis-py ConnectionError or TimeoutError becomes FleetStateUnavailable with one line
that names the URL (password masked); the caller decides whether to go on without Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tunefleet.coordinator.fleet_state import (
    BestEntry,
    EventValue,
    FleetConfig,
    FleetEvent,
    FleetState,
    FleetStateError,
    FleetStateUnavailable,
    Lease,
    LeaseLost,
    TaskKey,
    check_failure_status,
    check_ttl,
    event_fields,
    mask_fleet_url,
    url_password,
)

T = TypeVar("T")

PREFIX = "tunefleet:"

KEYS = {
    "lease": (
        "tunefleet:lease:{pair}",
        "string '<token>:<holder>'",
        "the lease TTL; renewed by heartbeats, deleted on release",
    ),
    "token": (
        "tunefleet:token:{pair}",
        "integer",
        "no expiry (one small counter per pair ever leased); re-seeded from the database",
    ),
    "events": (
        "tunefleet:events:{job_id}",
        "stream",
        "capped at about events_maxlen entries; expires events_ttl_s after the last event",
    ),
    "best": (
        "tunefleet:best:{pair}",
        "string (JSON record_id, median_ms, trace_hash)",
        "best_ttl_s; deleted when a new best lands",
    ),
    "poison": (
        "tunefleet:poison:{pair}",
        "hash trace_hash -> crash/hang count",
        "poison_ttl_s after the last report",
    ),
}
"""Every key this module writes: name pattern, Redis type, lifetime (docs/jobs.md repeats it)."""

# Take the lease if it is free or already ours, with a token above both the counter and the
# caller's floor, in one atomic step: a SET NX followed by a separate INCR could leave a lease
# without its new token if the client died in between, and two round trips would let another
# holder read the old token while the lease is already taken.
ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if string.sub(current, sep + 1) ~= ARGV[1] then return false end
end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# Extend the lease only if it still carries our token and holder: a plain PEXPIRE could extend
# a lease that expired and went to another holder in the meantime.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Delete the lease only if it is still ours, for the same reason.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Count a failure and push the hash's expiry forward in one step.
REPORT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""


def pair_name(key: TaskKey) -> str:
    return f"{key.workload_key}|{key.target_fp}"


def lease_value(lease: Lease) -> str:
    return f"{lease.token}:{lease.holder}"


class RedisFleetState(FleetState):
    """Fleet state on a Redis server; connects (and pings) on construction.

    `connect_timeout_s` and `timeout_s` bound how long a dead server can stall a call; one
    immediate retry covers a pooled connection the server closed, then the call fails.
    """

    def __init__(
        self,
        url: str,
        config: FleetConfig | None = None,
        *,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(config)
        self._password = url_password(url)
        self.masked_url = mask_fleet_url(url)
        self.timeout_s = timeout_s
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise FleetStateError(
                f"not a usable Redis URL {self.masked_url!r}: {self._clean(exc)}"
            ) from None
        self._acquire = self._client.register_script(ACQUIRE)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._report = self._client.register_script(REPORT)
        try:
            self._call(self._client.ping)
        except FleetStateError:
            self._client.close()
            raise

    # -- errors ------------------------------------------------------------------------------

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except redis.AuthenticationError as exc:
            raise FleetStateUnavailable(
                f"the Redis server at {self.masked_url} refused the login ({self._clean(exc)}); "
                "fix the password in the --redis URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise FleetStateUnavailable(
                f"cannot reach Redis at {self.masked_url} ({self._clean(exc)}); check that "
                "redis-server runs there, or leave --redis out to run without fleet state"
            ) from None
        except redis.RedisError as exc:
            raise FleetStateError(f"Redis at {self.masked_url}: {self._clean(exc)}") from None

    def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        with self._translated():
            return fn(*args, **kwargs)

    # -- leases ------------------------------------------------------------------------------

    def acquire_lease(
        self, workload_key: str, target_fp: str, holder: str, ttl_s: float, *, floor: int = 0
    ) -> Lease | None:
        check_ttl(ttl_s)
        key = TaskKey(workload_key, target_fp)
        pair = pair_name(key)
        started = time.monotonic()
        token = self._call(
            self._acquire,
            keys=[f"{PREFIX}lease:{pair}", f"{PREFIX}token:{pair}"],
            args=[holder, max(1, round(ttl_s * 1000)), int(floor)],
        )
        if token is None:
            return None
        return Lease(key, holder, int(token), started + ttl_s, ttl_s)

    def renew_lease(self, lease: Lease) -> Lease:
        started = time.monotonic()
        renewed = self._call(
            self._renew,
            keys=[f"{PREFIX}lease:{pair_name(lease.key)}"],
            args=[lease_value(lease), max(1, round(lease.ttl_s * 1000))],
        )
        if not renewed:
            raise LeaseLost(f"lease of {lease.key} (token {lease.token}) expired or was taken")
        return Lease(lease.key, lease.holder, lease.token, started + lease.ttl_s, lease.ttl_s)

    def release_lease(self, lease: Lease) -> None:
        self._call(
            self._release,
            keys=[f"{PREFIX}lease:{pair_name(lease.key)}"],
            args=[lease_value(lease)],
        )

    def fencing_token(self, workload_key: str, target_fp: str) -> int:
        value = self._call(
            self._client.get, f"{PREFIX}token:{pair_name(TaskKey(workload_key, target_fp))}"
        )
        return int(value) if value is not None else 0

    # -- progress events ---------------------------------------------------------------------

    def publish(self, job_id: str, event: Mapping[str, EventValue]) -> str:
        fields = event_fields(event)
        name = f"{PREFIX}events:{job_id}"
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(name, fields, maxlen=self.config.events_maxlen, approximate=True)
            pipe.pexpire(name, round(self.config.events_ttl_s * 1000))
            event_id, _ = pipe.execute()
        return str(event_id)

    def read_events(
        self, job_id: str, after: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[FleetEvent]:
        """XREAD from `after`; a long `block_ms` is split into waits shorter than the socket
        timeout, and `"$"` is pinned to the stream's last id first so no event falls between
        two waits."""
        name = f"{PREFIX}events:{job_id}"
        if after == "$":
            last = self._call(self._client.xrevrange, name, count=1)
            after = last[0][0] if last else "0-0"
        deadline = time.monotonic() + (block_ms or 0) / 1000
        slice_ms = max(1, int(self.timeout_s * 500))
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            block = min(remaining_ms, slice_ms) if remaining_ms > 0 else None
            reply = self._call(self._client.xread, {name: after}, count=count, block=block)
            if reply or block is None:
                break
        entries = reply[0][1] if reply else []
        return [FleetEvent(event_id, dict(fields)) for event_id, fields in entries]

    # -- best-schedule cache -----------------------------------------------------------------

    def get_best(self, workload_key: str, target_fp: str) -> BestEntry | None:
        text = self._call(
            self._client.get, f"{PREFIX}best:{pair_name(TaskKey(workload_key, target_fp))}"
        )
        return BestEntry.from_json(text) if text is not None else None

    def set_best(
        self, workload_key: str, target_fp: str, entry: BestEntry, ttl_s: float | None = None
    ) -> None:
        ttl_s = self.config.best_ttl_s if ttl_s is None else ttl_s
        check_ttl(ttl_s)
        self._call(
            self._client.set,
            f"{PREFIX}best:{pair_name(TaskKey(workload_key, target_fp))}",
            entry.to_json(),
            px=max(1, round(ttl_s * 1000)),
        )

    def invalidate_best(self, workload_key: str, target_fp: str) -> None:
        self._call(
            self._client.delete, f"{PREFIX}best:{pair_name(TaskKey(workload_key, target_fp))}"
        )

    # -- poison list -------------------------------------------------------------------------

    def report_failure(
        self, workload_key: str, target_fp: str, trace_hash: str, status: str
    ) -> int:
        check_failure_status(status)
        count = self._call(
            self._report,
            keys=[f"{PREFIX}poison:{pair_name(TaskKey(workload_key, target_fp))}"],
            args=[trace_hash, round(self.config.poison_ttl_s * 1000)],
        )
        return int(count)

    def poisoned(self, workload_key: str, target_fp: str) -> set[str]:
        counts = self._call(
            self._client.hgetall, f"{PREFIX}poison:{pair_name(TaskKey(workload_key, target_fp))}"
        )
        return {h for h, n in counts.items() if int(n) >= self.config.poison_after}

    def close(self) -> None:
        self._client.close()
