"""Pure parts of the ingress: the integration cache and redelivery memory."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.ingress.pipeline import RecentlyPublished
from services.ingress.registry import IntegrationCache
from shared.errors import RejectError, RetriableError
from shared.integrations import Integration, validate_credentials


def _integration(status: str = "active") -> Integration:
    return Integration(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        channel="slack",
        name="x",
        status=status,
        credentials={"signing_secret": "s", "bot_token": "b"},
    )


class FakeSource:
    def __init__(self, value: Integration | None) -> None:
        self.value = value
        self.calls = 0
        self.fail = False

    async def get(self, integration_id: uuid.UUID) -> Integration | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RetriableError("db down")
        return self.value


async def test_cache_serves_within_ttl_and_refreshes_after() -> None:
    first = _integration()
    source = FakeSource(first)
    cache = IntegrationCache(source, ttl_s=0.2)
    results = await asyncio.gather(*(cache.get(first.id) for _ in range(5)))
    assert results == [first] * 5 and source.calls == 1
    source.value = _integration(status="disabled")
    assert await cache.get(first.id) == first
    await asyncio.sleep(0.25)
    assert (await cache.get(first.id)).status == "disabled"  # type: ignore[union-attr]


async def test_cache_serves_stale_entries_while_the_database_is_down() -> None:
    value = _integration()
    source = FakeSource(value)
    cache = IntegrationCache(source, ttl_s=0.05)
    assert await cache.get(value.id) == value
    source.fail = True
    await asyncio.sleep(0.06)
    assert await cache.get(value.id) == value
    with pytest.raises(RetriableError):
        await cache.get(uuid.uuid4())


def test_recently_published_is_bounded() -> None:
    recent = RecentlyPublished(capacity=3)
    ids = [uuid.uuid4() for _ in range(4)]
    for i in ids:
        recent.add(i)
    assert not recent.seen(ids[0])
    assert all(recent.seen(i) for i in ids[1:])


def test_integration_repr_hides_credentials() -> None:
    integration = _integration()
    assert "signing_secret" not in repr(integration)
    assert "credentials" not in integration.model_dump()


def test_widget_origins_must_be_origins() -> None:
    with pytest.raises(RejectError, match="not scheme://host"):
        validate_credentials("widget", {"allowed_origins": "https://ok.example, javascript:x"})
    assert validate_credentials("widget", {"allowed_origins": " https://ok.example "}) == {
        "allowed_origins": "https://ok.example"
    }
