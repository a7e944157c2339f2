"""The demo tenant ``make run`` seeds on a fresh embedded stack, so a newcomer can chat at once.

Seeds (only when the tenant ``demo`` does not exist yet): the tenant, a widget
integration, the support flow in the seed's shape (``support_flow.json``, activated)
and a few knowledge entries (``support_kb.json``). Everything goes through the same
operator code as the CLI, so it is audited like any operator action.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)

DEMO_FLOW = Path(__file__).with_name("support_flow.json")
DEMO_KB = Path(__file__).with_name("support_kb.json")
DEMO_SLUG = "demo"


async def seed_demo(settings: Settings, *, http_url: str) -> str:
    """Seed the demo tenant if missing; the URL of its widget page either way."""
    from services.admin import Admin, operator_session
    from services.flows import FlowAdmin, read_definition
    from services.knowledge_admin import import_knowledge, read_knowledge_file
    from services.workers.agent.knowledge import make_embedder
    from shared.crypto import CredentialCipher
    from shared.integrations import IntegrationStore, NotFound

    cipher = CredentialCipher(settings.require_secret_key())
    async with operator_session(settings, actor_id="system:demo-seed") as (pool, publisher, actor):
        store = IntegrationStore(pool, cipher)
        try:
            tenant = await store.find_tenant(DEMO_SLUG)
        except NotFound:
            tenant = None
        if tenant is None:
            admin = Admin(store, publisher, actor_id=actor)
            created = await admin.create_tenant("Demo shop", DEMO_SLUG)
            await admin.add_integration(
                created["id"], "widget", {"allowed_origins": http_url}, "Demo widget"
            )
            await FlowAdmin(pool, publisher, actor_id=actor).import_flow(
                created["id"], read_definition(DEMO_FLOW), name="support", activate=True
            )
            tenant = await store.find_tenant(DEMO_SLUG)
            async with pool.acquire() as conn:
                await import_knowledge(
                    conn, tenant.id, read_knowledge_file(DEMO_KB), embedder=make_embedder()
                )
            log.info("seeded the demo tenant")
        widgets = [i for i in await store.list(tenant) if i.channel == "widget" and i.active]
    if not widgets:
        return "(the demo tenant has no active widget integration)"
    return f"{http_url}/widget/{widgets[0].id}/"
