"""A conversation flow definition: the models, and the validation run at import time.

The shape is the seed's ``flow_definition``: ``start_node``, ``global_settings``
(``timeout`` idle seconds, ``max_turns``, ``fallback_node``, ``timezone``), ``nodes``
(``id``, ``type``, ``config``, ``connections`` of ``{target, condition}``), named
``conditions``, keyword ``global_actions`` and ``variables`` with defaults. Node types:
``message``, ``condition`` and ``knowledge`` run and move on; ``quick_reply``,
``ai_intent`` and ``collect`` wait for the user; ``handoff`` and ``end`` are terminal.
Message text may use ``{{variable}}``.

``validate_flow`` returns a :class:`Flow` or raises :class:`FlowInvalid` listing every
problem with its path, so a bot builder fixes them in one go. ``lint_flow`` also
returns warnings (names in conditions that no variable declares: they read as null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
)

from services.workers.agent import nodes as n
from services.workers.agent.checks import Problem, check_flow, node_label
from services.workers.agent.expressions import Expression, compile_expression
from shared.errors import RejectError


class GlobalSettings(n.Open):
    timeout: PositiveInt | None = Field(default=None, description="Idle seconds before reset.")
    max_turns: PositiveInt | None = None
    fallback_node: str | None = None
    timezone: str | None = Field(default=None, description="For hour/day_of_week; UTC if unset.")


class NamedCondition(n.Open):
    expression: str
    timezone: str | None = None


class GlobalAction(n.Open):
    """Keywords that jump anywhere in the flow (restart, escalation to a human)."""

    keywords: list[str] = Field(default_factory=list)
    target: str
    clear_context: bool = False
    conditions: list[str] = Field(default_factory=list)
    priority: str | None = None


class Variable(n.Open):
    type: str = "string"
    default: Any = None
    required: bool = False


class _FlowFields(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    start_node: str | None = None
    global_settings: GlobalSettings = Field(default_factory=GlobalSettings)
    conditions: dict[str, NamedCondition] = Field(default_factory=dict)
    global_actions: dict[str, GlobalAction] = Field(default_factory=dict)
    variables: dict[str, Variable] = Field(default_factory=dict)


class _Shell(_FlowFields):
    nodes: list[Any] = Field(default_factory=list)


class Flow(_FlowFields):
    """A validated flow; immutable, so one instance serves every conversation."""

    start_node: str
    nodes: list[n.Node]
    _index: dict[str, n.Node] = PrivateAttr(default_factory=dict)
    _compiled: dict[str, Expression] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: Any) -> None:
        self._index = {node.id: node for node in self.nodes}

    def node(self, node_id: str) -> n.Node | None:
        return self._index.get(node_id)

    def expression(self, source: str | None) -> Expression:
        """A compiled condition, cached (flows are validated, so it parses)."""
        key = source or ""
        if key not in self._compiled:
            self._compiled[key] = compile_expression(source)
        return self._compiled[key]


class FlowInvalid(RejectError):
    """The flow definition cannot be used; ``problems`` lists every reason."""

    status = 422

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"flow is invalid ({len(problems)} problem(s)):\n{lines}")


@dataclass
class FlowReport:
    """What ``lint_flow`` found: the flow (when there are no errors), errors, warnings."""

    flow: Flow | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


_NODE = TypeAdapter(n.Node)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_flow(definition: Any) -> Flow:
    """The flow, or :class:`FlowInvalid` with every error found."""
    report = lint_flow(definition)
    if report.errors or report.flow is None:
        raise FlowInvalid(report.errors)
    return report.flow


def lint_flow(definition: Any) -> FlowReport:
    """Parse and check a definition without raising."""
    report = FlowReport()
    if not isinstance(definition, dict):
        report.errors.append(Problem("(root)", "a flow definition must be a JSON object"))
        return report
    shell = _parse_shell(definition, report)
    parsed: list[n.Node | None] = []
    raw_ids: list[str | None] = []
    if not isinstance(definition.get("nodes"), list) or not definition["nodes"]:
        report.errors.append(Problem("nodes", "a flow needs a non-empty list of nodes"))
    for i, raw in enumerate(shell.nodes):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        raw_ids.append(raw_id if isinstance(raw_id, str) and raw_id else None)
        parsed.append(_parse_node(i, raw, raw_ids[-1], report))
    errors, warnings = check_flow(shell, parsed, raw_ids)
    report.errors.extend(errors)
    report.warnings.extend(warnings)
    if not report.errors:
        report.flow = Flow.model_validate(definition)
    return report


def _parse_shell(definition: dict[str, Any], report: FlowReport) -> _Shell:
    try:
        return _Shell.model_validate(definition)
    except ValidationError as exc:  # report, then go on with the fields that parse
        bad = {err["loc"][0] for err in exc.errors()}
        for err in exc.errors():
            report.errors.append(Problem(_loc(err["loc"]), err["msg"].lower()))
        return _Shell.model_validate({k: v for k, v in definition.items() if k not in bad})


def _parse_node(i: int, raw: Any, raw_id: str | None, report: FlowReport) -> n.Node | None:
    label = node_label(i, raw_id)
    if not isinstance(raw, dict):
        report.errors.append(Problem(label, "a node must be an object"))
        return None
    kind = raw.get("type")
    if kind not in n.NODE_TYPES:
        expected = ", ".join(n.NODE_TYPES)
        message = f"unknown node type {kind!r} (expected one of: {expected})"
        report.errors.append(Problem(label, message if kind else "node has no type"))
        return None
    try:
        return _NODE.validate_python(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"][1:] if err["loc"] and err["loc"][0] == kind else err["loc"]
            report.errors.append(Problem(f"{label}.{_loc(loc)}", err["msg"].lower()))
        return None
