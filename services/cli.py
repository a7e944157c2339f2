"""The ``switchboard`` command: one entry point for operators."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from shared.errors import SwitchboardError
from shared.ops import configure_logging
from shared.settings import Settings, get_settings, with_stack_file


def _parse_instances(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        role, sep, count = value.partition("=")
        if not sep or not count.isdigit() or int(count) < 0:
            raise SwitchboardError(f"--instances expects ROLE=N, got {value!r}")
        out[role] = int(count)
    return out


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from services.stack.up import run_up

    return asyncio.run(
        run_up(
            settings,
            data_dir=Path(args.data_dir),
            port=args.port,
            instances=_parse_instances(args.instances),
        )
    )


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrations import MigrationRunner

    runner = MigrationRunner(settings.require_database_url(), settings.sql_dir)

    async def go() -> None:
        if args.status:
            applied = await runner.applied()
            print(f"applied: {sorted(applied)}; latest available: {runner.latest}")
        elif args.down_to is not None:
            print(f"reverted: {await runner.down(args.down_to)}")
        else:
            print(f"applied: {await runner.up(args.to)}")

    asyncio.run(go())
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from shared.events import Topics
    from shared.kafka import ensure_topics

    created = asyncio.run(
        ensure_topics(
            settings.require_kafka(),
            Topics(settings.topic_prefix).all(),
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
        )
    )
    print(f"created: {created}")
    return 0


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from shared.events import schema_export

    if args.action == "check":
        drift = schema_export.drift()
        if drift:
            print(
                f"schemas/ is out of date: {', '.join(drift)}; run `switchboard schemas generate`",
                file=sys.stderr,
            )
            return 1
        print("schemas/ matches the event models")
        return 0
    for path in schema_export.write():
        print(path)
    return 0


def _cmd_ingress(args: argparse.Namespace, settings: Settings) -> int:
    host, port = args.host or settings.http_host, args.port or settings.http_port
    if args.workers > 1:
        from services.ingress.multiprocess import run_workers

        return run_workers(settings, host=host, port=port, workers=args.workers)
    from services.ingress.app import run

    run(settings, host=host, port=port)
    return 0


def _credentials(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, secret = value.partition("=")
        if not sep or not key:
            raise SwitchboardError("--credential expects KEY=VALUE (value not shown)")
        out[key.strip()] = secret
    return out


def _integration_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise SwitchboardError(f"{value!r} is not an integration id") from None


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def operator_session(settings: Settings) -> Any:
    from services.admin import operator_session

    return operator_session(settings, actor_id=_actor())


def _print_result(coro: Any) -> int:
    print(orjson.dumps(asyncio.run(coro)).decode())
    return 0


def _cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    from services.admin import Admin
    from shared.crypto import CredentialCipher
    from shared.integrations import IntegrationStore

    async def go() -> object:
        cipher = CredentialCipher(settings.require_secret_key())
        async with operator_session(settings) as (pool, publisher, actor):
            admin = Admin(IntegrationStore(pool, cipher), publisher, actor_id=actor)
            match (args.command, args.action):
                case ("tenants", "create"):
                    return await admin.create_tenant(args.name, args.slug)
                case ("integrations", "add"):
                    return await admin.add_integration(
                        args.tenant, args.channel, _credentials(args.credential), args.name
                    )
                case ("integrations", "list"):
                    return await admin.list_integrations(args.tenant)
                case ("integrations", "disable"):
                    return await admin.disable(_integration_id(args.id))
                case ("integrations", "rotate"):
                    if not args.credential:
                        raise SwitchboardError("rotate needs at least one --credential KEY=VALUE")
                    return await admin.rotate(
                        _integration_id(args.id), _credentials(args.credential)
                    )
            raise SwitchboardError(f"unknown action {args.action}")

    return _print_result(go())


def _cmd_flows(args: argparse.Namespace, settings: Settings) -> int:
    from services.flows import FlowAdmin, read_definition

    async def go() -> object:
        async with operator_session(settings) as (pool, publisher, actor):
            flows = FlowAdmin(pool, publisher, actor_id=actor)
            match args.action:
                case "import":
                    path = Path(args.file)
                    definition = read_definition(path)
                    name = args.name or str(definition.get("name") or path.stem)
                    return await flows.import_flow(
                        args.tenant, definition, name=name, activate=args.activate
                    )
                case "activate":
                    return await flows.activate(args.tenant, args.name, args.version)
                case "list":
                    return await flows.list(args.tenant)
            raise SwitchboardError(f"unknown action {args.action}")

    return _print_result(go())


def _cmd_conversations(args: argparse.Namespace, settings: Settings) -> int:
    from services.conversations import ConversationAdmin

    try:
        conversation_id = uuid.UUID(args.id)
    except ValueError:
        raise SwitchboardError(f"{args.id!r} is not a conversation id") from None

    async def go() -> object:
        async with operator_session(settings) as (pool, publisher, actor):
            admin = ConversationAdmin(pool, publisher, actor_id=actor)
            match args.action:
                case "show":
                    return await admin.show(conversation_id)
                case "handoff":
                    return await admin.handoff(conversation_id, args.reason)
                case "release":
                    return await admin.release(conversation_id)
                case "send":
                    return await admin.send(conversation_id, args.text)
            raise SwitchboardError(f"unknown action {args.action}")

    return _print_result(go())


def _cmd_knowledge(args: argparse.Namespace, settings: Settings) -> int:
    from services.knowledge_admin import KnowledgeAdmin, api_key_from_env, read_knowledge_file
    from services.workers.agent.knowledge import make_embedder
    from shared.crypto import CredentialCipher

    if (args.command, args.action) == ("kb", "import"):
        read_knowledge_file(Path(args.file))  # a bad file fails before anything connects

    async def go() -> object:
        cipher = CredentialCipher(settings.require_secret_key())
        async with operator_session(settings) as (pool, publisher, actor):
            admin = KnowledgeAdmin(
                pool, publisher, actor_id=actor, cipher=cipher, embedder=make_embedder()
            )
            match (args.command, args.action):
                case ("kb", "import"):
                    return await admin.import_file(args.tenant, Path(args.file))
                case ("kb", "list"):
                    return await admin.list_entries(args.tenant)
                case ("llm", "set"):
                    return await admin.set_llm(
                        args.tenant,
                        base_url=args.base_url,
                        model=args.model,
                        api_key=api_key_from_env(args.api_key_env, dict(os.environ)),
                        system_prompt=args.system_prompt,
                        max_tokens=args.max_tokens,
                        temperature=args.temperature,
                        timeout_s=args.timeout,
                    )
                case ("llm", "off"):
                    return await admin.llm_off(args.tenant)
            raise SwitchboardError(f"unknown action {args.action}")

    return _print_result(go())


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from services.workers import ROLES, load_role
    from services.workers.runtime import RoleSpec, run_members

    if args.role not in ROLES:
        known = ", ".join(sorted(ROLES)) or "none yet"
        raise SwitchboardError(f"unknown worker role {args.role!r} (available: {known})")
    if args.instances < 1:
        raise SwitchboardError("--instances must be at least 1")
    role = load_role(args.role)
    if not isinstance(role, RoleSpec):  # a role with its own consumer (faust): runs itself
        return int(role.run_members(settings, instances=args.instances))
    return run_members(role, settings, instances=args.instances)


def _cmd_partitions(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.partitions import maintain, retention_from

    retention: int | dict[str, int] = (
        args.retention_months if args.retention_months is not None else retention_from(settings)
    )
    report = asyncio.run(
        maintain(
            settings.require_database_url(),
            months_ahead=(
                settings.partitions_months_ahead if args.months_ahead is None else args.months_ahead
            ),
            retention_months=retention,
            archive_schema=args.archive_schema,
        )
    )
    print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from services.workers.audit.verify import run_verify

    report = asyncio.run(run_verify(settings.require_database_url(), tenant=args.tenant))
    print(orjson.dumps(report.as_json()).decode())
    return 0 if report.ok else 1


def _cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from services import dlq
    from shared.events import Topics, utcnow
    from shared.kafka import EventPublisher, create_producer

    topics = Topics(settings.topic_prefix)
    bootstrap = settings.require_kafka()
    selection = dlq.Selection(
        ids=frozenset(dlq.parse_id(v) for v in getattr(args, "id", None) or []),
        source_topic=args.source_topic,
        reason_contains=args.reason_contains,
    )

    async def list_() -> None:
        now = utcnow()
        async for record in dlq.select(bootstrap, topics.dlq, selection, limit=args.limit):
            print(orjson.dumps(dlq.describe(record, now=now)).decode(), flush=True)

    async def replay() -> None:
        if not (selection.ids or args.all or selection.source_topic or selection.reason_contains):
            raise SwitchboardError("replay needs --id P:O, --all, or a filter")
        chosen = [r async for r in dlq.select(bootstrap, topics.dlq, selection, limit=args.limit)]
        missing = selection.ids - {(r.partition, r.offset) for r in chosen}
        if missing:
            names = ", ".join(f"{p}:{o}" for p, o in sorted(missing))
            raise SwitchboardError(f"no dead letter {names} in {topics.dlq}; nothing replayed")
        print(dlq.REPLAY_WARNING, file=sys.stderr)
        producer = create_producer(settings)
        await producer.start()
        try:
            async for sent in dlq.replay(
                chosen,
                producer=producer,
                audit=EventPublisher(producer, topics),
                actor_id=_actor(),
                dlq_topic=topics.dlq,
            ):
                print(orjson.dumps(sent).decode(), flush=True)
        finally:
            await producer.stop()
        print(f"replayed {len(chosen)} record(s)", file=sys.stderr)

    asyncio.run(list_() if args.action == "list" else replay())
    return 0


def _cmd_analytics(args: argparse.Namespace, settings: Settings) -> int:
    from services.workers.analytics.role import refresh_once

    print(orjson.dumps(asyncio.run(refresh_once(settings))).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole gateway in the foreground")
    up.add_argument("--data-dir", default=".data", help="keeps the database between runs")
    up.add_argument("--port", type=int, default=8080, help="HTTP port of the ingress")
    up.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="ROLE=N",
        help="members per worker role (default 1 each)",
    )
    up.set_defaults(func=_cmd_up)

    migrate = sub.add_parser("migrate", help="apply (or revert) database migrations")
    migrate.add_argument("--to", type=int, default=None, help="apply up to this version")
    migrate.add_argument("--down-to", type=int, default=None, help="revert down to this version")
    migrate.add_argument("--status", action="store_true", help="show applied versions")
    migrate.set_defaults(func=_cmd_migrate)

    topics = sub.add_parser("topics", help="create the default topics if missing")
    topics.set_defaults(func=_cmd_topics)

    schemas = sub.add_parser("schemas", help="JSON Schema files generated from the event models")
    schemas.add_argument("action", choices=["generate", "check"])
    schemas.set_defaults(func=_cmd_schemas)

    ingress = sub.add_parser("ingress", help="run the webhook ingress")
    ingress.add_argument("--host", default=None)
    ingress.add_argument("--port", type=int, default=None)
    ingress.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    ingress.set_defaults(func=_cmd_ingress)

    tenants = sub.add_parser("tenants", help="manage tenants (organizations)")
    tenants_sub = tenants.add_subparsers(dest="action", required=True)
    create = tenants_sub.add_parser("create", help="create a tenant; prints its id and slug")
    create.add_argument("--name", required=True)
    create.add_argument("--slug", default=None)
    tenants.set_defaults(func=_cmd_admin)

    integrations = sub.add_parser("integrations", help="manage channel integrations")
    integ_sub = integrations.add_subparsers(dest="action", required=True)
    add = integ_sub.add_parser("add", help="connect a channel; prints its webhook path")
    add.add_argument("--tenant", required=True, help="tenant id or slug")
    add.add_argument(
        "--channel", required=True, choices=["telegram", "slack", "whatsapp", "widget"]
    )
    add.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE")
    add.add_argument("--name", default=None)
    lst = integ_sub.add_parser("list", help="integrations (credential values never shown)")
    lst.add_argument("--tenant", default=None)
    disable = integ_sub.add_parser("disable", help="stop accepting an integration's webhooks")
    disable.add_argument("id")
    rotate = integ_sub.add_parser("rotate", help="replace some credentials")
    rotate.add_argument("id")
    rotate.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE")
    integrations.set_defaults(func=_cmd_admin)

    partitions = sub.add_parser("partitions", help="partition maintenance")
    part_sub = partitions.add_subparsers(dest="action", required=True)
    maintain = part_sub.add_parser(
        "maintain",
        help="create partitions ahead, drain default partitions, archive old months; "
        "prints a JSON report (run as the table owner, DATABASE_URL)",
    )
    maintain.add_argument("--months-ahead", type=int, default=None)
    maintain.add_argument(
        "--retention-months", type=int, default=None, help="for every table (default: settings)"
    )
    maintain.add_argument("--archive-schema", default="archive")
    partitions.set_defaults(func=_cmd_partitions)

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="walk the hash chains; prints JSON, exits 1 at the first broken row",
    )
    verify.add_argument(
        "--tenant", default=None, help="tenant id or slug, or 'system' (default: every chain)"
    )
    audit.set_defaults(func=_cmd_audit)

    dlq = sub.add_parser("dlq", help="the dead-letter topic: list and replay")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_sub.add_parser("list", help="one JSON object per dead letter (id = P:O)")
    dlq_replay = dlq_sub.add_parser(
        "replay", help="send chosen dead letters back to their source topic (audited)"
    )
    dlq_replay.add_argument("--id", action="append", default=[], metavar="P:O")
    dlq_replay.add_argument("--all", action="store_true", help="every record the filters match")
    for p in (dlq_list, dlq_replay):
        p.add_argument("--source-topic", default=None)
        p.add_argument("--reason-contains", default=None, help="case-insensitive")
        p.add_argument("--limit", type=int, default=None)
    dlq.set_defaults(func=_cmd_dlq)

    analytics = sub.add_parser("analytics", help="analytics tables and rollups")
    analytics_sub = analytics.add_subparsers(dest="action", required=True)
    analytics_sub.add_parser(
        "refresh",
        help="refresh the daily rollup materialized views (concurrently); prints JSON",
    )
    analytics.set_defaults(func=_cmd_analytics)

    flows = sub.add_parser("flows", help="conversation flows: import, activate, list")
    flows_sub = flows.add_subparsers(dest="action", required=True)
    flow_import = flows_sub.add_parser(
        "import", help="validate a flow JSON file and store it as a new version"
    )
    flow_import.add_argument("file")
    flow_import.add_argument("--tenant", required=True, help="tenant id or slug")
    flow_import.add_argument("--name", help="flow name (default: the file's name field or stem)")
    flow_import.add_argument("--activate", action="store_true", help="make it the active flow")
    flow_activate = flows_sub.add_parser("activate", help="make a version the tenant's flow")
    flow_activate.add_argument("name")
    flow_activate.add_argument("--tenant", required=True)
    flow_activate.add_argument("--version", type=int, help="default: the newest")
    flow_list = flows_sub.add_parser("list", help="every version of the tenant's flows")
    flow_list.add_argument("--tenant", required=True)
    flows.set_defaults(func=_cmd_flows)

    conversations = sub.add_parser(
        "conversations", help="human handoff: take over, speak in, give back a conversation"
    )
    conv_sub = conversations.add_subparsers(dest="action", required=True)
    conv_sub.add_parser("show", help="a conversation's status and flow position").add_argument("id")
    conv_handoff = conv_sub.add_parser("handoff", help="silence the bot; a human takes over")
    conv_handoff.add_argument("id")
    conv_handoff.add_argument("--reason")
    conv_sub.add_parser("release", help="give the conversation back to the bot").add_argument("id")
    conv_send = conv_sub.add_parser("send", help="send an operator's message into it")
    conv_send.add_argument("id")
    conv_send.add_argument("text")
    conversations.set_defaults(func=_cmd_conversations)

    kb = sub.add_parser("kb", help="a tenant's knowledge base (FAQ answers)")
    kb_sub = kb.add_subparsers(dest="action", required=True)
    kb_import = kb_sub.add_parser(
        "import",
        help="load Q&A entries from JSON ([{question, answer, tags?, category?}]) or CSV "
        "(question,answer[,tags,category]); the whole file is checked first; re-importing "
        "updates answers by question instead of duplicating (audited)",
    )
    kb_import.add_argument("file")
    kb_import.add_argument("--tenant", required=True, help="tenant id or slug")
    kb_sub.add_parser("list", help="the tenant's entries").add_argument("--tenant", required=True)
    kb.set_defaults(func=_cmd_knowledge)

    llm = sub.add_parser("llm", help="a tenant's LLM (OpenAI-compatible chat completions)")
    llm_sub = llm.add_subparsers(dest="action", required=True)
    llm_set = llm_sub.add_parser("set", help="turn the LLM on for a tenant (audited)")
    llm_set.add_argument("--tenant", required=True, help="tenant id or slug")
    llm_set.add_argument("--base-url", required=True, help="API root, e.g. http://host:8000/v1")
    llm_set.add_argument("--model", required=True)
    llm_set.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the API key"
    )
    llm_set.add_argument("--system-prompt", default=None)
    llm_set.add_argument("--max-tokens", type=int, default=None)
    llm_set.add_argument("--temperature", type=float, default=None)
    llm_set.add_argument("--timeout", type=float, default=None, metavar="S")
    llm_sub.add_parser("off", help="turn it off, forgetting the key (audited)").add_argument(
        "--tenant", required=True
    )
    llm.set_defaults(func=_cmd_knowledge)

    worker = sub.add_parser("worker", help="run one member of a worker role's consumer group")
    worker.add_argument("role")
    worker.add_argument(
        "--instances",
        type=int,
        default=1,
        help="members of the consumer group to run in this process",
    )
    worker.set_defaults(func=_cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        if args.command != "up":  # beside a running `make run`, use its stack
            settings = with_stack_file(
                settings, Path(os.environ.get("SWITCHBOARD_DATA_DIR", ".data"))
            )
        configure_logging(settings.log_level)
        return int(args.func(args, settings))
    except SwitchboardError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
