"""``switchboard kb ...`` and ``switchboard llm ...`` run as real processes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import orjson
import pytest

from services.demo import DEMO_KB
from services.workers.agent.llm import load_llm_config
from shared.crypto import CredentialCipher
from shared.db.pool import connect
from shared.events import AuditEvent, Topics
from shared.settings import Settings
from tests.conftest import Infra
from tests.e2e.conftest import run_cli
from tests.support import read_topic

pytestmark = pytest.mark.e2e

KB_FILE = DEMO_KB
API_KEY = "sk-live-do-not-print-0123456789abcdef"


async def test_import_reimport_and_update(
    cli_env: dict[str, str], tenant: dict[str, str], tmp_path: Path, infra: Infra, topics: Topics
) -> None:
    code, out, err = await run_cli(cli_env, "kb", "import", str(KB_FILE), "--tenant", "acme-shoes")
    assert code == 0, err
    first = orjson.loads(out)
    assert first["tenant_id"] == tenant["id"]
    assert (first["entries"], first["inserted"], first["updated"], first["unchanged"]) == (
        9,
        9,
        0,
        0,
    )

    code, out, err = await run_cli(cli_env, "kb", "import", str(KB_FILE), "--tenant", tenant["id"])
    assert code == 0, err
    again = orjson.loads(out)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 9)

    # An edited copy: one answer changed (question in other case), one entry added.
    entries = json.loads(KB_FILE.read_text())
    entries[0]["question"] = entries[0]["question"].upper()
    entries[0]["answer"] = "We are open around the clock."
    entries.append({"question": "Do you sell gift cards?", "answer": "Yes, from 10 EUR."})
    edited = tmp_path / "kb.json"
    edited.write_text(json.dumps(entries))
    code, out, err = await run_cli(cli_env, "kb", "import", str(edited), "--tenant", "acme-shoes")
    assert code == 0, err
    third = orjson.loads(out)
    assert (third["inserted"], third["updated"], third["unchanged"]) == (1, 1, 8)

    code, out, err = await run_cli(cli_env, "kb", "list", "--tenant", "acme-shoes")
    assert code == 0, err
    listed = orjson.loads(out)
    assert len(listed) == 10
    by_question = {e["question"].lower(): e for e in listed}
    hours = by_question["what are your opening hours?"]
    assert hours["answer"] == "We are open around the clock."
    assert hours["tags"] == ["hours", "support"] and hours["category"] == "general"
    assert by_question["do you sell gift cards?"]["tags"] == []

    audit = await read_topic(infra.bootstrap, topics.audit, expect=4)
    imports = [e for e in audit if isinstance(e, AuditEvent) and e.action == "kb.imported"]
    assert [(e.metadata["inserted"], e.metadata["updated"]) for e in imports] == [
        (9, 0),
        (0, 0),
        (1, 1),
    ]
    assert {e.tenant_id for e in imports} == {uuid.UUID(tenant["id"])}


async def test_csv_with_and_without_header(
    cli_env: dict[str, str], tenant: dict[str, str], tmp_path: Path
) -> None:
    with_header = tmp_path / "faq.csv"
    with_header.write_text(
        "question,answer,tags,category\n"
        '"Do you ship abroad?","Yes, to the EU, the US and Canada.",shipping;delivery,shipping\n'
        "What sizes do you carry?,EU 35 to 48.,,\n"
    )
    code, out, err = await run_cli(
        cli_env, "kb", "import", str(with_header), "--tenant", "acme-shoes"
    )
    assert code == 0, err
    assert orjson.loads(out)["inserted"] == 2

    no_header = tmp_path / "more.csv"
    no_header.write_text('Is there a store in Berlin?,"Yes: Torstrasse 1, Berlin."\n')
    code, out, err = await run_cli(
        cli_env, "kb", "import", str(no_header), "--tenant", "acme-shoes"
    )
    assert code == 0, err
    assert orjson.loads(out)["inserted"] == 1

    code, out, _ = await run_cli(cli_env, "kb", "list", "--tenant", "acme-shoes")
    entries = {e["question"]: e for e in orjson.loads(out)}
    assert entries["Do you ship abroad?"]["tags"] == ["shipping", "delivery"]
    assert entries["Do you ship abroad?"]["category"] == "shipping"
    assert entries["What sizes do you carry?"]["category"] is None
    assert entries["Is there a store in Berlin?"]["answer"] == "Yes: Torstrasse 1, Berlin."


@pytest.mark.parametrize(
    ("name", "content", "messages"),
    [
        (
            "bad.json",
            json.dumps(
                [
                    {"question": "What are your hours?", "answer": "9 to 5."},
                    {"question": "How do I pay?"},
                    {"question": "  ", "answer": "x"},
                    {"question": "Refunds?", "anwser": "Within 30 days."},
                    {"question": "what are your HOURS?", "answer": "again"},
                    {"question": "Tags?", "answer": "y", "tags": "a,b"},
                ]
            ),
            [
                "bad.json: 5 problems, nothing imported",
                "entry 1: answer is missing",
                "entry 2: question is empty",
                "entry 3: unknown field(s) anwser",
                "entry 4: same question as entry 0",
                "entry 5: tags must be a list of text",
            ],
        ),
        ("broken.json", '[{"question": "a", "answer": "b"},\n  {"question": }]', ["line 2"]),
        ("object.json", '{"question": "a", "answer": "b"}', ["expected a JSON list"]),
        ("empty.json", "[]", ["no entries"]),
        (
            "bad.csv",
            "question,answer\nGood question?,Good answer.\nOnly a question\n"
            'Too,many,columns,here,really\n"Blank answer",""\n',
            [
                "line 3: 1 column(s), expected 2 to 2",
                "line 4: 5 column(s)",
                "line 5: answer is empty",
            ],
        ),
        ("header.csv", "question,reply\nq,a\n", ["line 1: header must name question, answer"]),
    ],
)
async def test_a_bad_file_is_a_clear_error_and_imports_nothing(
    cli_env: dict[str, str],
    tenant: dict[str, str],
    tmp_path: Path,
    name: str,
    content: str,
    messages: list[str],
) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, out, err = await run_cli(cli_env, "kb", "import", str(path), "--tenant", "acme-shoes")
    assert code == 2
    for message in messages:
        assert message in err
    assert "Traceback" not in err
    code, out, _ = await run_cli(cli_env, "kb", "list", "--tenant", "acme-shoes")
    assert (code, orjson.loads(out)) == (0, [])


async def test_unknown_tenant_and_missing_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = await run_cli(cli_env, "kb", "import", str(KB_FILE), "--tenant", "nobody")
    assert code == 2 and "no tenant 'nobody'" in err
    missing = tmp_path / "nope.json"
    code, _, err = await run_cli(cli_env, "kb", "import", str(missing), "--tenant", "nobody")
    assert code == 2 and "cannot read" in err and "Traceback" not in err


async def test_llm_set_and_off(
    cli_env: dict[str, str],
    tenant: dict[str, str],
    ingress_settings: Settings,
    infra: Infra,
    topics: Topics,
) -> None:
    env = cli_env | {"SHOP_LLM_KEY": API_KEY}
    code, out, err = await run_cli(
        env,
        "llm",
        "set",
        "--tenant",
        "acme-shoes",
        "--base-url",
        "http://llm.internal:8000/v1",
        "--model",
        "shop-assistant-7b",
        "--api-key-env",
        "SHOP_LLM_KEY",
        "--system-prompt",
        "You help Acme Shoes customers.",
        "--timeout",
        "8",
    )
    assert code == 0, err
    assert API_KEY not in out + err
    shown = orjson.loads(out)
    assert shown["has_api_key"] is True and shown["timeout_s"] == 8.0

    conn = await connect(ingress_settings.require_database_url())
    try:
        tenant_id = uuid.UUID(tenant["id"])
        raw = await conn.fetchval("SELECT settings::text FROM tenants WHERE id = $1", tenant_id)
        assert API_KEY not in raw and "shop-assistant-7b" in raw
        cipher = CredentialCipher(ingress_settings.require_secret_key())
        config = await load_llm_config(conn, tenant_id, cipher)
        assert config is not None and config.api_key is not None
        assert config.api_key.get_secret_value() == API_KEY
        assert (config.model, config.system_prompt) == (
            "shop-assistant-7b",
            "You help Acme Shoes customers.",
        )

        code, out, err = await run_cli(cli_env, "llm", "off", "--tenant", "acme-shoes")
        assert code == 0, err
        assert orjson.loads(out)["was_enabled"] is True
        assert await load_llm_config(conn, tenant_id, cipher) is None
        raw = await conn.fetchval("SELECT settings::text FROM tenants WHERE id = $1", tenant_id)
        assert "api_key_encrypted" not in raw
    finally:
        await conn.close()

    audit = await read_topic(infra.bootstrap, topics.audit, expect=3)
    actions = [e.action for e in audit if isinstance(e, AuditEvent)]
    assert actions == ["tenant.created", "llm.configured", "llm.disabled"]
    assert API_KEY not in orjson.dumps([e.model_dump(mode="json") for e in audit]).decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-key-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE is not set"),
        (["--base-url", "llm.internal"], "base_url"),
        (["--timeout", "0"], "timeout_s"),
    ],
)
async def test_llm_set_bad_input_changes_nothing(
    cli_env: dict[str, str],
    tenant: dict[str, str],
    ingress_settings: Settings,
    args: list[str],
    message: str,
) -> None:
    base = ["--tenant", "acme-shoes", "--model", "m", "--base-url", "http://h/v1"]
    code, _, err = await run_cli(cli_env, "llm", "set", *base, *args)
    assert code == 2 and message in err and "Traceback" not in err
    conn = await connect(ingress_settings.require_database_url())
    try:
        settings = await conn.fetchval(
            "SELECT settings::text FROM tenants WHERE id = $1", uuid.UUID(tenant["id"])
        )
    finally:
        await conn.close()
    assert settings == "{}"
