"""Shared gateway state: Redis when it answers, this process's memory when it does not.

Redis holds the response cache, the prefix→replica affinity index and the rate-limit buckets,
so every gateway process sees the same state. Any Redis failure degrades to the local store
with a warning and a metric; it never fails a request. The redis client reconnects by itself
on the next command once Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV rate/s, burst, now (s). Returns {allowed (0/1), wait in ms}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


class LocalStore:
    """An LRU of bytes with TTLs, and token buckets, in this process."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._buckets: dict[str, tuple[float, float]] = {}

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._data[key] = (value, time.monotonic() + ttl_s)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def set_nx(self, key: str, value: bytes, ttl_s: float) -> bytes | None:
        current = self.get(key)
        if current is not None:
            return current
        self.set(key, value, ttl_s)
        return None

    def token_bucket(self, key: str, rate: float, burst: int) -> tuple[bool, float]:
        now = time.monotonic()
        tokens, ts = self._buckets.get(key, (float(burst), now))
        tokens = min(burst, tokens + (now - ts) * rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return True, 0.0
        self._buckets[key] = (tokens, now)
        return False, (1 - tokens) / rate


class SharedStore:
    def __init__(
        self,
        redis_url: str | None,
        prefix: str,
        timeout_s: float,
        local_entries: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.prefix = prefix
        self.local = LocalStore(local_entries)
        self.metrics = metrics
        self.redis: aioredis.Redis | None = None
        if redis_url:
            self.redis = aioredis.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                health_check_interval=10,
            )  # fmt: skip
            self._bucket = self.redis.register_script(TOKEN_BUCKET_LUA)
        self._redis_ok = True

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _failed(self, op: str, exc: Exception) -> None:
        self.metrics.redis_errors.inc()
        if self._redis_ok:
            log.warning("Redis %s failed (%s): serving from this process until it is back", op, exc)
        self._redis_ok = False

    def _recovered(self) -> None:
        if not self._redis_ok:
            log.info("Redis is back")
        self._redis_ok = True

    @property
    def shared(self) -> bool:
        """True while state is shared through Redis."""
        return self.redis is not None and self._redis_ok

    async def get(self, key: str) -> bytes | None:
        if self.redis is not None:
            try:
                value = await self.redis.get(key)
                self._recovered()
                return value.encode() if isinstance(value, str) else value
            except (RedisError, OSError) as exc:
                self._failed("GET", exc)
        return self.local.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if self.redis is not None:
            try:
                await self.redis.set(key, value, ex=ttl_s)
                self._recovered()
                return
            except (RedisError, OSError) as exc:
                self._failed("SET", exc)
        self.local.set(key, value, ttl_s)

    async def set_nx(self, key: str, value: bytes, ttl_s: int) -> bytes | None:
        """Store unless present; returns the value already there (None when we stored)."""
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(key, value, ex=ttl_s, nx=True)
                    pipe.get(key)
                    stored, current = await pipe.execute()
                self._recovered()
                return None if stored else current
            except (RedisError, OSError) as exc:
                self._failed("SET NX", exc)
        return self.local.set_nx(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        if self.redis is not None:
            try:
                await self.redis.delete(key)
                self._recovered()
            except (RedisError, OSError) as exc:
                self._failed("DEL", exc)
        self.local._data.pop(key, None)

    async def token_bucket(self, key: str, rate: float, burst: int) -> tuple[bool, float]:
        if self.redis is not None:
            try:
                allowed, wait_ms = await self._bucket(keys=[key], args=[rate, burst, time.time()])
                self._recovered()
                return bool(allowed), float(wait_ms) / 1000
            except (RedisError, OSError) as exc:
                self._failed("token bucket", exc)
        return self.local.token_bucket(key, rate, burst)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
