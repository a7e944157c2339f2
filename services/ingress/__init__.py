"""Ingress: the HTTP front door that platforms' webhooks reach.

Consumes: HTTP webhooks. Produces: events on the inbound/status/audit topics.
This foundation serves the operational routes; channel adapters mount under
``/webhooks/{channel}/{integration_id}`` and ``/widget/{integration_id}/``.
"""
