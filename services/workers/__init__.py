"""Worker roles: one Kafka consumer group each, scaled by running more members.

``ROLES`` maps a role name to its entry point; ``switchboard worker ROLE`` and
``switchboard up`` start them. Roles are added by the persistence, agent, egress,
analytics and audit work; none ships in the foundation.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.settings import Settings

RoleMain = Callable[[Settings], None]

#: role name → blocking entry point that runs one consumer-group member until SIGTERM.
ROLES: dict[str, RoleMain] = {}
