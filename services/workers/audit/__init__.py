"""Audit role: audit events into ``audit_logs``, one append-only hash chain per tenant.

``role.AUDIT`` consumes the audit topic; ``chain`` defines what each row's hash covers;
``verify`` walks the chains (``switchboard audit verify``) and reports the first break.
"""
