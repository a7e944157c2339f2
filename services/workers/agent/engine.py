"""The flow engine: a pure function from (flow, state, message) to (state, replies, actions).

One step: a handed-off conversation stays silent; an idle-expired or ended one starts
afresh. Global actions (keywords, whole words, case-insensitive) go first; then
max_turns; then the node waiting for input consumes the message; then non-input nodes
run until the next node that waits, or an end or handoff. A message nothing handles
becomes a ``KnowledgeFallback`` action. Each step visits a bounded number of nodes, so
a loop the validator did not see ends the conversation instead of spinning.
"""

from __future__ import annotations

import copy
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.workers.agent import nodes as n
from services.workers.agent import validators
from services.workers.agent.checks import collect_validation
from services.workers.agent.flow import Flow, GlobalAction
from services.workers.agent.intents import IntentMatcher
from services.workers.agent.state import (
    Action,
    Awaiting,
    End,
    EndReason,
    Handoff,
    KnowledgeFallback,
    Reply,
    State,
    StepResult,
    UserInput,
    new_state,
)
from services.workers.agent.text import contains_phrase, normalize, render

__all__ = [
    "Action",
    "End",
    "Handoff",
    "KnowledgeFallback",
    "Reply",
    "State",
    "StepResult",
    "UserInput",
    "new_state",
    "start",
    "step",
]

DEFAULT_INVALID_CHOICE = "Please choose one of the options."
_PRIORITY = {"critical": 0, "high": 1}


def start(flow: Flow, *, now: datetime) -> StepResult:
    """Run a new conversation from its start node without a message (a proactive greeting)."""
    run = _Run(flow, new_state(flow), UserInput(), None, now)
    run.turns, run.last_activity = 0, now
    run.goto(flow.start_node)
    return run.result()


def step(
    flow: Flow, state: State, user_input: UserInput, *, intents: IntentMatcher, now: datetime
) -> StepResult:
    """Process one user message."""
    return _Run(flow, state, user_input, intents, now).step()


class _Run:
    """The mutable working copy of one step; ``result()`` freezes it into a StepResult."""

    def __init__(
        self,
        flow: Flow,
        state: State,
        user_input: UserInput,
        intents: IntentMatcher | None,
        now: datetime,
    ) -> None:
        self.flow, self.state, self.now = flow, state, now
        self.input, self.intents = user_input, intents
        self.text = (user_input.text or "").strip()
        self.node_id = state.current_node
        self.variables = copy.deepcopy(state.variables)
        self.turns = state.turn_count
        self.handed_off, self.ended = state.handed_off, state.ended
        self.awaiting: Awaiting | None = state.awaiting
        self.retries = state.retries
        self.last_activity = state.last_activity
        self.replies: list[Reply] = []
        self.actions: list[Action] = []
        self.intent: str | None = None
        self.confidence: float | None = None
        self.budget = 2 * len(flow.nodes) + 8

    # -- the step ----------------------------------------------------------------------

    def step(self) -> StepResult:
        if self.handed_off:
            return StepResult(state=self.state)  # a human has the conversation
        if self.ended or self.expired() or (self.node_id and not self.flow.node(self.node_id)):
            self.reset()
        self.turns += 1
        self.last_activity = self.now
        action = self.global_action()
        max_turns = self.flow.global_settings.max_turns
        if action is not None:
            if action.clear_context:
                self.variables, self.turns = new_state(self.flow).variables, 0
            self.goto(action.target)
        elif max_turns is not None and self.turns > max_turns:
            self.turns = 0
            fallback = self.flow.global_settings.fallback_node
            if fallback:
                self.goto(fallback)
            else:
                self.end(self.node_id, "max_turns")
        elif self.node_id is None:
            self.goto(self.flow.start_node)
        else:
            self.consume()
        return self.result()

    def expired(self) -> bool:
        timeout = self.flow.global_settings.timeout
        if timeout is None or self.last_activity is None:
            return False
        return (self.now - self.last_activity).total_seconds() > timeout

    def reset(self) -> None:
        fresh = new_state(self.flow)
        self.node_id, self.variables, self.turns = None, fresh.variables, 0
        self.ended, self.awaiting, self.retries = False, None, 0

    def global_action(self) -> GlobalAction | None:
        if not self.text:
            return None
        actions = sorted(
            self.flow.global_actions.values(), key=lambda a: _PRIORITY.get(a.priority or "", 2)
        )
        for action in actions:
            if contains_phrase(self.text, action.keywords) and all(
                self.named_condition(c) for c in action.conditions
            ):
                return action
        return None

    def result(self) -> StepResult:
        state = State(
            current_node=self.node_id,
            variables=self.variables,
            turn_count=self.turns,
            handed_off=self.handed_off,
            ended=self.ended,
            awaiting=self.awaiting,
            retries=self.retries,
            last_activity=self.last_activity,
        )
        return StepResult(
            state=state,
            replies=tuple(self.replies),
            actions=tuple(self.actions),
            intent=self.intent,
            confidence=self.confidence,
        )

    # -- consuming the message at the node that waits ------------------------------------

    def consume(self) -> None:
        node = self.flow.node(self.node_id or "")
        if isinstance(node, n.QuickReplyNode):
            self.consume_choice(node)
        elif isinstance(node, n.AiIntentNode):
            self.consume_intent(node)
        elif isinstance(node, n.CollectNode):
            self.consume_answer(node)
        else:  # not waiting (a stale state): begin again
            self.goto(self.flow.start_node)

    def consume_choice(self, node: n.QuickReplyNode) -> None:
        cfg = node.config
        option = _match_option(cfg.options, self.input.payload, self.text)
        if option is not None:
            if cfg.variable:
                self.variables[cfg.variable] = option.payload
            self.follow(node, option.target or self.route(node))
        elif cfg.allow_free_text and self.text:
            if cfg.variable:
                self.variables[cfg.variable] = self.text
            self.unhandled(node, cfg.fallback_action)
        elif cfg.max_retries is not None and self.retries >= cfg.max_retries:
            self.unhandled(node, cfg.fallback_action)
        else:
            self.retries += 1
            text = self.render(cfg.invalid_message or DEFAULT_INVALID_CHOICE)
            self.replies.append(Reply(text=text, quick_replies=_buttons(node)))

    def consume_intent(self, node: n.AiIntentNode) -> None:
        cfg = node.config
        by_name = {i.name: i for i in cfg.intents}
        name, confidence = (None, 0.0)
        if self.text and self.intents is not None:
            name, confidence = self.intents.match(self.text, cfg.intents)
        self.confidence = confidence
        if name is None or name not in by_name or confidence < cfg.confidence_threshold:
            name = cfg.fallback_intent if cfg.fallback_intent in by_name else None
            if name is None:
                self.unhandled(node, cfg.fallback_intent)
                return
        self.intent = name
        if cfg.variable:
            self.variables[cfg.variable] = name
        self.follow(node, by_name[name].target_node or self.route(node))

    def consume_answer(self, node: n.CollectNode) -> None:
        cfg = node.config
        kind, pattern = collect_validation(node, self.flow.variables)
        try:
            value = validators.check(kind, self.text, pattern=pattern)
        except validators.Invalid as exc:
            if cfg.max_retries is not None and self.retries >= cfg.max_retries:
                self.unhandled(node, cfg.fallback_node)
                return
            self.retries += 1
            custom = getattr(cfg.validation, "message", None) or cfg.error_message
            self.replies.append(Reply(text=self.render(custom) if custom else str(exc)))
            return
        self.variables[cfg.variable or ""] = value
        self.follow(node, self.route(node))

    def follow(self, node: n.Node, target: str | None) -> None:
        """Go on to ``target``, or to the global fallback when no connection matched."""
        fallback = self.flow.global_settings.fallback_node
        if target is not None:
            self.goto(target)
        elif fallback:
            self.goto(fallback)
        else:
            self.end(node.id, "dead_end")

    def unhandled(self, node: n.Node, node_fallback: str | None) -> None:
        """The message matched nothing here: node fallback, flow fallback, knowledge base."""
        fallback = self.flow.global_settings.fallback_node
        if node_fallback and self.flow.node(node_fallback):
            self.goto(node_fallback)
        elif fallback and fallback != node.id:
            self.goto(fallback)
        elif self.text:
            self.actions.append(KnowledgeFallback(text=self.text))
        else:
            self.prompt(node)

    # -- running nodes until one waits -------------------------------------------------

    def goto(self, target: str) -> None:
        self.node_id, self.retries, self.awaiting = target, 0, None
        while self.budget > 0:
            self.budget -= 1
            node = self.flow.node(self.node_id or "")
            if node is None:
                self.end(self.node_id, "dead_end")
                return
            if node.type in n.INPUT_TYPES:
                self.prompt(node)
                self.awaiting = _awaiting(node)
                return
            if isinstance(node, n.HandoffNode):
                self.say(node.config.message)
                self.actions.append(
                    Handoff(node=node.id, reason=node.config.reason, priority=node.config.priority)
                )
                self.handed_off = True
                return
            if isinstance(node, n.EndNode):
                self.say(node.config.message)
                self.end(node.id, "completed")
                return
            if isinstance(node, n.MessageNode):
                self.say(node.config.message)
            elif isinstance(node, n.KnowledgeNode):
                self.say(node.config.message)
                if self.text:
                    self.actions.append(KnowledgeFallback(text=self.text))
            nxt = self.route(node)
            fallback = self.flow.global_settings.fallback_node
            if nxt is None and fallback and fallback != node.id:
                nxt = fallback
            if nxt is None:
                self.end(node.id, "dead_end")
                return
            self.node_id = nxt
        # Bounded: a cycle of nodes that never wait would otherwise spin forever.
        self.replies.clear()
        self.end(self.node_id, "loop")

    def end(self, node_id: str | None, reason: EndReason) -> None:
        self.actions.append(End(node=node_id, reason=reason))
        self.ended, self.awaiting = True, None

    def prompt(self, node: n.Node) -> None:
        if isinstance(node, n.QuickReplyNode):
            text = self.render(node.config.message)
            self.replies.append(Reply(text=text, quick_replies=_buttons(node)))
        else:
            self.say(getattr(node.config, "message", None))

    def say(self, template: str | None) -> None:
        if template:
            self.replies.append(Reply(text=self.render(template)))

    def render(self, template: str) -> str:
        return render(template, self.lookup())

    # -- conditions ----------------------------------------------------------------------

    def route(self, node: n.Node) -> str | None:
        lookup = self.lookup()
        for conn in node.connections:
            if self.flow.expression(conn.condition).evaluate(lookup):
                return conn.target
        return None

    def named_condition(self, name: str, active: frozenset[str] = frozenset()) -> bool:
        cond = self.flow.conditions.get(name)
        if cond is None or name in active:
            return False
        lookup = self.lookup(cond.timezone, active | {name})
        return self.flow.expression(cond.expression).evaluate(lookup)

    def lookup(
        self, timezone: str | None = None, active: frozenset[str] = frozenset()
    ) -> Callable[[str], Any]:
        tz = timezone or self.flow.global_settings.timezone
        local = self.now.astimezone(zoneinfo.ZoneInfo(tz) if tz else UTC)
        builtins = {
            "hour": local.hour,
            "minute": local.minute,
            "day_of_week": local.isoweekday(),
            "date": local.date().isoformat(),
            "turn_count": self.turns,
            "input": self.text,
        }

        def get(name: str) -> Any:
            if name in self.variables:
                return self.variables[name]
            if name in self.flow.variables:
                return self.flow.variables[name].default
            if name in self.flow.conditions:
                return self.named_condition(name, active)
            return builtins.get(name)

        return get


def _awaiting(node: n.Node) -> Awaiting:
    if isinstance(node, n.QuickReplyNode):
        return "choice_or_text" if node.config.allow_free_text else "choice"
    return "intent" if isinstance(node, n.AiIntentNode) else "answer"


def _buttons(node: n.QuickReplyNode) -> tuple[tuple[str, str], ...]:
    return tuple((o.text, o.payload) for o in node.config.options)


def _match_option(options: list[n.Option], payload: str | None, text: str) -> n.Option | None:
    """The option pressed (by payload) or typed (its title, its value, or its number)."""
    if payload:
        for option in options:
            if option.payload == payload:
                return option
    said = normalize(text or payload or "")
    if not said:
        return None
    for option in options:
        if said in (normalize(option.text), normalize(option.payload)):
            return option
    if said.isdigit() and 1 <= int(said) <= len(options):
        return options[int(said) - 1]
    return None
