"""Fixtures for commands run as real processes, the way an operator runs them."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest

from shared.events import Topics
from shared.settings import Settings


@pytest.fixture
def cli_env(ingress_settings: Settings, topics: Topics) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "DATABASE_URL": ingress_settings.require_database_url(),
            "KAFKA_BOOTSTRAP_SERVERS": ingress_settings.require_kafka(),
            "SWITCHBOARD_SECRET_KEY": ingress_settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
            "SWITCHBOARD_TOPIC_PREFIX": topics.prefix,
            "SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER": "false",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def tenant(cli_env: dict[str, str]) -> dict[str, str]:
    code, out, err = await run_cli(
        cli_env, "tenants", "create", "--name", "Acme Shoes", "--slug", "acme-shoes"
    )
    assert code == 0, err
    return orjson.loads(out)
