"""The project's error tree, grouped by what the caller does next."""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base class for every error Switchboard raises on purpose."""


class ConfigurationError(SwitchboardError):
    """A setting is missing or wrong; the process cannot start."""


class RetriableError(SwitchboardError):
    """A dependency is unavailable for now; retry later with backoff."""


class DeadLetterError(SwitchboardError):
    """A record can never be processed; send it to the dead-letter topic."""


class RejectError(SwitchboardError):
    """A request is invalid; answer it with a 4xx and change nothing."""

    status: int = 400


class MigrationError(SwitchboardError):
    """The migration files or the migrations table are inconsistent."""


class StackError(SwitchboardError):
    """An embedded component failed to start or stop."""
