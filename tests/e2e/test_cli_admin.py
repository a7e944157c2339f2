"""Operators' CLI for tenants and integrations, run as a real process."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest

from shared.events import AuditEvent, Topics
from shared.settings import Settings
from tests.conftest import Infra
from tests.e2e.conftest import run_cli
from tests.support import read_topic

pytestmark = pytest.mark.e2e

BOT_TOKEN = "123456:AAE-very-secret-bot-token"


async def test_tenant_and_integration_lifecycle(
    cli_env: dict[str, str],
    ingress_settings: Settings,
    topics: Topics,
    infra: Infra,
    admin_url_for,
) -> None:
    code, out, err = await run_cli(cli_env, "tenants", "create", "--name", "Acme Shoes")
    assert code == 0, err
    tenant = orjson.loads(out)
    assert tenant["slug"] == "acme-shoes" and uuid.UUID(tenant["id"])

    code, out, err = await run_cli(
        cli_env,
        "integrations",
        "add",
        "--tenant",
        "acme-shoes",
        "--channel",
        "telegram",
        "--credential",
        f"bot_token={BOT_TOKEN}",
        "--credential",
        "secret_token=hook-secret",
    )
    assert code == 0, err
    added = orjson.loads(out)
    assert added["channel"] == "telegram"
    assert added["webhook_path"] == f"/webhooks/telegram/{added['id']}"
    assert BOT_TOKEN not in out + err

    code, out, _ = await run_cli(cli_env, "integrations", "list", "--tenant", tenant["id"])
    [listed] = orjson.loads(out)
    assert listed["credential_keys"] == ["bot_token", "secret_token"]
    assert BOT_TOKEN not in out and "hook-secret" not in out

    code, out, err = await run_cli(
        cli_env, "integrations", "rotate", added["id"], "--credential", "secret_token=new-secret"
    )
    assert code == 0, err
    code, out, err = await run_cli(cli_env, "integrations", "disable", added["id"])
    assert code == 0 and orjson.loads(out)["status"] == "disabled"

    # Stored encrypted: the token is nowhere in the row.
    conn = await asyncpg.connect(admin_url_for(ingress_settings.require_database_url()))
    try:
        blob = await conn.fetchval(
            "SELECT credentials_encrypted FROM channel_integrations WHERE id = $1",
            uuid.UUID(added["id"]),
        )
    finally:
        await conn.close()
    assert BOT_TOKEN.encode() not in bytes(blob) and b"new-secret" not in bytes(blob)

    audit = await read_topic(infra.bootstrap, topics.audit, expect=4)
    assert [e.action for e in audit if isinstance(e, AuditEvent)] == [
        "tenant.created",
        "integration.created",
        "integration.rotated",
        "integration.disabled",
    ]
    assert audit[2].metadata["rotated_keys"] == ["secret_token"]
    assert "new-secret" not in orjson.dumps([e.model_dump(mode="json") for e in audit]).decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "integrations",
                "add",
                "--tenant",
                "nobody",
                "--channel",
                "slack",
                "--credential",
                "signing_secret=x",
                "--credential",
                "bot_token=y",
            ],
            "no tenant",
        ),
        (
            [
                "integrations",
                "add",
                "--tenant",
                "T",
                "--channel",
                "whatsapp",
                "--credential",
                "app_secret=topsecret",
            ],
            "needs credential(s): verify_token",
        ),
        (
            [
                "integrations",
                "add",
                "--tenant",
                "T",
                "--channel",
                "telegram",
                "--credential",
                "bot_token=1",
                "--credential",
                "secret_token=2",
                "--credential",
                "password=hunter2",
            ],
            "does not take credential(s): password",
        ),
        (["integrations", "disable", "not-a-uuid"], "not an integration id"),
        (["tenants", "create", "--name", "X", "--slug", "Bad Slug!"], "slug"),
    ],
)
async def test_bad_input_is_a_clear_error_and_changes_nothing(
    cli_env: dict[str, str], args: list[str], message: str
) -> None:
    code, out, _ = await run_cli(
        cli_env, "tenants", "create", "--name", "T corp", "--slug", "t-corp"
    )
    if "T" in args:
        args = [a if a != "T" else orjson.loads(out)["id"] for a in args]
    code, out, err = await run_cli(cli_env, *args)
    assert code == 2
    assert message in err
    assert "topsecret" not in err and "hunter2" not in err
    assert "Traceback" not in err
    code, out, _ = await run_cli(cli_env, "integrations", "list", "--tenant", "t-corp")
    assert (code, orjson.loads(out)) == (0, [])
