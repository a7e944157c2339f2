"""What the analytics role takes from a message event: pure functions, no I/O.

Two aggregates are derived from the inbound and outbound topics:

* message counts per (tenant, channel, direction) and one-minute window of the
  platform's ``sent_at``, each message counted once (edits and redeliveries are not
  new messages);
* the first response of a conversation: the earliest outbound message at or after
  its earliest inbound message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import orjson

from shared.events import MessageInbound, MessageOutbound

Direction = Literal["inbound", "outbound"]

#: Width of a counting window (the table is documented as one-minute windows).
WINDOW_S = 60.0
#: Outbound times kept per conversation while they precede its known first inbound.
EARLY_OUTBOUNDS_KEPT = 8


@dataclass(frozen=True, slots=True)
class CountedMessage:
    """One message as the counter sees it, small enough to travel on the repartition topic."""

    tenant_id: str
    channel: str
    direction: Direction
    identity: str  # stable per message: a redelivery or replay has the same one
    sent_at: float  # epoch seconds, the platform's timestamp

    @property
    def key(self) -> str:
        """The counting key; the repartition topic is keyed by it so one member owns it."""
        return f"{self.tenant_id}|{self.channel}|{self.direction}"

    def dumps(self) -> bytes:
        return orjson.dumps(
            [self.tenant_id, self.channel, self.direction, self.identity, self.sent_at]
        )

    @classmethod
    def loads(cls, data: bytes) -> CountedMessage:
        tenant_id, channel, direction, identity, sent_at = orjson.loads(data)
        return cls(tenant_id, channel, direction, identity, float(sent_at))


def counted(event: MessageInbound | MessageOutbound) -> CountedMessage | None:
    """The message to count, or None for an edit (it changes a message, it is not one)."""
    if isinstance(event, MessageInbound):
        if event.edited_at is not None:
            return None
        direction: Direction = "inbound"
        identity = f"in|{event.integration_id}|{event.external_id}"
    else:
        direction = "outbound"
        identity = f"out|{event.integration_id}|{event.message_id}"
    return CountedMessage(
        str(event.tenant_id), event.channel, direction, identity, event.sent_at.timestamp()
    )


def conversation_key(event: MessageInbound | MessageOutbound) -> str:
    """The first-response key: tenant, integration and the platform's conversation."""
    return f"{event.tenant_id}|{event.integration_id}|{event.conversation_key}"


def split_conversation_key(key: str) -> tuple[str, str, str]:
    tenant_id, integration_id, conversation = key.split("|", 2)
    return tenant_id, integration_id, conversation


@dataclass(frozen=True, slots=True)
class Conversation:
    """First-response state of one conversation; times are epoch milliseconds.

    ``first_in`` only moves earlier and ``first_out`` (the earliest outbound at or after
    ``first_in``) only moves earlier too, so writing them with LEAST is idempotent and
    order-independent. ``early`` keeps outbound times seen before ``first_in`` (or
    before any inbound), in case an earlier inbound arrives late.
    """

    channel: str
    first_in: int | None = None
    first_out: int | None = None
    early: tuple[int, ...] = ()

    def with_inbound(self, at: int) -> Conversation:
        if self.first_in is not None and at >= self.first_in:
            return self
        candidates = [t for t in self.early if t >= at]
        if self.first_out is not None:
            candidates.append(self.first_out)
        return replace(
            self,
            first_in=at,
            first_out=min(candidates, default=None),
            early=tuple(t for t in self.early if t < at),
        )

    def with_outbound(self, at: int) -> Conversation:
        if self.first_in is None or at < self.first_in:
            if at in self.early:
                return self
            # The newest are kept: they are the ones closest to a late first inbound.
            return replace(self, early=tuple(sorted((*self.early, at))[-EARLY_OUTBOUNDS_KEPT:]))
        if self.first_out is not None and at >= self.first_out:
            return self
        return replace(self, first_out=at)

    def to_json(self) -> list[object]:
        return [self.channel, self.first_in, self.first_out, list(self.early)]

    @classmethod
    def from_json(cls, value: list[object]) -> Conversation:
        channel, first_in, first_out, early = value
        return cls(str(channel), first_in, first_out, tuple(early))  # type: ignore[arg-type]


def epoch_ms(event: MessageInbound | MessageOutbound) -> int:
    return round(event.sent_at.timestamp() * 1000)
