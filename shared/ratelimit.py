"""Token buckets per key: a steady rate with bursts, in bounded memory.

Pure and synchronous (the clock is injected), so the ingress can limit widget visitors
and the egress can pace platform API calls with the same code.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter(Generic[K]):
    """One token bucket per key, refilled at ``rate_per_s`` up to ``burst`` tokens.

    Buckets are kept in least-recently-used order. A bucket idle long enough to be full
    again is indistinguishable from a new one and is dropped; past ``max_keys`` the least
    recently used bucket is dropped even if not full (its key then starts afresh).
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._refill_s = burst / rate_per_s
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: K, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key``: 0.0 if granted, else seconds until they would be.

        A refused call takes nothing, so a caller that waits the returned time succeeds.
        """
        if not 0 < cost <= self.burst:
            raise ValueError(f"cost must be in (0, {self.burst}]")
        now = self._clock()
        self._evict_idle(now)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = _Bucket(tokens=self.burst, updated=now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated = now
        self._buckets[key] = bucket  # most recently used at the end
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate_per_s

    def _evict_idle(self, now: float) -> None:
        # Buckets are ordered by last use, so the full (idle) ones are at the front.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated < self._refill_s:
                break
            self._buckets.popitem(last=False)
