"""The agent's pure core: conversation flows (definition, validation, engine, intents).

No database and no Kafka here: the agent role loads a validated :class:`Flow`, keeps a
:class:`State` per conversation, and calls :func:`step` for each inbound message.
"""

from services.workers.agent.engine import start, step
from services.workers.agent.expressions import ExpressionError, compile_expression
from services.workers.agent.flow import Flow, FlowInvalid, FlowReport, lint_flow, validate_flow
from services.workers.agent.intents import (
    EmbeddingMatcher,
    IntentMatcher,
    LexicalMatcher,
    embeddings_available,
    make_matcher,
)
from services.workers.agent.nodes import Intent
from services.workers.agent.state import (
    Action,
    End,
    Handoff,
    KnowledgeFallback,
    Reply,
    State,
    StepResult,
    UserInput,
    new_state,
    resume,
)

__all__ = [
    "Action",
    "EmbeddingMatcher",
    "End",
    "ExpressionError",
    "Flow",
    "FlowInvalid",
    "FlowReport",
    "Handoff",
    "Intent",
    "IntentMatcher",
    "KnowledgeFallback",
    "LexicalMatcher",
    "Reply",
    "State",
    "StepResult",
    "UserInput",
    "compile_expression",
    "embeddings_available",
    "lint_flow",
    "make_matcher",
    "new_state",
    "resume",
    "start",
    "step",
    "validate_flow",
]
