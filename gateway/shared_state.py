"""State the nodes of a site share: token buckets (rate limits) and greylisting triplets.

With ``[redis] url`` set, every node counts in one Redis (redis-py's asyncio client, each
operation one Lua script run atomically by Redis, on Redis's clock so that nodes with
skewed clocks agree). Without it, each worker counts in memory (bounded, oldest forgotten
first): right for one node. When Redis fails, a node falls back to its own counts for
``[redis] retry`` seconds, says so (log, ``mailmoat_shared_state_fallbacks_total``,
``mailmoat_up{part="redis"}``) and never refuses or delays mail for it: fail open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from gateway.config import RedisConfig

log = logging.getLogger(__name__)

# Entries a worker keeps in memory per kind; beyond it the least recently used go first.
LOCAL_ENTRIES = 100_000
PASSED = -1.0  # a greylisting triplet that has passed (in LocalState)
T = TypeVar("T")


def failures() -> tuple[type[Exception], ...]:
    """What a Redis that is down, slow or confused raises (timeouts are OSError's).

    redis-py is imported only where Redis is configured: it costs every worker 16 MiB.
    """
    from redis.exceptions import RedisError

    return (RedisError, OSError)


# KEYS[1]: the bucket. ARGV: tokens per second, burst. 1 when a token was taken, else 0.
TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens, since = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, since = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - since) * rate)
local taken = 0
if tokens >= 1 then tokens, taken = tokens - 1, 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return taken
"""

# KEYS[1]: the triplet. ARGV: delay, retry window, pass ttl (seconds). Seconds left to wait
# (0: passes). The value is the first attempt's time, or 'p' once a retry came in time.
GREYLIST = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local delay, window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local seen = redis.call('GET', KEYS[1])
if seen == 'p' then
  redis.call('EXPIRE', KEYS[1], ttl)
  return 0
end
if not seen then
  redis.call('SET', KEYS[1], tostring(now), 'EX', window)
  return math.ceil(delay)
end
local wait = tonumber(seen) + delay - now
if wait <= 0 then
  redis.call('SET', KEYS[1], 'p', 'EX', ttl)
  return 0
end
return math.ceil(wait)
"""


# KEYS: per key a counter, then its set of members (a HyperLogLog). ARGV: the lifetime
# (seconds, from the first count) and the member. Each is counted once; returns the largest
# count and the largest number of distinct members.
COUNT = """
local most, distinct = 0, 0
for i = 1, #KEYS, 2 do
  local n = redis.call('INCR', KEYS[i])
  redis.call('PFADD', KEYS[i + 1], ARGV[2])
  if n == 1 then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1]))
    redis.call('EXPIRE', KEYS[i + 1], tonumber(ARGV[1]))
  end
  if n > most then most = n end
  local d = redis.call('PFCOUNT', KEYS[i + 1])
  if d > distinct then distinct = d end
end
return {most, distinct}
"""
# In memory: distinct members remembered per key (bulk.min_senders is at most this, kept as
# 32-bit hashes), and counters kept (16 per message text): at most about 40 MB a worker.
MEMBERS = 16
COUNTERS = 50_000


class State(Protocol):
    """What rate limits and greylisting ask of the shared state."""

    async def take(self, key: str, per_second: float, burst: int) -> bool:
        """Take one token from the bucket ``key``; False when it is empty."""
        ...

    async def greylist(self, key: str, delay: float, window: float, ttl: float) -> int:
        """Seconds the triplet ``key`` must still wait; 0 when it passes."""
        ...

    async def count(self, keys: list[str], member: str, ttl: float) -> tuple[int, int]:
        """Count one more on each key, and ``member`` among its members (forgotten ``ttl``
        seconds after the first); the largest count and number of distinct members."""
        ...


class LocalState:
    """One worker's counts, in memory: exact on one process, bounded in size."""

    def __init__(self, entries: int = LOCAL_ENTRIES) -> None:
        self.entries = entries
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.triplets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # first/expiry
        self.counters: OrderedDict[str, tuple[int, float, set[int]]] = OrderedDict()

    def _keep(
        self, table: OrderedDict[str, Any], key: str, value: Any, limit: int | None = None
    ) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > min(self.entries, limit or self.entries):
            table.popitem(last=False)

    async def take(self, key: str, per_second: float, burst: int) -> bool:
        now = time.monotonic()
        tokens, since = self.buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - since) * per_second)
        taken = tokens >= 1
        self._keep(self.buckets, key, (tokens - 1 if taken else tokens, now))
        return taken

    async def count(self, keys: list[str], member: str, ttl: float) -> tuple[int, int]:
        now, most, distinct = time.time(), 0, 0
        for key in keys:
            n, expires, members = self.counters.get(key, (0, now + ttl, set()))
            if expires <= now:
                n, expires, members = 0, now + ttl, set()
            if len(members) < MEMBERS:
                members.add(zlib.crc32(member.encode()))
            self._keep(self.counters, key, (n + 1, expires, members), COUNTERS)
            most, distinct = max(most, n + 1), max(distinct, len(members))
        return most, distinct

    async def greylist(self, key: str, delay: float, window: float, ttl: float) -> int:
        now = time.time()
        seen, expires = self.triplets.get(key, (0.0, 0.0))
        if expires <= now:  # never seen, or forgotten
            self._keep(self.triplets, key, (now, now + window))
            return math.ceil(delay)
        if seen == PASSED:
            self._keep(self.triplets, key, (PASSED, now + ttl))
            return 0
        wait = seen + delay - now
        if wait <= 0:
            self._keep(self.triplets, key, (PASSED, now + ttl))
            return 0
        return math.ceil(wait)


class RedisState:
    """The site's counts in Redis: one Lua script per operation."""

    def __init__(self, config: RedisConfig) -> None:
        from redis.asyncio import Redis

        self.prefix = config.prefix
        self.client: Any = Redis.from_url(
            config.url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry_on_timeout=False,
        )
        self.take_script = self.client.register_script(TAKE)
        self.greylist_script = self.client.register_script(GREYLIST)
        self.count_script = self.client.register_script(COUNT)

    async def take(self, key: str, per_second: float, burst: int) -> bool:
        taken = await self.take_script(keys=[f"{self.prefix}rl:{key}"], args=[per_second, burst])
        return bool(int(taken))

    async def greylist(self, key: str, delay: float, window: float, ttl: float) -> int:
        keys = [f"{self.prefix}gl:{key}"]
        return int(await self.greylist_script(keys=keys, args=[delay, int(window), int(ttl)]))

    async def count(self, keys: list[str], member: str, ttl: float) -> tuple[int, int]:
        named = [f"{self.prefix}{kind}:{key}" for key in keys for kind in ("n", "m")]
        most, distinct = await self.count_script(keys=named, args=[max(1, int(ttl)), member])
        return int(most), int(distinct)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def aclose(self) -> None:
        await self.client.aclose()


class SharedState:
    """Redis when configured and answering, this worker's own counts otherwise (fail open)."""

    def __init__(
        self, config: RedisConfig, on_fallback: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self.local = LocalState()
        self.redis = RedisState(config) if config.url else None
        self.down_until = 0.0
        self.last_error = ""
        self.on_fallback = on_fallback  # called with the operation's name at each fallback

    def _shared(self) -> RedisState | None:
        return (
            self.redis if self.redis is not None and time.monotonic() >= self.down_until else None
        )

    def _failed(self, op: str, exc: Exception) -> None:
        if not self.last_error:
            log.warning(
                "Redis at %s failed (%s): rate limits and greylisting count per node for %gs",
                self.config.url, exc, self.config.retry,
            )  # fmt: skip
        self.last_error = str(exc) or type(exc).__name__
        self.down_until = time.monotonic() + self.config.retry
        if self.on_fallback is not None:
            self.on_fallback(op)

    async def _run(self, op: str, call: Callable[[State], Awaitable[T]]) -> T:
        redis = self._shared()
        if redis is not None:
            try:
                async with asyncio.timeout(self.config.timeout * 2):
                    answer = await call(redis)
            except failures() as exc:  # fail open, visibly
                self._failed(op, exc)
            else:
                if self.last_error:
                    log.warning("Redis at %s answers again: shared counts resume", self.config.url)
                    self.last_error = ""
                return answer
        elif self.redis is not None and self.on_fallback is not None:
            self.on_fallback(op)
        return await call(self.local)

    async def take(self, key: str, per_second: float, burst: int) -> bool:
        return await self._run("ratelimit", lambda s: s.take(key, per_second, burst))

    async def greylist(self, key: str, delay: float, window: float, ttl: float) -> int:
        return await self._run("greylist", lambda s: s.greylist(key, delay, window, ttl))

    async def count(self, keys: list[str], member: str, ttl: float) -> tuple[int, int]:
        return await self._run("count", lambda s: s.count(keys, member, ttl))

    async def problem(self) -> str | None:
        """Why Redis is not in use (for /readyz's mailmoat_up), or None."""
        if self.redis is None:
            return None
        try:
            async with asyncio.timeout(self.config.timeout * 2):
                await self.redis.ping()
        except failures() as exc:
            return f"Redis at {self.config.url}: {exc or type(exc).__name__}"
        return None

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
