"""Helpers for the flow tests: the demo flow, small flows built inline, a chat driver."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.demo import DEMO_FLOW
from services.workers.agent import (
    Flow,
    Intent,
    LexicalMatcher,
    StepResult,
    UserInput,
    new_state,
    step,
    validate_flow,
)
from services.workers.agent.intents import IntentMatcher

# A Wednesday, 10:00 in New York: inside the demo flow's business hours.
T0 = datetime(2025, 1, 8, 15, 0, tzinfo=UTC)


def demo_definition() -> dict[str, Any]:
    return json.loads(DEMO_FLOW.read_text())


@pytest.fixture
def demo() -> Flow:
    return validate_flow(demo_definition())


def msg(node_id: str, text: str, target: str | None = None) -> dict[str, Any]:
    """A message node definition."""
    conns = [{"target": target}] if target else []
    return {"id": node_id, "type": "message", "config": {"message": text}, "connections": conns}


def definition(*nodes: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A flow definition starting at the first node."""
    return {"start_node": nodes[0]["id"], "nodes": list(nodes), **top}


class FixedMatcher:
    """A fake matcher: fixed (intent, confidence) answers per text."""

    def __init__(self, answers: dict[str, tuple[str | None, float]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def match(self, text: str, intents: Sequence[Intent]) -> tuple[str | None, float]:
        self.calls.append(text)
        return self.answers.get(text, (None, 0.0))


class Chat:
    """Drives one conversation through ``step``, keeping its state between messages."""

    def __init__(self, flow: Flow, *, matcher: IntentMatcher | None = None) -> None:
        self.flow = flow
        self.matcher = matcher or LexicalMatcher()
        self.state = new_state(flow)
        self.now = T0

    def say(
        self, text: str | None = None, *, payload: str | None = None, after: float = 1.0
    ) -> StepResult:
        self.now += timedelta(seconds=after)
        result = step(
            self.flow,
            self.state,
            UserInput(text=text, payload=payload),
            intents=self.matcher,
            now=self.now,
        )
        self.state = result.state
        return result


def texts(result: StepResult) -> list[str]:
    return [r.text for r in result.replies]
