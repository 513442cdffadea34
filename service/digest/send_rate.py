"""The global send rate (HEBDO_SEND_RATE): one schedule of send slots shared by every worker.

Generic cell rate algorithm: a single "next free slot" time is kept where all
workers see it (a Redis key when the broker is Redis, else a lock file in the
data folder, which covers the one-machine embedded mode). Each message reserves
the next slot and sleeps until it. Redis computes with its own clock, so
workers on machines with skewed clocks still share one pace.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import redis

from service.config import Settings

log = logging.getLogger(__name__)

_KEY = "hebdo:send-rate:next-slot"
# KEYS[1]: next free slot (µs); ARGV[1]: µs per message. Returns µs to wait before sending.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local step = tonumber(ARGV[1])
-- Kept a minute past the last reserved slot, however far ahead that is.
local ttl = math.floor((slot + step - now) / 1000) + 60000
redis.call('SET', KEYS[1], tostring(slot + step), 'PX', ttl)
return slot - now
"""


class SendRate(Protocol):
    def reserve(self) -> float:
        """Reserve the next send slot; return the seconds to wait before using it."""


class Unlimited:
    def reserve(self) -> float:
        return 0.0


class RedisRate:
    """The shared schedule in Redis; without Redis, this process paces itself alone.

    When Redis cannot be reached, each process keeps to rate / `processes` (the
    processes of its own worker) for 10 s before trying Redis again, so an outage
    costs neither a 2 s timeout per message nor a burst. Workers on other machines
    pace themselves the same way, so the total can exceed the rate by that factor.
    """

    RETRY_SECONDS = 10.0

    def __init__(self, url: str, rate: float, processes: int = 1) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.step = round(1_000_000 / rate)
        self.script = self.client.register_script(_RESERVE)
        self.local_step = self.step * max(processes, 1) / 1_000_000
        self.local_next = 0.0
        self.down_until = 0.0

    def reserve(self) -> float:
        if time.monotonic() >= self.down_until:
            try:
                return int(self.script(keys=[_KEY], args=[self.step])) / 1_000_000
            except redis.RedisError as exc:
                log.warning(
                    "send rate: Redis unavailable (%s), pacing this process alone for %.0f s",
                    type(exc).__name__,
                    self.RETRY_SECONDS,
                )
                self.down_until = time.monotonic() + self.RETRY_SECONDS
        now = time.monotonic()
        slot = max(self.local_next, now)
        self.local_next = slot + self.local_step
        return slot - now


class FileRate:
    def __init__(self, path: Path, rate: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.step = 1.0 / rate

    def reserve(self) -> float:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0)
            now = time.time()
            try:
                slot = max(float(raw.decode() or 0), now)
            except ValueError:
                slot = now
            os.pwrite(fd, f"{slot + self.step:<32.6f}".encode(), 0)
            return slot - now
        finally:
            os.close(fd)


def send_rate(settings: Settings) -> SendRate:
    if settings.send_rate <= 0:
        return Unlimited()
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisRate(settings.broker_url, settings.send_rate, settings.worker_concurrency)
    return FileRate(settings.data_dir / "send-rate", settings.send_rate)
