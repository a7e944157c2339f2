"""Channel adapters: each module is ``verify()`` + ``parse()`` plus its ``register()``."""

from __future__ import annotations

from aiohttp import web

from shared.settings import Settings


def mount_channels(app: web.Application, settings: Settings) -> None:
    """Add every channel's routes to the ingress application."""
    from services.ingress.adapters import slack, telegram, whatsapp, widget

    for module in (telegram, slack, whatsapp, widget):
        module.register(app, settings)
