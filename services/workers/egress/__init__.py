"""Egress building blocks: one reply to one platform, paced, with a typed outcome.

``open_clients(settings)`` gives an :class:`EgressClients` whose ``send(message,
integration)`` returns :data:`Outcome` (``Delivered`` / ``Retry`` / ``Permanent``);
:class:`EgressLimits` paces calls per platform. The consumer role that uses them
(retry topics, status events, dead letters) lives elsewhere.
"""

from services.workers.egress.clients import EgressClients, open_clients
from services.workers.egress.outcome import Delivered, Outcome, Permanent, Retry
from services.workers.egress.ratelimits import EgressLimits

__all__ = [
    "Delivered",
    "EgressClients",
    "EgressLimits",
    "Outcome",
    "Permanent",
    "Retry",
    "open_clients",
]
