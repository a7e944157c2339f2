"""`switchboard ingress --workers N`: N processes share one port and one metrics view."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import psutil
import pytest
from aiohttp import ClientSession
from telegram import Chat, Message, Update, User

from services.stack.processes import free_port
from shared.events import Topics
from shared.settings import Settings

pytestmark = pytest.mark.e2e


async def test_two_ingress_processes_serve_one_port(
    ingress_settings: Settings, topics: Topics, make_integration, tmp_path
) -> None:
    bot = await make_integration("telegram", {"bot_token": "1:x", "secret_token": "tok"})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "DATABASE_URL": ingress_settings.require_database_url(),
            "KAFKA_BOOTSTRAP_SERVERS": ingress_settings.require_kafka(),
            "SWITCHBOARD_SECRET_KEY": ingress_settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
            "SWITCHBOARD_TOPIC_PREFIX": topics.prefix,
            "SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER": "false",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "ingress", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                await asyncio.sleep(0.2)
            children = [
                c
                for c in psutil.Process(proc.pid).children()
                if "multiprocessing" in " ".join(c.cmdline())
                and "resource_tracker" not in " ".join(c.cmdline())
            ]
            assert len(children) == 2

            for i in range(10):
                msg = Message(
                    message_id=i,
                    date=datetime.now(UTC),
                    chat=Chat(id=5, type=Chat.PRIVATE),
                    from_user=User(id=5, is_bot=False, first_name="L"),
                    text="hi",
                )
                body = orjson.dumps(Update(update_id=i, message=msg).to_dict())
                async with http.post(
                    f"{base}/webhooks/telegram/{bot.id}",
                    data=body,
                    headers={"X-Telegram-Bot-Api-Secret-Token": "tok"},
                ) as resp:
                    assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
        accepted = re.search(
            r'switchboard_ingress_requests_total\{channel="telegram",outcome="accepted"\} (\S+)',
            text,
        )
        assert accepted and float(accepted.group(1)) == 10.0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
