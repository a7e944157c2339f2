"""What the engine reads and returns: per-conversation state, input, replies, actions.

``State`` is stored per conversation as JSON (``to_json`` / ``from_json``); everything
else lives for one step.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.workers.agent.flow import Flow

# What the current node waits for: a button, a button or free text, a message whose
# intent routes it, or an answer to validate and store.
Awaiting = Literal["choice", "choice_or_text", "intent", "answer"]
EndReason = Literal["completed", "max_turns", "dead_end", "loop"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class State(_Frozen):
    """One conversation's position in its flow; ``current_node`` is None before the start."""

    current_node: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    turn_count: int = Field(default=0, ge=0)
    handed_off: bool = False
    ended: bool = False
    awaiting: Awaiting | None = None
    retries: int = Field(default=0, ge=0, description="Invalid answers at the current node.")
    last_activity: AwareDatetime | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        return cls.model_validate(data)


def new_state(flow: Flow) -> State:
    """A conversation that has not started, its variables at their defaults."""
    defaults = {
        name: copy.deepcopy(var.default)
        for name, var in flow.variables.items()
        if var.default is not None
    }
    return State(variables=defaults)


def resume(state: State) -> State:
    """Give a handed-off conversation back to the bot; the next message starts the flow."""
    return state.model_copy(
        update={"handed_off": False, "ended": False, "current_node": None, "awaiting": None}
    )


class UserInput(_Frozen):
    """An inbound message: its text, and the payload of a pressed button if any."""

    text: str | None = None
    payload: str | None = None


class Reply(_Frozen):
    """A message to send; ``quick_replies`` are (title, payload) buttons."""

    text: str
    quick_replies: tuple[tuple[str, str], ...] = ()


class Handoff(_Frozen):
    """Give the conversation to a human (the bot stays silent until ``resume``)."""

    kind: Literal["handoff"] = "handoff"
    node: str
    reason: str | None = None
    priority: str | None = None


class End(_Frozen):
    """The conversation ended: at an end node, after max_turns, a dead end or a loop."""

    kind: Literal["end"] = "end"
    node: str | None = None
    reason: EndReason = "completed"


class KnowledgeFallback(_Frozen):
    """Nothing in the flow answers this message: search the knowledge base for it."""

    kind: Literal["knowledge_fallback"] = "knowledge_fallback"
    text: str


Action = Handoff | End | KnowledgeFallback


class StepResult(_Frozen):
    """The new state to store, the replies to send, the actions for the agent to take."""

    state: State
    replies: tuple[Reply, ...] = ()
    actions: tuple[Action, ...] = ()
    intent: str | None = Field(default=None, description="Intent matched this step, if any.")
    confidence: float | None = None
