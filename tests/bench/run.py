"""The benchmark harness: each figure next to a baseline measured in the same run.

Results go to ``bench-results.json``: codec, persister (vs COPY and per-row baselines),
agent throughput and webhook-to-reply latency.
Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shared.events import MessageInbound, decode, encode


def _sample_events(n: int) -> list[MessageInbound]:
    tenant, integration = uuid.uuid4(), uuid.uuid4()
    return [
        MessageInbound(
            tenant_id=tenant,
            integration_id=integration,
            channel="telegram",
            conversation_key=f"chat-{i % 100}",
            external_id=f"{i % 100}:{i}",
            sender_id=str(i),
            sender_name="Ada Lovelace",
            text=f"message number {i} with some text",
            sent_at=datetime.now(UTC),
            raw={"update_id": i, "message": {"message_id": i, "text": "x" * 40}},
        )
        for i in range(n)
    ]


def _rate(fn: Callable[[], object], count: int, repeat: int = 3) -> float:
    """Best-of-``repeat`` items per second."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return count / best


def bench_codec(n: int = 20_000) -> dict[str, float]:
    """Wire codec round trip (orjson + validated decode) against stdlib json + validation."""
    events = _sample_events(n)
    wire = [encode(e) for e in events]

    def ours() -> None:
        for e in events:
            encode(e)
        for b in wire:
            decode(b)

    def baseline() -> None:
        for e in events:
            json.dumps(e.model_dump(mode="json")).encode()
        for b in wire:
            MessageInbound.model_validate(json.loads(b))

    ours_rate = _rate(ours, n)
    base_rate = _rate(baseline, n)
    assert orjson.loads(wire[0])["type"] == "message.inbound"
    return {
        "codec_roundtrips_per_s": round(ours_rate),
        "codec_baseline_stdlib_json_per_s": round(base_rate),
        "codec_vs_stdlib_ratio": round(ours_rate / base_rate, 2),
    }


async def _on_the_stack() -> dict[str, float]:
    from tests.bench import agent, e2e, persister
    from tests.bench.stack import bench_stack

    results: dict[str, float] = {}
    async with bench_stack() as (settings, superuser_url):
        results.update(await persister.run(settings, superuser_url))
        await persister.checkpoint(superuser_url)
        results["agent_msgs_per_s"] = round(await agent.agent_rate(settings))
        await persister.checkpoint(superuser_url)
        results.update(await e2e.webhook_to_reply(settings))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    results: dict[str, float] = {}
    results.update(bench_codec())
    results.update(asyncio.run(_on_the_stack()))
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    for key, value in results.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
