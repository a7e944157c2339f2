"""PostgreSQL access: pools, tenant-scoped transactions and migrations."""

from shared.db.migrations import Migration, MigrationRunner, discover
from shared.db.pool import APP_ROLE, WORKER_ROLE, create_pool, tenant_transaction

__all__ = [
    "APP_ROLE",
    "WORKER_ROLE",
    "Migration",
    "MigrationRunner",
    "create_pool",
    "discover",
    "tenant_transaction",
]
