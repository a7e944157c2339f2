"""Running one member of a role's consumer group: wiring, ops HTTP, signals, drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from services.dlq import refresh_depth_metric
from services.workers.consumer import ConsumerLoop, Handler
from shared.events import Topics
from shared.kafka import EventPublisher, create_producer
from shared.ops import add_metrics_refresh, add_ops_routes, add_readiness
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSpec:
    """What a role consumes and how it builds its handler from shared resources."""

    name: str
    topics: Callable[[Topics], Sequence[str]]
    handler: Callable[[Settings, EventPublisher], AbstractAsyncContextManager[Handler]]
    #: A role on the path of a chat reply batches with ``reply_linger_ms`` (a person is
    #: waiting), the others with ``worker_linger_ms`` (bigger batches, fewer writes).
    latency_sensitive: bool = False

    def linger_ms(self, settings: Settings) -> int:
        return settings.reply_linger_ms if self.latency_sensitive else settings.worker_linger_ms

    def group_id(self, settings: Settings) -> str:
        return f"{settings.consumer_group_prefix}{self.name}"


def create_consumer(
    settings: Settings, group_id: str, *, fetch_max_wait_ms: int = 500
) -> AIOKafkaConsumer:
    """A consumer that commits by hand, starts from the earliest offset, tolerates rebalances."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.require_kafka(),
        group_id=group_id,
        client_id=f"{settings.kafka_client_id}-{group_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=600_000,
        session_timeout_ms=settings.worker_session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.worker_session_timeout_ms // 5),
        fetch_max_bytes=50 * 1024 * 1024,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


#: Allocations between young-generation collections in a worker (CPython's default: 700).
WORKER_GC_GEN0_THRESHOLD = 50_000


def tune_collector() -> None:
    """Collect the young generation every 50,000 allocations instead of every 700.

    A batch allocates tens of thousands of acyclic objects (records, events, rows) that
    stay alive until it is stored and are then freed by reference counting. With the
    default threshold the collector runs hundreds of times per batch and rescans the
    batches in hand each time: measured, that was three quarters of the persister's
    Python time. Cyclic garbage is still collected, only in bigger steps.
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(WORKER_GC_GEN0_THRESHOLD, gen1, gen2)


async def run_role(
    spec: RoleSpec, settings: Settings, *, stop: asyncio.Event | None = None
) -> None:
    """Consume until ``stop`` is set (or SIGTERM/SIGINT), then drain and commit."""
    stop = stop or asyncio.Event()
    tune_collector()
    topics = Topics(settings.topic_prefix)
    producer = create_producer(settings)
    await producer.start()
    consumer = create_consumer(
        settings,
        spec.group_id(settings),
        # A broker that holds an empty fetch for its whole max wait (Tansu does) would
        # add that wait to every chat reply.
        fetch_max_wait_ms=50 if spec.latency_sensitive else 500,
    )
    publisher = EventPublisher(producer, topics)
    try:
        async with spec.handler(settings, publisher) as handler:
            await consumer.start()
            loop = ConsumerLoop(
                role=spec.name,
                consumer=consumer,
                topics=spec.topics(topics),
                handler=handler,
                dead_letters=publisher,
                batch_size=settings.worker_batch_size,
                linger_ms=spec.linger_ms(settings),
            )
            async with _ops_server(settings, consumer, loop.report_lag):
                task = asyncio.create_task(loop.run())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                loop.stop()  # the loop finishes and commits the batch in hand, then returns
                stopper.cancel()
                await task
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await producer.stop()


@contextlib.asynccontextmanager
async def _ops_server(
    settings: Settings, consumer: AIOKafkaConsumer, report_lag: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    if settings.worker_http_port is None:
        yield
        return
    app = web.Application()
    add_ops_routes(app)

    async def assigned() -> None:
        consumer.assignment()

    add_readiness(app, "kafka", assigned)
    # The dead-letter depth is read from the broker at scrape time (see services.dlq).
    dlq_topic = Topics(settings.topic_prefix).dlq
    add_metrics_refresh(app, lambda: refresh_depth_metric(consumer, dlq_topic))
    add_metrics_refresh(app, report_lag)  # read at scrape time, off the batch path
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.worker_http_port)
    await site.start()
    log.info("ops endpoints on %s", site.name)
    try:
        yield
    finally:
        await runner.cleanup()


MemberMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


def run_instances(member: MemberMain, settings: Settings, *, instances: int = 1) -> int:
    """Blocking: ``instances`` members in this process until SIGTERM/SIGINT.

    Only the first member serves the ops endpoints (they would clash on one port).
    """

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.gather(
            *(
                member(
                    settings.model_copy(
                        update={"worker_http_port": (settings.worker_http_port if n == 0 else None)}
                    ),
                    stop,
                )
                for n in range(instances)
            )
        )

    asyncio.run(go())
    return 0


def run_members(spec: RoleSpec, settings: Settings, *, instances: int = 1) -> int:
    """Blocking: ``instances`` members of a RoleSpec's group until SIGTERM/SIGINT."""
    return run_instances(
        lambda s, stop: run_role(spec, s, stop=stop), settings, instances=instances
    )
