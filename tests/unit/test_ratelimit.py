"""The keyed token bucket, driven by a fake clock."""

from __future__ import annotations

import pytest

from shared.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_burst_then_refused_with_the_wait(clock: FakeClock) -> None:
    limiter = RateLimiter[str](rate_per_s=0.5, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(2.0)
    clock.advance(1.0)
    assert limiter.acquire("a") == pytest.approx(1.0)  # a refused call takes nothing
    clock.advance(1.0)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(2.0)


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter[tuple[str, str]](rate_per_s=1, burst=1, clock=clock)
    assert limiter.acquire(("i", "v1")) == 0.0
    assert limiter.acquire(("i", "v1")) > 0
    assert limiter.acquire(("i", "v2")) == 0.0


def test_refill_is_capped_at_burst(clock: FakeClock) -> None:
    limiter = RateLimiter[str](rate_per_s=10, burst=2, clock=clock)
    limiter.acquire("a")
    clock.advance(3600)
    assert [limiter.acquire("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.acquire("a") > 0


def test_cost_above_one_and_invalid_cost(clock: FakeClock) -> None:
    limiter = RateLimiter[str](rate_per_s=1, burst=5, clock=clock)
    assert limiter.acquire("a", cost=4) == 0.0
    assert limiter.acquire("a", cost=3) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        limiter.acquire("a", cost=6)
    with pytest.raises(ValueError):
        limiter.acquire("a", cost=0)


def test_idle_buckets_are_evicted(clock: FakeClock) -> None:
    limiter = RateLimiter[str](rate_per_s=1, burst=2, clock=clock)
    limiter.acquire("old")
    clock.advance(1.0)
    limiter.acquire("recent")
    assert len(limiter) == 2
    clock.advance(1.5)  # "old" is full again (2.5 s idle), "recent" is not (1.5 s)
    limiter.acquire("new")
    assert len(limiter) == 2
    # "recent" kept its state: one token spent, 1.5 s of refill → capped at 2, so the
    # bucket is full but was not idle long enough to be dropped yet.
    assert limiter.acquire("recent") == 0.0


def test_memory_is_bounded_by_max_keys(clock: FakeClock) -> None:
    limiter = RateLimiter[int](rate_per_s=0.001, burst=1, clock=clock, max_keys=100)
    for visitor in range(1000):
        assert limiter.acquire(visitor) == 0.0
    assert len(limiter) == 100
    # The most recent keys keep their (empty) buckets; the oldest were dropped.
    assert limiter.acquire(999) > 0
    assert limiter.acquire(0) == 0.0


def test_a_used_key_is_not_evicted_for_capacity(clock: FakeClock) -> None:
    limiter = RateLimiter[str](rate_per_s=0.001, burst=1, clock=clock, max_keys=2)
    limiter.acquire("a")
    limiter.acquire("b")
    assert limiter.acquire("b") > 0  # existing key: nothing dropped
    assert len(limiter) == 2
    assert limiter.acquire("a") > 0


@pytest.mark.parametrize("kwargs", [{"rate_per_s": 0, "burst": 1}, {"rate_per_s": 1, "burst": 0.5}])
def test_invalid_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter[str](**kwargs)
