"""Test infrastructure: one PostgreSQL and one broker per run, a database and topics per test.

With DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS set, those are used instead of the
embedded ones (the URL's user must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from yarl import URL

from services.stack.broker import EmbeddedBroker
from services.stack.postgres import APP_USER, EmbeddedPostgres, install_extensions
from shared.crypto import CredentialCipher
from shared.db.migrations import MigrationRunner
from shared.db.pool import create_pool
from shared.events import Topics
from shared.integrations import Integration, IntegrationStore
from shared.kafka import ensure_topics
from shared.settings import REPO_ROOT, Settings, load_settings
from tests.support import read_topic, unique_slug

SQL_DIR = REPO_ROOT / "sql"


@dataclass(frozen=True)
class Infra:
    """Where the run's PostgreSQL and broker are."""

    admin_url: str  # may create databases
    owner: str  # login that owns test databases and runs migrations
    bootstrap: str
    embedded_broker: bool

    def database_url(self, name: str) -> str:
        url = URL(self.admin_url).with_path(f"/{name}")
        if url.user != self.owner:
            url = url.with_user(self.owner).with_password(None)
        return str(url)


@pytest.fixture(scope="session")
async def infra() -> AsyncIterator[Infra]:
    external_db = os.environ.get("DATABASE_URL")
    external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    postgres = broker = None
    # Not under pytest's basetemp: another pytest run on the machine prunes old basetemps,
    # which would pull the data directory out from under the running PostgreSQL.
    base = Path(tempfile.mkdtemp(prefix="switchboard-tests-"))
    base.chmod(0o755)
    try:
        if external_db:
            admin_url, owner = external_db, URL(external_db).user or "postgres"
        else:
            postgres = EmbeddedPostgres(base, durable=False)
            await postgres.start()
            admin_url, owner = postgres.superuser_url, APP_USER
        if external_kafka:
            bootstrap = external_kafka
        else:
            broker = EmbeddedBroker(base)
            await broker.start()
            bootstrap = broker.bootstrap_servers
        yield Infra(admin_url, owner, bootstrap, embedded_broker=broker is not None)
    finally:
        if broker:
            await broker.stop()
        if postgres:
            await postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


async def create_database(infra: Infra, name: str, *, template: str | None = None) -> str:
    conn = await asyncpg.connect(infra.admin_url)
    try:
        clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{infra.owner}"{clause}')
    finally:
        await conn.close()
    if template is None:
        await install_extensions(str(URL(infra.admin_url).with_path(f"/{name}")))
    return infra.database_url(name)


async def drop_database(infra: Infra, name: str) -> None:
    conn = await asyncpg.connect(infra.admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def migrated_template(infra: Infra) -> AsyncIterator[str]:
    """A fully migrated database that each test's database is copied from."""
    name = f"sb_template_{uuid.uuid4().hex[:8]}"
    url = await create_database(infra, name)
    await MigrationRunner(url, SQL_DIR).up()
    yield name
    await drop_database(infra, name)


@pytest.fixture
async def empty_db(infra: Infra) -> AsyncIterator[str]:
    """A fresh database with no migrations applied; dropped afterwards."""
    name = f"sb_t_{uuid.uuid4().hex[:12]}"
    url = await create_database(infra, name)
    yield url
    await drop_database(infra, name)


@pytest.fixture
async def db_url(infra: Infra, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, fully migrated database for one test."""
    name = f"sb_t_{uuid.uuid4().hex[:12]}"
    url = await create_database(infra, name, template=migrated_template)
    yield url
    await drop_database(infra, name)


@pytest.fixture
def admin_url_for(infra: Infra):
    """Superuser URL of a test database (to bypass RLS or tamper with rows on purpose)."""

    def make(db_url: str) -> str:
        return str(URL(infra.admin_url).with_path(URL(db_url).path))

    return make


@pytest.fixture
async def topics(infra: Infra) -> Topics:
    """The default topic set under a prefix of this test's own."""
    t = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    await ensure_topics(infra.bootstrap, t.all(), partitions=3)
    return t


@pytest.fixture
def settings(infra: Infra, topics: Topics, db_url: str) -> Settings:
    """Settings pointing at this test's database and topics."""
    return load_settings(
        database_url=db_url,
        kafka_bootstrap_servers=infra.bootstrap,
        topic_prefix=topics.prefix,
        topic_partitions=3,
        consumer_group_prefix=f"switchboard-{topics.prefix}",  # groups of this test only
        kafka_idempotent_producer=not infra.embedded_broker,
    )


@pytest.fixture
def secret_key() -> str:
    from shared.crypto import new_key

    return new_key()


@pytest.fixture
def ingress_settings(settings: Settings, secret_key: str) -> Settings:
    """Settings for an ingress under test: this test's DB, topics and a fresh key."""
    return settings.model_copy(
        update={"secret_key": SecretStr(secret_key), "integration_cache_ttl_s": 0.5}
    )


@pytest.fixture
async def store(ingress_settings: Settings) -> AsyncIterator[IntegrationStore]:
    """Direct access to tenants and integrations (the CLI's store)."""
    pool = await create_pool(ingress_settings.require_database_url(), min_size=1, max_size=2)
    yield IntegrationStore(pool, CredentialCipher(ingress_settings.require_secret_key()))
    await pool.close()


@pytest.fixture
def make_integration(store: IntegrationStore):
    """``await make_integration("slack", {...})`` → a new tenant's active Integration."""

    async def make(channel: str, credentials: dict[str, str]) -> Integration:
        tenant = await store.create_tenant("Test tenant", unique_slug())
        return await store.add_integration(tenant, channel, credentials)

    return make


@dataclass
class RunningIngress:
    url: str
    app: web.Application
    settings: Settings
    bootstrap: str
    topics: Topics

    async def events(
        self, topic: str, *, expect: int, timeout: float = 10.0, settle: float = 1.0
    ) -> list:
        return await read_topic(
            self.bootstrap, topic, expect=expect, timeout=timeout, settle=settle
        )


@pytest.fixture
async def ingress(
    ingress_settings: Settings, infra: Infra, topics: Topics
) -> AsyncIterator[RunningIngress]:
    """The real ingress app on a real HTTP port on 127.0.0.1, with this test's DB and topics."""
    from services.ingress.app import create_app

    app = create_app(ingress_settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield RunningIngress(
            str(server.make_url("")).rstrip("/"), app, ingress_settings, infra.bootstrap, topics
        )
    finally:
        await server.close()
