"""``switchboard flows ...`` and ``switchboard conversations ...`` run as real processes."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import orjson
import pytest

from services.demo import DEMO_FLOW
from shared.db.pool import connect
from shared.events import AuditEvent, MessageOutbound, Topics
from shared.settings import Settings
from tests.conftest import Infra
from tests.e2e.conftest import run_cli
from tests.support import read_topic

pytestmark = pytest.mark.e2e


async def test_import_activate_and_roll_back(
    cli_env: dict[str, str], tenant: dict[str, str], tmp_path: Path, infra: Infra, topics: Topics
) -> None:
    code, out, err = await run_cli(
        cli_env, "flows", "import", str(DEMO_FLOW), "--tenant", "acme-shoes", "--activate"
    )
    assert code == 0, err
    first = orjson.loads(out)
    assert (first["name"], first["version"], first["status"]) == ("support_flow", 1, "active")

    second_file = tmp_path / "support_flow.json"
    definition = json.loads(DEMO_FLOW.read_text())
    definition["nodes"][0]["config"]["message"] = "Hi there!"
    second_file.write_text(json.dumps(definition))
    code, out, err = await run_cli(
        cli_env, "flows", "import", str(second_file), "--tenant", "acme-shoes"
    )
    assert code == 0, err
    assert (orjson.loads(out)["version"], orjson.loads(out)["status"]) == (2, "draft")

    code, out, err = await run_cli(
        cli_env, "flows", "activate", "support_flow", "--tenant", "acme-shoes"
    )
    assert code == 0, err
    assert orjson.loads(out)["version"] == 2
    code, out, err = await run_cli(
        cli_env, "flows", "activate", "support_flow", "--tenant", "acme-shoes", "--version", "1"
    )
    assert code == 0, err
    code, out, err = await run_cli(cli_env, "flows", "list", "--tenant", "acme-shoes")
    assert [(f["version"], f["status"]) for f in orjson.loads(out)] == [
        (1, "active"),
        (2, "archived"),
    ]

    audit = await read_topic(infra.bootstrap, topics.audit, expect=5)
    actions = [e.action for e in audit if isinstance(e, AuditEvent)]
    assert actions.count("flow.imported") == 2 and actions.count("flow.activated") == 2


async def test_an_invalid_flow_is_refused_with_every_problem_and_nothing_stored(
    cli_env: dict[str, str], tenant: dict[str, str], tmp_path: Path, ingress_settings: Settings
) -> None:
    definition = json.loads(DEMO_FLOW.read_text())
    broken = copy.deepcopy(definition)
    broken["start_node"] = "nowhere"
    broken["nodes"][0]["connections"][0]["target"] = "missing_node"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    code, out, err = await run_cli(cli_env, "flows", "import", str(path), "--tenant", "acme-shoes")
    assert code == 2 and out == ""
    assert "nowhere" in err and "missing_node" in err and "Traceback" not in err

    path.write_text("{not json")
    code, _, err = await run_cli(cli_env, "flows", "import", str(path), "--tenant", "acme-shoes")
    assert code == 2 and "not valid JSON" in err

    code, _, err = await run_cli(
        cli_env, "flows", "activate", "support_flow", "--tenant", "acme-shoes"
    )
    assert code == 2 and "no flow 'support_flow'" in err

    conn = await connect(ingress_settings.require_database_url())
    try:
        assert await conn.fetchval("SELECT count(*) FROM conversation_flows") == 0
    finally:
        await conn.close()


async def test_operator_takes_over_and_gives_back_a_conversation(
    cli_env: dict[str, str],
    tenant: dict[str, str],
    ingress_settings: Settings,
    infra: Infra,
    topics: Topics,
) -> None:
    code, out, err = await run_cli(
        cli_env,
        "integrations",
        "add",
        "--tenant",
        "acme-shoes",
        "--channel",
        "widget",
        "--credential",
        "allowed_origins=https://shop.example",
    )
    assert code == 0, err
    integration = orjson.loads(out)["id"]
    conn = await connect(ingress_settings.require_database_url())
    try:
        conversation = str(
            await conn.fetchval(
                "INSERT INTO conversations (tenant_id, integration_id, channel, conversation_key,"
                " external_user_id) VALUES ($1, $2, 'widget', 'sess-1', 'visitor-1') RETURNING id",
                uuid.UUID(tenant["id"]),
                uuid.UUID(integration),
            )
        )
        code, out, err = await run_cli(cli_env, "conversations", "handoff", conversation)
        assert code == 0, err
        assert orjson.loads(out)["status"] == "handed_off"
        assert await conn.fetchval("SELECT handed_off FROM conversation_state") is True
        code, out, err = await run_cli(
            cli_env, "conversations", "send", conversation, "Hello, this is Sam."
        )
        assert code == 0, err
        code, out, err = await run_cli(cli_env, "conversations", "release", conversation)
        assert code == 0, err
        code, out, err = await run_cli(cli_env, "conversations", "show", conversation)
        assert orjson.loads(out)["status"] == "open"
        assert await conn.fetchval("SELECT handed_off FROM conversation_state") is False
    finally:
        await conn.close()
    code, _, err = await run_cli(cli_env, "conversations", "send", "not-an-id", "x")
    assert code == 2 and "not a conversation id" in err
    [sent] = await read_topic(infra.bootstrap, topics.outbound, expect=1)
    assert isinstance(sent, MessageOutbound)
    assert (sent.text, sent.origin, sent.recipient_id) == (
        "Hello, this is Sam.",
        "operator",
        "visitor-1",
    )
