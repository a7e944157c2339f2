"""Switchboard services: the CLI, the embedded stack, ingress and worker roles."""
