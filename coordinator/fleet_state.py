"""Fleet state: leases, progress events, a best-schedule cache and a poison list.

The state a fleet of tuning jobs shares on its hot path. Two implementations hold it: Redis
(`fleet_redis.RedisFleetState`, for a fleet) and the in-process equivalent
(`fleet_local.LocalFleetState`, the embedded default). `open_fleet_state(url)` picks one by URL.

Nothing here is durable on purpose: every value can be rebuilt from the record store (leases
expire, the best cache and the poison list carry TTLs, fencing tokens accept a floor taken from
the database), so losing the fleet state loses no record.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

EventValue = str | int | float

FAILURE_STATUSES = ("crash", "hang")
"""Failures that count toward the poison list: the candidate killed its worker process
(crash) or had to be killed after its timeout (hang). Ordinary run errors are records, not
poison."""


class FleetStateError(Exception):
    """Base of every error the fleet state raises on purpose; its message is one line."""


class FleetStateUnavailable(FleetStateError):
    """The fleet-state server cannot be reached (at start or mid-use)."""


class LeaseLost(FleetStateError):
    """A lease expired or was taken by another holder before it was renewed."""


@dataclass(frozen=True)
class TaskKey:
    """The unit a lease guards and a cache entry describes: one workload on one target."""

    workload_key: str
    target_fp: str

    def __str__(self) -> str:
        return f"{self.workload_key}@{self.target_fp}"


@dataclass(frozen=True)
class Lease:
    """The right to tune `key` until `expires_at`, fenced by `token`.

    `expires_at` is on this process's monotonic clock (`time.monotonic()`), measured from before
    the acquisition request left, so it is never later than the server's own expiry. `token`
    strictly increases per key across acquisitions: a record store refuses a commit whose token
    is older than `fencing_token(key)`, so a holder that lost its lease cannot write.
    """

    key: TaskKey
    holder: str
    token: int
    expires_at: float
    ttl_s: float


@dataclass(frozen=True)
class BestEntry:
    """A cached best schedule: enough to fetch the full record from the database."""

    record_id: int
    median_ms: float
    trace_hash: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "record_id": self.record_id,
                "median_ms": self.median_ms,
                "trace_hash": self.trace_hash,
            }
        )

    @staticmethod
    def from_json(text: str | bytes) -> BestEntry:
        data = json.loads(text)
        return BestEntry(int(data["record_id"]), float(data["median_ms"]), str(data["trace_hash"]))


class FleetEvent(NamedTuple):
    """One progress event of a job as read back: its stream id and its fields (as strings)."""

    id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class FleetConfig:
    """Lifetimes and limits of the fleet state, shared by both implementations."""

    best_ttl_s: float = 300.0  # a cached best is re-read from the database after this
    poison_ttl_s: float = 7 * 24 * 3600.0  # failure counts are forgotten after a quiet week
    poison_after: int = 2  # crash/hang reports that poison a trace fleet-wide
    events_maxlen: int = 10_000  # approximate cap on each job's event stream
    events_ttl_s: float = 7 * 24 * 3600.0  # a job's stream lives this long after its last event

    def __post_init__(self) -> None:
        for name in ("best_ttl_s", "poison_ttl_s", "events_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.poison_after < 1 or self.events_maxlen < 1:
            raise ValueError("poison_after and events_maxlen must be at least 1")


class FleetState(ABC):
    """The shared hot-path state of a tuning fleet; every method is safe from many threads."""

    def __init__(self, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()

    # -- leases ------------------------------------------------------------------------------

    @abstractmethod
    def acquire_lease(
        self, workload_key: str, target_fp: str, holder: str, ttl_s: float, *, floor: int = 0
    ) -> Lease | None:
        """Take the lease of (workload, target) for `ttl_s`, or None if another holder has it.

        A holder that already holds the key gets a fresh lease with a new token (its older
        lease is fenced out), so a restarted job can take its work back without waiting for the
        TTL. The token is greater than every earlier token of the key and than `floor`: pass
        the highest token the record store has accepted, so a fleet state that lost its
        counters still issues tokens the store accepts.
        """

    @abstractmethod
    def renew_lease(self, lease: Lease) -> Lease:
        """Extend a live lease by its TTL from now (the heartbeat); LeaseLost if it is gone."""

    @abstractmethod
    def release_lease(self, lease: Lease) -> None:
        """Give the lease back early; a no-op if it already expired or changed hands."""

    @abstractmethod
    def fencing_token(self, workload_key: str, target_fp: str) -> int:
        """The newest token issued for (workload, target); 0 if it was never leased."""

    # -- progress events ---------------------------------------------------------------------

    @abstractmethod
    def publish(self, job_id: str, event: Mapping[str, EventValue]) -> str:
        """Append one event to the job's stream; return its id (Redis stream id format)."""

    @abstractmethod
    def read_events(
        self, job_id: str, after: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[FleetEvent]:
        """Up to `count` events of the job with ids after `after`, oldest first.

        `after="0"` reads from the start; `"$"` reads only events published after this call.
        With `block_ms`, wait up to that long for a first event when none is there yet
        (None or 0: return at once). Field values come back as strings.
        """

    # -- best-schedule cache -----------------------------------------------------------------

    @abstractmethod
    def get_best(self, workload_key: str, target_fp: str) -> BestEntry | None:
        """The cached best of (workload, target), or None: then ask the database."""

    @abstractmethod
    def set_best(
        self, workload_key: str, target_fp: str, entry: BestEntry, ttl_s: float | None = None
    ) -> None:
        """Cache the database's best for `ttl_s` (default `config.best_ttl_s`).

        A reader that fills the cache races a writer that invalidates it; the TTL bounds how
        long a stale entry can live.
        """

    @abstractmethod
    def invalidate_best(self, workload_key: str, target_fp: str) -> None:
        """Drop the cached best; called when a new best lands in the database."""

    # -- poison list -------------------------------------------------------------------------

    @abstractmethod
    def report_failure(
        self, workload_key: str, target_fp: str, trace_hash: str, status: str
    ) -> int:
        """Count one crash or hang of a candidate; return how often it has been reported."""

    @abstractmethod
    def poisoned(self, workload_key: str, target_fp: str) -> set[str]:
        """Trace hashes reported `config.poison_after` times or more: skip them fleet-wide."""

    # -- lifetime ----------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release connections; the state itself stays where it is (Redis) or goes (local)."""

    def __enter__(self) -> FleetState:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_failure_status(status: str) -> None:
    """Reject a status that does not count toward the poison list."""
    if status not in FAILURE_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(FAILURE_STATUSES)}")


def check_ttl(ttl_s: float) -> None:
    """Reject a lease or cache TTL that is not positive (Redis would refuse it too)."""
    if not ttl_s > 0:
        raise ValueError(f"a TTL must be positive, got {ttl_s}")


def event_fields(event: Mapping[str, EventValue]) -> dict[str, str]:
    """An event's fields as the strings a stream stores (floats keep their repr)."""
    if not event:
        raise ValueError("an event needs at least one field")
    fields = {}
    for name, value in event.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError(f"event field {name!r} must be str, int or float, not {value!r}")
        fields[str(name)] = value if isinstance(value, str) else repr(value)
    return fields


def mask_fleet_url(url: str) -> str:
    """The URL with its password (user info or `?password=`) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def url_password(url: str) -> str | None:
    """The password a fleet-state URL carries, to scrub it from driver messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    query = dict(parse_qsl(parts.query))
    return parts.password or query.get("password")


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_fleet_state(url: str | None, config: FleetConfig | None = None) -> FleetState:
    """The fleet state named by `url`: None -> in-process, `redis://...` -> Redis.

    Raises FleetStateError for any other URL, and FleetStateUnavailable when the Redis server
    cannot be reached now (one line, password masked).
    """
    if url is None:
        from tunefleet.coordinator.fleet_local import LocalFleetState

        return LocalFleetState(config)
    if url.startswith(REDIS_SCHEMES):
        from tunefleet.coordinator.fleet_redis import RedisFleetState

        return RedisFleetState(url, config)
    raise FleetStateError(
        f"unsupported fleet-state URL {mask_fleet_url(url)!r}: use "
        "redis://[:password@]host:port/db, or leave it out for the in-process state"
    )
