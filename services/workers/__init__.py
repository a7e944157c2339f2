"""Worker roles: one Kafka consumer group each (``switchboard-<role>``), scaled by members.

``switchboard worker ROLE [--instances N]`` runs members of one role; ``switchboard up``
runs every role listed here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.workers.runtime import RoleSpec

#: role name → "module:attribute" of its RoleSpec (imported only when that role runs).
ROLES: dict[str, str] = {
    "persister": "services.workers.persister.role:PERSISTER",
    "recovery-persister": "services.workers.persister.recovery:RECOVERY_PERSISTER",
    "audit": "services.workers.audit.role:AUDIT",
    "agent": "services.workers.agent.role:AGENT",
    # These run their own consumers: not a RoleSpec but an object with run_members().
    "analytics": "services.workers.analytics.role:ANALYTICS",  # faust
    "egress": "services.workers.egress.role:EGRESS",  # outbound + one loop per retry tier
}


def load_role(name: str) -> RoleSpec:
    """The RoleSpec of a role, by name."""
    module, _, attr = ROLES[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
