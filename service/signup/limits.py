"""The sign-up form's rate limits: every window of its three limits in one storage call.

The form is limited per client IP (`HEBDO_SUBSCRIBE_RATE_LIMIT`), per /24 or /64
(`HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT`) and per target address
(`HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT`), each in Flask-Limiter's notation (`30/minute;500/day`),
in the storage Flask-Limiter is given (`HEBDO_RATELIMIT_STORAGE`: Redis when the broker is
Redis, else this process's memory).

Why not three `@limiter.limit` decorators: Flask-Limiter makes one storage round trip per
limit and window, five for the default limits. On Redis those round trips were a third of a
sign-up's time (bench/subscribe.py: 0.53 of the insert-and-commit ceiling with three
decorators, 0.72 with one). Here one Lua script counts the attempt in every window, with the
same fixed-window semantics as Flask-Limiter's default strategy (a counter per window that
expires its length after its first hit; the windows are counted in order and counting stops at
the first one breached). In memory the windows are counted one after the other with the limits
library's own fixed-window strategy.

Redis down: the form fails open to per-process memory limits, logged at WARNING, and tries
Redis again after `RETRY_SECONDS` (not on every request: an unreachable host would make each
sign-up wait for a connection timeout). The keys live under the limits library's prefix
(`LIMITS:LIMITER/hebdo/...`) beside Flask-Limiter's. One script touches several keys:
Redis Cluster is not supported (hebdo only accepts `redis://` URLs).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "hebdo"
# After a Redis failure, how long the memory fallback serves before Redis is tried again.
RETRY_SECONDS = 30.0

# KEYS: one counter per window; ARGV: (amount, expiry in seconds) per window, in order.
# Returns {0, 0} when every window had room, else {position of the first window breached,
# seconds until it resets}. Windows after a breached one are not counted (as Flask-Limiter).
_HIT_WINDOWS = """
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then
    redis.call('EXPIRE', key, ARGV[2 * i])
  end
  if count > tonumber(ARGV[2 * i - 1]) then
    return {i, redis.call('TTL', key)}
  end
end
return {0, 0}
"""


@dataclass(frozen=True)
class Window:
    """One window of one limit, for one client, network or address."""

    scope: str  # "signup-ip", "signup-network", "signup-address"
    key: str
    limit: RateLimitItem

    def storage_key(self) -> str:
        return self.limit.key_for(KEY_PREFIX, self.scope, self.key)


@dataclass(frozen=True)
class Breach:
    """The window an attempt exceeded, and when it may be tried again."""

    scope: str
    limit: RateLimitItem
    retry_after: int


@lru_cache(maxsize=64)
def _parsed(notation: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(notation))


def windows(limits: list[tuple[str, str, str]]) -> list[Window]:
    """The windows of (scope, key, notation) limits, in the order given; a limit's windows
    shortest first, so a burst is turned away by its minute window before its day fills."""
    found: list[Window] = []
    for scope, key, notation in limits:
        items = sorted(_parsed(notation), key=lambda item: item.get_expiry())
        found.extend(Window(scope, key, item) for item in items)
    return found


class SignupLimits:
    """Counts sign-up attempts; one per app (`app.extensions["hebdo.signup_limits"]`)."""

    def __init__(self, storage: Storage) -> None:
        self._redis = storage if isinstance(storage, RedisStorage) else None
        self._script = (
            self._redis.get_connection().register_script(_HIT_WINDOWS.encode())
            if self._redis
            else None
        )
        self._memory = FixedWindowRateLimiter(storage if self._redis is None else MemoryStorage())
        self._redis_down_until = 0.0
        self._lock = threading.Lock()

    def hit(self, attempt: list[Window]) -> Breach | None:
        """Count one attempt in every window; the first window it breaches, or None."""
        if not attempt:
            return None
        if self._script is not None and time.monotonic() >= self._redis_down_until:
            try:
                return self._hit_redis(attempt)
            except RedisError as exc:
                self._redis_failed(exc)
        return self._hit_memory(attempt)

    def _hit_redis(self, attempt: list[Window]) -> Breach | None:
        assert self._redis is not None and self._script is not None
        keys = [self._redis.prefixed_key(w.storage_key()) for w in attempt]
        args: list[int] = []
        for w in attempt:
            args += [w.limit.amount, w.limit.get_expiry()]
        position, ttl = self._script(keys=keys, args=args)
        if self._redis_down_until:
            with self._lock:
                self._redis_down_until = 0.0
            log.info("sign-up rate limits: Redis is back, limits shared again")
        if not position:
            return None
        breached = attempt[int(position) - 1]
        return Breach(breached.scope, breached.limit, max(1, int(ttl)))

    def _hit_memory(self, attempt: list[Window]) -> Breach | None:
        for w in attempt:
            if not self._memory.hit(w.limit, KEY_PREFIX, w.scope, w.key):
                stats = self._memory.get_window_stats(w.limit, KEY_PREFIX, w.scope, w.key)
                return Breach(w.scope, w.limit, max(1, int(stats.reset_time - time.time()) + 1))
        return None

    def _redis_failed(self, exc: Exception) -> None:
        with self._lock:
            first = self._redis_down_until == 0.0
            self._redis_down_until = time.monotonic() + RETRY_SECONDS
        if first:
            log.warning(
                "sign-up rate limits: Redis storage unreachable (%s); failing open to "
                "per-process memory limits, Redis retried every %d s",
                type(exc).__name__,
                RETRY_SECONDS,
            )


def install(extensions: dict[str, Any], storage_uri: str) -> SignupLimits:
    """Give an app its sign-up limits, in the storage at `storage_uri` (redis:// or memory://).

    Its own storage object, not Flask-Limiter's: that one is held by the module-wide
    `limiter` and replaced by each app it is initialised for."""
    storage = storage_from_string(storage_uri)
    assert isinstance(storage, Storage)  # not the asyncio flavour (async+redis://)
    limits = extensions["hebdo.signup_limits"] = SignupLimits(storage)
    return limits
