"""The ``analytics`` role: message counts per minute and first-response times, by faust.

Public surface: :data:`ANALYTICS` (what the role registry points at), ``run_members``
(what ``switchboard worker analytics`` runs) and ``refresh_once`` (what
``switchboard analytics refresh`` runs). Modules are imported lazily by the registry,
so importing this package does not import faust.
"""

from __future__ import annotations

__all__ = ["ANALYTICS", "refresh_once", "run_members"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from services.workers.analytics import role

        return getattr(role, name)
    raise AttributeError(name)
