"""validate_flow: every kind of problem is reported with its path, all at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.workers.agent import FlowInvalid, lint_flow, validate_flow
from tests.unit.agent.conftest import definition, demo_definition, msg


def errors(defn: Any) -> list[str]:
    with pytest.raises(FlowInvalid) as info:
        validate_flow(defn)
    return [str(p) for p in info.value.problems]


def ask(node_id: str, variable: str | None = "answer", target: str = "bye", **cfg: Any) -> dict:
    config = {"message": "Your answer?", **cfg}
    if variable is not None:
        config["variable"] = variable
    return {"id": node_id, "type": "collect", "config": config, "connections": [{"target": target}]}


END = {"id": "bye", "type": "end", "config": {"message": "Bye"}}


def test_valid_flow_passes() -> None:
    flow = validate_flow(definition(msg("hi", "Hello", "bye"), END))
    assert flow.node("hi") is not None and flow.start_node == "hi"


def test_not_an_object() -> None:
    assert errors([1, 2]) == ["(root): a flow definition must be a JSON object"]


def test_missing_start_node() -> None:
    defn = definition(msg("hi", "Hello", "bye"), END)
    del defn["start_node"]
    assert "start_node: missing start_node" in errors(defn)


def test_unknown_start_node() -> None:
    defn = definition(msg("hi", "Hello", "bye"), END, start_node="welcome")
    assert "start_node: start_node targets unknown node 'welcome'" in errors(defn)


def test_no_nodes() -> None:
    assert "nodes: a flow needs a non-empty list of nodes" in errors({"start_node": "x"})


def test_duplicate_node_ids() -> None:
    defn = definition(msg("hi", "Hello", "bye"), END, msg("hi", "Again", "bye"))
    assert "nodes[2] 'hi': duplicate node id (see nodes[0])" in errors(defn)


def test_unknown_connection_target() -> None:
    defn = definition(msg("hi", "Hello", "nowhere"), END)
    assert "nodes[0] 'hi': connections[0] targets unknown node 'nowhere'" in errors(defn)


def test_seed_example_lists_its_missing_targets() -> None:
    """The seed's own three nodes reference nodes it never defines; each is named."""
    seed = demo_definition()
    seed["nodes"] = seed["nodes"][:3]
    found = errors(seed)
    assert (
        "nodes[2] 'product_flow': option '🚀 AI Tools' targets unknown node 'ai_tools_detail'"
        in found
    )
    assert (
        "nodes[1] 'intent_classification': "
        "intent 'support_request' targets unknown node 'support_flow'" in found
    )
    assert "global_settings: fallback_node targets unknown node 'default_fallback'" in found
    assert "global_actions.escalation: global action targets unknown node 'human_handoff'" in found
    assert (
        "nodes[1] 'intent_classification': fallback_intent 'general_inquiry' "
        "is neither an intent nor a node"
    ) in found
    assert (
        "nodes[2] 'product_flow': fallback_action targets unknown node 'escalate_to_human'" in found
    )


def test_unknown_fallback_of_a_collect_node() -> None:
    defn = definition(ask("q", fallback_node="oops", max_retries=1), END)
    assert "nodes[0] 'q': fallback_node targets unknown node 'oops'" in errors(defn)


def test_unknown_global_action_condition() -> None:
    action = {"keywords": ["agent"], "target": "bye", "conditions": ["business_hours"]}
    defn = definition(msg("hi", "Hello", "bye"), END, global_actions={"escalation": action})
    assert "global_actions.escalation: unknown condition 'business_hours'" in errors(defn)


def test_global_action_without_keywords() -> None:
    defn = definition(
        msg("hi", "Hi", "bye"), END, global_actions={"x": {"keywords": [" "], "target": "bye"}}
    )
    assert "global_actions.x: a global action needs at least one keyword" in errors(defn)


def test_unreachable_node() -> None:
    defn = definition(msg("hi", "Hello", "bye"), END, msg("lost", "Nobody comes here", "bye"))
    assert errors(defn) == ["nodes[2] 'lost': unreachable from start_node or any global action"]


def test_nodes_reached_only_by_a_global_action_or_the_fallback_are_reachable() -> None:
    defn = definition(
        ask("q"),
        END,
        {"id": "human", "type": "handoff"},
        msg("sorry", "Sorry?", "q"),
        global_actions={"escalation": {"keywords": ["human"], "target": "human"}},
        global_settings={"fallback_node": "sorry"},
    )
    validate_flow(defn)


def test_loop_that_never_waits_for_input() -> None:
    defn = definition(msg("a", "A", "b"), msg("b", "B", "c"), msg("c", "C", "a"))
    assert errors(defn) == ["nodes[0] 'a': loop that never waits for user input: a → b → c → a"]


def test_self_loop_through_a_condition_node() -> None:
    cond = {"id": "check", "type": "condition", "connections": [{"target": "check"}]}
    defn = definition(msg("hi", "Hi", "check"), cond)
    assert errors(defn) == ["nodes[1] 'check': loop that never waits for user input: check → check"]


def test_loop_through_the_global_fallback_is_seen() -> None:
    cond = {
        "id": "check",
        "type": "condition",
        "connections": [{"target": "bye", "condition": "x == 1"}],
    }
    defn = definition(
        msg("hi", "Hi", "check"),
        cond,
        END,
        msg("sorry", "Sorry", "check"),
        global_settings={"fallback_node": "sorry"},
        variables={"x": {"default": 0}},
    )
    assert errors(defn) == [
        "nodes[1] 'check': loop that never waits for user input: check → sorry → check"
    ]


def test_loop_through_an_input_node_is_fine() -> None:
    validate_flow(definition(msg("a", "A", "q"), ask("q", target="a")))


def test_collect_without_variable() -> None:
    defn = definition(ask("q", variable=None), END)
    assert errors(defn) == ["nodes[0] 'q': collect has no config.variable to store the answer in"]


def test_collect_with_unknown_validation_or_bad_regex() -> None:
    defn = definition(
        ask("q", validation="postcode", target="r"),
        ask("r", validation={"type": "regex", "pattern": "(["}),
        END,
    )
    found = errors(defn)
    assert any(e.startswith("nodes[0] 'q': unknown validation 'postcode'") for e in found)
    assert any(e.startswith("nodes[1] 'r': validation pattern does not compile") for e in found)


def test_unknown_template_variable_is_an_error() -> None:
    defn = definition(msg("hi", "Hello {{user_name}}", "bye"), END)
    assert errors(defn) == [
        "nodes[0] 'hi'.config.message: template uses unknown variable 'user_name'"
    ]


def test_declared_collected_and_builtin_template_variables_are_fine() -> None:
    defn = definition(
        ask("q", variable="email", target="thanks"),
        msg("thanks", "Thanks {{ email }}, {{user_name}}, turn {{turn_count}}", "bye"),
        END,
        variables={"user_name": {"type": "string", "default": "friend"}},
    )
    validate_flow(defn)


def test_unknown_names_in_conditions_are_warnings() -> None:
    cond = {
        "id": "check",
        "type": "condition",
        "connections": [
            {"target": "bye", "condition": "user.tier == 'premium'"},
            {"target": "bye"},
        ],
    }
    report = lint_flow(definition(msg("hi", "Hi", "check"), cond, END))
    assert report.errors == [] and report.flow is not None
    assert [str(w) for w in report.warnings] == [
        "nodes[1] 'check'.connections[0].condition: 'user' is not a declared variable (reads null)"
    ]


def test_condition_that_does_not_parse() -> None:
    cond = {
        "id": "check",
        "type": "condition",
        "connections": [{"target": "bye", "condition": "x >= "}],
    }
    found = errors(definition(msg("hi", "Hi", "check"), cond, END))
    assert found == [
        "nodes[1] 'check'.connections[0].condition: condition 'x >= ' does not parse: "
        "unexpected end of expression"
    ]


def test_unknown_node_type_and_missing_fields() -> None:
    defn = definition(
        msg("hi", "Hi", "x"),
        {"id": "x", "type": "carousel"},
        {"id": "y", "type": "message", "connections": [{"target": "hi"}]},
    )
    found = errors(defn)
    assert found[0].startswith(
        "nodes[1] 'x': unknown node type 'carousel' (expected one of: message,"
    )
    assert "nodes[2] 'y'.config: field required" in found


def test_terminal_nodes_and_dead_ends() -> None:
    bad_end = {"id": "bye", "type": "end", "connections": [{"target": "hi"}]}
    dead = {"id": "hi", "type": "message", "config": {"message": "Hi"}}
    found = errors(definition(dead, bad_end))
    assert "nodes[0] 'hi': a message node needs at least one connection" in found
    assert "nodes[1] 'bye': a end node is terminal and cannot have connections" in found


def test_unknown_timezone() -> None:
    defn = definition(
        msg("hi", "Hi", "bye"),
        END,
        conditions={"open": {"expression": "hour > 9", "timezone": "Mars/Olympus"}},
    )
    assert errors(defn) == ["conditions.open.timezone: unknown timezone 'Mars/Olympus'"]


def test_every_problem_is_reported_at_once() -> None:
    defn = definition(
        msg("hi", "Hello {{nobody}}", "nowhere"), ask("q", variable=None), msg("hi", "dup", "bye")
    )
    with pytest.raises(FlowInvalid) as info:
        validate_flow(defn)
    assert sorted(map(str, info.value.problems)) == [
        "nodes[0] 'hi'.config.message: template uses unknown variable 'nobody'",
        "nodes[0] 'hi': connections[0] targets unknown node 'nowhere'",
        "nodes[1] 'q': collect has no config.variable to store the answer in",
        "nodes[1] 'q': connections[0] targets unknown node 'bye'",
        "nodes[2] 'hi': connections[0] targets unknown node 'bye'",
        "nodes[2] 'hi': duplicate node id (see nodes[0])",
    ]
    assert info.value.status == 422
    for problem in info.value.problems:
        assert str(problem) in str(info.value)


def test_the_demo_flow_validates_and_only_warns_about_context_names() -> None:
    report = lint_flow(demo_definition())
    assert report.errors == [] and report.flow is not None
    assert {w.path for w in report.warnings} == {
        "conditions.premium_user",
        "conditions.has_previous_conversation",
    }
    assert json.loads(report.flow.model_dump_json(exclude_none=True))["start_node"] == "welcome"
