"""The semantic checks behind ``validate_flow``: references, reachability, silent loops.

Unknown names in message templates are errors (the user would read an empty gap);
unknown names in conditions are warnings, because they read as null at run time and
the seed itself tests context (``user.subscription_tier``) that no flow declares.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.workers.agent import nodes as n
from services.workers.agent.expressions import (
    ALWAYS,
    BUILTIN_NAMES,
    ExpressionError,
    compile_expression,
)
from services.workers.agent.graph import cycles, reachable
from services.workers.agent.text import template_names
from services.workers.agent.validators import VALIDATORS

if TYPE_CHECKING:
    from services.workers.agent.flow import _Shell

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a flow, and where."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def node_label(i: int, node_id: str | None) -> str:
    return f"nodes[{i}] {node_id!r}" if node_id else f"nodes[{i}]"


def check_flow(
    shell: _Shell, parsed: Sequence[n.Node | None], raw_ids: Sequence[str | None]
) -> tuple[list[Problem], list[Problem]]:
    """Errors and warnings for a flow whose parts parsed (``None`` for nodes that did not)."""
    c = _Checker(shell, parsed, raw_ids)
    c.run()
    return c.errors, c.warnings


class _Checker:
    def __init__(
        self, shell: _Shell, parsed: Sequence[n.Node | None], raw_ids: Sequence[str | None]
    ) -> None:
        self.shell = shell
        self.parsed = parsed
        self.raw_ids = raw_ids
        self.known = {i for i in raw_ids if i}
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.declared = set(shell.variables) | BUILTIN_NAMES | _stored_variables(parsed)

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def target(self, path: str, what: str, target: str | None) -> None:
        if target is not None and target not in self.known:
            self.error(path, f"{what} targets unknown node {target!r}")

    def run(self) -> None:
        s = self.shell
        if not s.start_node:
            self.error("start_node", "missing start_node")
        else:
            self.target("start_node", "start_node", s.start_node)
        self.target("global_settings", "fallback_node", s.global_settings.fallback_node)
        self.timezone("global_settings.timezone", s.global_settings.timezone)
        self.check_conditions()
        for name, action in s.global_actions.items():
            path = f"global_actions.{name}"
            if not [k for k in action.keywords if k.strip()]:
                self.error(path, "a global action needs at least one keyword")
            self.target(path, "global action", action.target)
            for cond in action.conditions:
                if cond not in s.conditions:
                    self.error(path, f"unknown condition {cond!r}")
        for name in s.variables:
            if not _NAME.fullmatch(name):
                self.error(f"variables.{name}", "a variable name must be an identifier")
        first: dict[str, int] = {}
        for i, node_id in enumerate(self.raw_ids):
            if node_id in first:
                self.error(
                    node_label(i, node_id), f"duplicate node id (see nodes[{first[node_id]}])"
                )
            elif node_id:
                first[node_id] = i
        for i, node in enumerate(self.parsed):
            if node is not None:
                self.check_node(node_label(i, node.id), node)
        if not self.errors:
            self.check_graph()

    def timezone(self, path: str, tz: str | None) -> None:
        if tz is None:
            return
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.error(path, f"unknown timezone {tz!r}")

    def expression(self, path: str, source: str | None) -> None:
        try:
            expr = compile_expression(source)
        except ExpressionError as exc:
            self.error(path, f"condition {source!r} does not parse: {exc}")
            return
        for name in sorted(expr.names - self.declared - set(self.shell.conditions)):
            self.warnings.append(Problem(path, f"{name!r} is not a declared variable (reads null)"))

    def check_conditions(self) -> None:
        refs: dict[str, list[str]] = {}
        for name, cond in self.shell.conditions.items():
            self.expression(f"conditions.{name}", cond.expression)
            self.timezone(f"conditions.{name}.timezone", cond.timezone)
            try:
                names = compile_expression(cond.expression).names
            except ExpressionError:
                names = frozenset()
            refs[name] = [r for r in names if r in self.shell.conditions]
        for loop in cycles(list(refs), refs):
            self.error(f"conditions.{loop[0]}", f"conditions refer to each other: {_arrow(loop)}")

    def template(self, path: str, text: str | None) -> None:
        for name in sorted(template_names(text or "") - self.declared):
            self.error(path, f"template uses unknown variable {name!r}")

    def check_node(self, label: str, node: n.Node) -> None:
        for j, conn in enumerate(node.connections):
            self.target(label, f"connections[{j}]", conn.target)
            self.expression(f"{label}.connections[{j}].condition", conn.condition)
        if node.type in n.TERMINAL_TYPES and node.connections:
            self.error(label, f"a {node.type} node is terminal and cannot have connections")
        if node.type in {"message", "condition", "knowledge"} and not node.connections:
            self.error(label, f"a {node.type} node needs at least one connection")
        for key in ("message", "invalid_message", "error_message"):
            self.template(f"{label}.config.{key}", getattr(node.config, key, None))
        getattr(self, f"check_{node.type}", lambda *_: None)(label, node)

    def check_quick_reply(self, label: str, node: n.QuickReplyNode) -> None:
        cfg = node.config
        if not cfg.options:
            self.error(label, "a quick_reply node needs at least one option")
        seen: set[str] = set()
        for opt in cfg.options:
            self.target(label, f"option {opt.text!r}", opt.target)
            if opt.payload in seen:
                self.error(label, f"option {opt.text!r} repeats value {opt.payload!r}")
            seen.add(opt.payload)
            if opt.target is None and not node.connections:
                self.error(label, f"option {opt.text!r} has no target and the node no connections")
        self.target(label, "fallback_action", cfg.fallback_action)
        self.variable(label, cfg.variable)

    def check_ai_intent(self, label: str, node: n.AiIntentNode) -> None:
        cfg = node.config
        if not cfg.intents:
            self.error(label, "an ai_intent node needs at least one intent")
        names: set[str] = set()
        for intent in cfg.intents:
            if intent.name in names:
                self.error(label, f"intent {intent.name!r} is defined twice")
            names.add(intent.name)
            if not [e for e in intent.examples if e.strip()]:
                self.error(label, f"intent {intent.name!r} has no examples")
            self.target(label, f"intent {intent.name!r}", intent.target_node)
            if intent.target_node is None and not node.connections:
                self.error(label, f"intent {intent.name!r} has no target_node and no connections")
        fb = cfg.fallback_intent
        if fb is not None and fb not in names and fb not in self.known:
            self.error(label, f"fallback_intent {fb!r} is neither an intent nor a node")
        self.variable(label, cfg.variable)

    def check_collect(self, label: str, node: n.CollectNode) -> None:
        cfg = node.config
        if not cfg.variable:
            self.error(label, "collect has no config.variable to store the answer in")
        self.variable(label, cfg.variable)
        kind, pattern = collect_validation(node, self.shell.variables)
        if kind not in VALIDATORS:
            known = ", ".join(sorted(VALIDATORS))
            self.error(label, f"unknown validation {kind!r} (expected one of: {known})")
        elif kind == "regex":
            try:
                re.compile(pattern or "")
                if not pattern:
                    raise re.error("no pattern")
            except re.error as exc:
                self.error(label, f"validation pattern does not compile: {exc}")
        self.target(label, "fallback_node", cfg.fallback_node)
        if not node.connections:
            self.error(label, "collect needs a connection to continue after the answer")

    def variable(self, label: str, name: str | None) -> None:
        if name and not _NAME.fullmatch(name):
            self.error(label, f"variable {name!r} is not an identifier")

    def check_graph(self) -> None:
        s = self.shell
        nodes = [x for x in self.parsed if x is not None]
        edges = {x.id: list(_targets(x, s.global_settings.fallback_node)) for x in nodes}
        roots = [s.start_node or "", *(a.target for a in s.global_actions.values())]
        roots.append(s.global_settings.fallback_node or "")
        seen = reachable(roots, edges)
        for i, x in enumerate(self.parsed):
            if x is not None and x.id not in seen:
                self.error(node_label(i, x.id), "unreachable from start_node or any global action")
        silent = {x.id for x in nodes if x.type not in n.INPUT_TYPES | n.TERMINAL_TYPES}
        silent_edges = {
            x.id: [t for t in _targets(x, s.global_settings.fallback_node) if t in silent]
            for x in nodes
            if x.id in silent
        }
        index = {x.id: i for i, x in enumerate(self.parsed) if x is not None}
        for loop in cycles([x.id for x in nodes], silent_edges):
            self.error(
                node_label(index[loop[0]], loop[0]),
                f"loop that never waits for user input: {_arrow(loop)}",
            )


def _arrow(loop: list[str]) -> str:
    return " → ".join(loop)


def _targets(node: n.Node, global_fallback: str | None) -> Iterator[str]:
    """Every node this one can lead to, implicit fallbacks included."""
    yield from (c.target for c in node.connections)
    cfg: Any = node.config
    if isinstance(node, n.QuickReplyNode):
        yield from (o.target for o in cfg.options if o.target)
        if cfg.fallback_action:
            yield cfg.fallback_action
    elif isinstance(node, n.AiIntentNode):
        yield from (i.target_node for i in cfg.intents if i.target_node)
        if cfg.fallback_intent:
            yield cfg.fallback_intent
    elif isinstance(node, n.CollectNode) and cfg.fallback_node:
        yield cfg.fallback_node
    always = any(compile_expression(c.condition) is ALWAYS for c in node.connections)
    if global_fallback and node.type not in n.TERMINAL_TYPES and not always:
        yield global_fallback


def _stored_variables(parsed: Sequence[n.Node | None]) -> set[str]:
    """Variables that nodes write (collect answers, chosen options, matched intents)."""
    out = set()
    for node in parsed:
        name = getattr(node.config, "variable", None) if node is not None else None
        if name:
            out.add(name)
    return out


def collect_validation(node: n.CollectNode, variables: dict[str, Any]) -> tuple[str, str | None]:
    """The validator kind and pattern of a collect node (default: its variable's type)."""
    v = node.config.validation
    if isinstance(v, n.Validation):
        return v.type, v.pattern
    if v is not None:
        return v, None
    declared = variables.get(node.config.variable or "")
    kind = getattr(declared, "type", None)
    return (kind if kind in VALIDATORS else "text"), None
