"""Pydantic models of a flow's nodes, in the seed's shape (``id``, ``type``, ``config``,
``connections``). Builder-only fields (position, name, delay, typing_indicator, ...)
are kept, not interpreted: every model allows extra keys."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """Frozen, and tolerant of decorative keys a flow builder adds."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Connection(Open):
    """An edge; ``condition`` is an expression, a named condition, or always when absent."""

    target: str
    condition: str | None = None


class Option(Open):
    """A quick-reply button; ``value`` is the payload sent back when pressed."""

    text: str = Field(min_length=1)
    value: str | None = None
    target: str | None = None

    @property
    def payload(self) -> str:
        return self.value or self.text


class Intent(Open):
    """An intent recognised by its examples; routes to ``target_node`` or the node's edges."""

    name: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    target_node: str | None = None


class Validation(Open):
    """How a collected answer is checked: email, phone, number, integer, regex, text."""

    type: str
    pattern: str | None = None
    message: str | None = None


class MessageConfig(Open):
    message: str


class QuickReplyConfig(Open):
    message: str
    options: list[Option] = Field(default_factory=list)
    allow_free_text: bool = False
    # Node id taken when the answer matches no option (free text, or too many retries).
    fallback_action: str | None = None
    variable: str | None = None
    invalid_message: str | None = None
    max_retries: int | None = Field(default=None, ge=0)


class AiIntentConfig(Open):
    message: str | None = None
    intents: list[Intent] = Field(default_factory=list)
    confidence_threshold: float = Field(default=0.7, ge=0, le=1)
    # The name of one of the intents, or a node id, taken below the threshold.
    fallback_intent: str | None = None
    variable: str | None = None


class CollectConfig(Open):
    message: str
    variable: str | None = None
    validation: str | Validation | None = None
    error_message: str | None = None
    max_retries: int | None = Field(default=None, ge=0)
    fallback_node: str | None = None


class RouteConfig(Open):
    """Config of a node that only routes (``condition``)."""


class KnowledgeConfig(Open):
    message: str | None = None


class HandoffConfig(Open):
    message: str | None = None
    reason: str | None = None
    priority: str | None = None


class EndConfig(Open):
    message: str | None = None


class _Node(Open):
    id: str = Field(min_length=1)
    name: str | None = None
    connections: list[Connection] = Field(default_factory=list)


class MessageNode(_Node):
    """Says something, then follows its first matching connection."""

    type: Literal["message"]
    config: MessageConfig


class QuickReplyNode(_Node):
    """Offers buttons and waits for one (or for free text when allowed)."""

    type: Literal["quick_reply"]
    config: QuickReplyConfig


class AiIntentNode(_Node):
    """Waits for a message and routes by the intent it matches."""

    type: Literal["ai_intent"]
    config: AiIntentConfig = Field(default_factory=AiIntentConfig)


class CollectNode(_Node):
    """Asks a question, validates the answer and stores it in a variable."""

    type: Literal["collect"]
    config: CollectConfig


class ConditionNode(_Node):
    """Routes by the first connection whose condition holds."""

    type: Literal["condition"]
    config: RouteConfig = Field(default_factory=RouteConfig)


class KnowledgeNode(_Node):
    """Asks the agent to answer the last message from the knowledge base, then moves on."""

    type: Literal["knowledge"]
    config: KnowledgeConfig = Field(default_factory=KnowledgeConfig)


class HandoffNode(_Node):
    """Hands the conversation to a human; the bot stays silent afterwards."""

    type: Literal["handoff"]
    config: HandoffConfig = Field(default_factory=HandoffConfig)


class EndNode(_Node):
    """Ends the conversation; the next message starts the flow again."""

    type: Literal["end"]
    config: EndConfig = Field(default_factory=EndConfig)


Node = Annotated[
    MessageNode
    | QuickReplyNode
    | AiIntentNode
    | CollectNode
    | ConditionNode
    | KnowledgeNode
    | HandoffNode
    | EndNode,
    Field(discriminator="type"),
]
NODE_TYPES = (
    "message",
    "quick_reply",
    "ai_intent",
    "collect",
    "condition",
    "knowledge",
    "handoff",
    "end",
)
INPUT_TYPES = frozenset({"quick_reply", "ai_intent", "collect"})
TERMINAL_TYPES = frozenset({"handoff", "end"})
