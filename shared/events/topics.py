"""Topic names (prefix configurable) and which topic each event type travels on."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events.models import Envelope

#: Egress retry tiers: ``messages.outbound.retry.<n>``, each with its own fixed delay
#: (``SWITCHBOARD_EGRESS_RETRY_DELAYS_S``), so records in one tier fall due in order.
RETRY_TIERS = 3


@dataclass(frozen=True, slots=True)
class Topics:
    """The default topic set under one prefix."""

    prefix: str = "sb."

    @property
    def inbound(self) -> str:
        return f"{self.prefix}messages.inbound"

    @property
    def outbound(self) -> str:
        return f"{self.prefix}messages.outbound"

    @property
    def status(self) -> str:
        return f"{self.prefix}messages.status"

    @property
    def recovery(self) -> str:
        return f"{self.prefix}recovery.events"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit.events"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def outbound_retry(self, tier: int) -> str:
        """The egress retry topic of one delay tier (0 = the shortest delay)."""
        if not 0 <= tier < RETRY_TIERS:
            raise ValueError(f"retry tier must be 0..{RETRY_TIERS - 1}, not {tier}")
        return f"{self.prefix}messages.outbound.retry.{tier}"

    @property
    def widget_replies(self) -> str:
        """Widget replies for whichever ingress process holds the visitor's socket."""
        return f"{self.prefix}widget.replies"

    def all(self) -> tuple[str, ...]:
        """Every topic the stack creates at start."""
        return (
            self.inbound,
            self.outbound,
            self.status,
            self.recovery,
            self.audit,
            self.dlq,
            *(self.outbound_retry(n) for n in range(RETRY_TIERS)),
            self.widget_replies,
        )

    def for_event(self, event: Envelope) -> str:
        """The topic an event is published to."""
        return {
            "message.inbound": self.inbound,
            "message.outbound": self.outbound,
            "message.status": self.status,
            "recovery.event": self.recovery,
            "audit.event": self.audit,
            "dead_letter": self.dlq,
        }[event.type]
