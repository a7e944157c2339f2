"""Splitting a persister batch into concurrent write lanes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from services.workers.consumer import Item
from services.workers.persister.role import by_partition
from services.workers.persister.store import partition_of
from shared.events import MessageStatus


def _item(topic: str, partition: int, n: int) -> Item:
    record = ConsumerRecord(topic, partition, n, 0, 0, b"k", b"v", None, 1, 1, ())
    event = MessageStatus(
        tenant_id=uuid.UUID(int=1),
        integration_id=uuid.UUID(int=2),
        channel="telegram",
        conversation_key="c",
        message_id=str(n),
        status="sent",
        status_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    return Item(record, event)


def test_lanes_keep_a_partition_number_together_across_topics_and_keep_order() -> None:
    items = [
        _item("sb.messages.outbound", 0, 1),
        _item("sb.messages.status", 0, 2),
        _item("sb.messages.inbound", 1, 3),
        _item("sb.messages.status", 1, 4),
        _item("sb.messages.inbound", 2, 5),
        _item("sb.messages.outbound", 0, 6),
    ]
    groups = by_partition(items, 2)
    assert len(groups) == 2
    assert sorted(i.record.offset for g in groups for i in g) == [1, 2, 3, 4, 5, 6]
    for group in groups:
        offsets = [i.record.offset for i in group]
        assert offsets == sorted(offsets)  # the batch's order within a lane
    lane_of = {i.record.partition: n for n, g in enumerate(groups) for i in g}
    assert len({(i.record.partition, lane_of[i.record.partition]) for i in items}) == 3
    assert [i.record.offset for i in groups[lane_of[0]] if i.record.partition == 0] == [1, 2, 6]


def test_one_lane_or_one_partition_is_one_group() -> None:
    items = [_item("t", 0, n) for n in range(3)] + [_item("t", 1, 9)]
    assert by_partition(items, 1) == [items]
    assert by_partition(items[:3], 4) == [items[:3]]
    assert by_partition([], 2) == []


def test_partition_names_follow_utc_months() -> None:
    from datetime import timedelta, timezone

    late = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    assert partition_of(late) == "channel_messages_p202611"
    # 01:30 on Dec 1st in UTC+2 is still November in UTC.
    assert partition_of(datetime(2026, 12, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == (
        "channel_messages_p202611"
    )
