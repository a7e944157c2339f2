"""Topic names (prefix configurable) and which topic each event type travels on."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events.models import Envelope


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

    def all(self) -> tuple[str, ...]:
        """Every topic the stack creates at start."""
        return (self.inbound, self.outbound, self.status, self.recovery, self.audit, self.dlq)

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
