"""The flow engine, one behaviour per test, on small inline flows."""

from __future__ import annotations

import json
from typing import Any

from services.workers.agent import (
    End,
    Flow,
    Handoff,
    KnowledgeFallback,
    State,
    UserInput,
    new_state,
    resume,
    start,
    step,
    validate_flow,
)
from tests.unit.agent.conftest import T0, Chat, FixedMatcher, definition, msg, texts

END = {"id": "bye", "type": "end", "config": {"message": "Bye {{name}}!"}}


def collect(node_id: str, variable: str, target: str, message: str, **cfg: Any) -> dict:
    return {
        "id": node_id,
        "type": "collect",
        "config": {"message": message, "variable": variable, **cfg},
        "connections": [{"target": target}],
    }


def menu(allow_free_text: bool, **cfg: Any) -> dict:
    return {
        "id": "menu",
        "type": "quick_reply",
        "config": {
            "message": "Pick a plan, {{name}}",
            "options": [
                {"text": "🚀 Pro plan", "value": "pro", "target": "pro"},
                {"text": "Free", "value": "free", "target": "free"},
            ],
            "allow_free_text": allow_free_text,
            "variable": "plan",
            **cfg,
        },
    }


def menu_flow(allow_free_text: bool, **cfg: Any) -> Flow:
    nodes = [
        msg("hi", "Hello", "menu"),
        menu(allow_free_text, **cfg),
        msg("pro", "Pro it is ({{plan}})", "bye"),
        msg("free", "Free it is", "bye"),
        END,
    ]
    if cfg.get("fallback_action") == "other":
        nodes.append(msg("other", "Let me find someone who knows about {{plan}}", "bye"))
    variables = {"name": {"type": "string", "default": "friend"}, "plan": {}}
    return validate_flow(definition(*nodes, variables=variables))


def intent_flow(**cfg: Any) -> Flow:
    node = {
        "id": "route",
        "type": "ai_intent",
        "config": {
            "confidence_threshold": 0.6,
            "intents": [
                {"name": "billing", "examples": ["billing issue"], "target_node": "billing"},
                {"name": "sales", "examples": ["buy something"], "target_node": "sales"},
            ],
            **cfg,
        },
    }
    nodes = [
        msg("hi", "How can I help?", "route"),
        node,
        msg("billing", "Billing here", "route"),
        msg("sales", "Sales here", "route"),
    ]
    if cfg.get("fallback_intent") == "unsure":
        nodes.append(msg("unsure", "Could you rephrase that?", "route"))
    return validate_flow(definition(*nodes))


def test_multi_step_collect_with_template_substitution() -> None:
    flow = validate_flow(
        definition(
            msg("hi", "Hi {{name}}! Let's get you set up.", "ask_name"),
            collect("ask_name", "name", "ask_email", "What's your name?"),
            collect(
                "ask_email", "email", "done", "Thanks {{name}}. Your email?", validation="email"
            ),
            msg("done", "We'll write to {{ email }}, {{name}}.", "bye"),
            END,
            variables={"name": {"type": "string", "default": "there"}},
        )
    )
    chat = Chat(flow)
    assert texts(chat.say("hello")) == ["Hi there! Let's get you set up.", "What's your name?"]
    assert chat.state.awaiting == "answer" and chat.state.current_node == "ask_name"
    assert texts(chat.say("  Ada ")) == ["Thanks Ada. Your email?"]
    bad = chat.say("ada at example")
    assert texts(bad) == ["That doesn't look like an email address. Please try again."]
    assert chat.state.current_node == "ask_email" and chat.state.retries == 1
    done = chat.say("ada@example.com")
    assert texts(done) == ["We'll write to ada@example.com, Ada.", "Bye Ada!"]
    assert done.actions == (End(node="bye", reason="completed"),)
    assert chat.state.variables == {"name": "Ada", "email": "ada@example.com"}
    assert chat.state.ended and chat.state.turn_count == 4


def test_collect_validators_store_normalised_values_and_give_up_after_retries() -> None:
    flow = validate_flow(
        definition(
            collect("age", "age", "phone", "Age?", validation="number"),
            collect(
                "phone",
                "phone",
                "bye",
                "Phone?",
                validation="phone",
                max_retries=1,
                error_message="A phone number, please",
                fallback_node="human",
            ),
            END,
            {"id": "human", "type": "handoff", "config": {"message": "A person will call you"}},
            variables={"name": {}},
        )
    )
    chat = Chat(flow)
    chat.say("hi")
    chat.say("forty")
    assert chat.state.current_node == "age"
    chat.say("42")
    assert chat.state.variables["age"] == 42 and isinstance(chat.state.variables["age"], int)
    assert texts(chat.say("call me")) == ["A phone number, please"]
    gave_up = chat.say("still no")
    assert gave_up.actions == (Handoff(node="human"),) and chat.state.handed_off
    chat2 = Chat(flow)
    for said in ("hi", "7.5", "+1 (555) 010-9999"):
        chat2.say(said)
    assert chat2.state.variables == {"age": 7.5, "phone": "+15550109999"}


def test_quick_reply_by_payload_title_or_number() -> None:
    flow = menu_flow(allow_free_text=False)
    first = Chat(flow).say("hi")
    assert first.replies[-1].quick_replies == (("🚀 Pro plan", "pro"), ("Free", "free"))
    assert first.replies[-1].text == "Pick a plan, friend"
    for kwargs in ({"payload": "pro"}, {"text": "pro PLAN!"}, {"text": "1"}):
        chat = Chat(flow)
        chat.say("hi")
        result = chat.say(**kwargs)
        assert texts(result)[0] == "Pro it is (pro)", kwargs


def test_quick_reply_without_free_text_re_prompts_with_the_buttons() -> None:
    chat = Chat(menu_flow(allow_free_text=False, invalid_message="Tap a button, {{name}}"))
    chat.say("hi")
    again = chat.say("something else")
    assert [(r.text, r.quick_replies) for r in again.replies] == [
        ("Tap a button, friend", (("🚀 Pro plan", "pro"), ("Free", "free")))
    ]
    assert chat.state.current_node == "menu" and chat.state.awaiting == "choice"
    assert again.actions == ()


def test_quick_reply_with_free_text_goes_to_its_fallback() -> None:
    chat = Chat(menu_flow(allow_free_text=True, fallback_action="other"))
    chat.say("hi")
    assert chat.state.awaiting == "choice_or_text"
    result = chat.say("enterprise")
    assert texts(result) == ["Let me find someone who knows about enterprise", "Bye friend!"]


def test_quick_reply_free_text_without_any_fallback_asks_the_knowledge_base() -> None:
    chat = Chat(menu_flow(allow_free_text=True))
    chat.say("hi")
    result = chat.say("Do you have student discounts?")
    assert result.actions == (KnowledgeFallback(text="Do you have student discounts?"),)
    assert result.replies == () and chat.state.current_node == "menu"


def test_intent_routing_respects_the_threshold() -> None:
    matcher = FixedMatcher({"bill": ("billing", 0.9), "maybe bill": ("billing", 0.59)})
    chat = Chat(intent_flow(fallback_intent="unsure"), matcher=matcher)
    chat.say("hi")
    assert chat.state.awaiting == "intent"
    routed = chat.say("bill")
    assert texts(routed) == ["Billing here"] and (routed.intent, routed.confidence) == (
        "billing",
        0.9,
    )
    low = chat.say("maybe bill")
    assert texts(low) == ["Could you rephrase that?"] and low.intent is None
    assert low.confidence == 0.59 and chat.state.current_node == "route"


def test_intent_fallback_may_name_an_intent() -> None:
    chat = Chat(intent_flow(fallback_intent="sales", variable="topic"), matcher=FixedMatcher({}))
    chat.say("hi")
    result = chat.say("no idea")
    assert texts(result) == ["Sales here"] and chat.state.variables["topic"] == "sales"


def test_intent_routing_with_the_lexical_matcher() -> None:
    chat = Chat(intent_flow())
    chat.say("hi")
    assert texts(chat.say("I have a BILLING issue!")) == ["Billing here"]
    assert texts(chat.say("I want to buy something")) == ["Sales here"]


def test_unmatched_intent_without_fallbacks_asks_the_knowledge_base() -> None:
    chat = Chat(intent_flow(), matcher=FixedMatcher({}))
    chat.say("hi")
    result = chat.say("What are your opening hours?")
    assert result.actions == (KnowledgeFallback(text="What are your opening hours?"),)
    assert chat.state.current_node == "route" and chat.state.awaiting == "intent"


def test_global_fallback_node_catches_what_a_node_does_not() -> None:
    flow = validate_flow(
        definition(
            msg("hi", "Hi", "menu"),
            menu(True),
            msg("pro", "Pro", "bye"),
            msg("free", "Free", "bye"),
            msg("sorry", "Sorry, I didn't get that", "menu"),
            END,
            global_settings={"fallback_node": "sorry"},
            variables={"name": {}},
        )
    )
    chat = Chat(flow)
    chat.say("hi")
    result = chat.say("banana")
    assert texts(result) == ["Sorry, I didn't get that", "Pick a plan, "]
    assert chat.state.current_node == "menu"


def global_actions_flow() -> Flow:
    return validate_flow(
        definition(
            msg("hi", "Hello {{name}}", "ask"),
            collect("ask", "name", "bye", "Name?"),
            END,
            {
                "id": "human",
                "type": "handoff",
                "config": {"message": "Getting a human", "reason": "asked"},
            },
            variables={"name": {"default": "stranger"}},
            conditions={"open": {"expression": "hour >= 9 && hour < 17", "timezone": "UTC"}},
            global_actions={
                "restart": {
                    "keywords": ["restart", "start over"],
                    "target": "hi",
                    "clear_context": True,
                },
                "escalation": {
                    "keywords": ["human", "speak to someone"],
                    "target": "human",
                    "conditions": ["open"],
                },
            },
        )
    )


def test_restart_keyword_clears_the_context() -> None:
    chat = Chat(global_actions_flow())
    chat.say("hi")
    chat.state = chat.state.model_copy(update={"variables": {"name": "Bob", "x": 1}})
    result = chat.say("Can we START OVER, please?")
    assert texts(result) == ["Hello stranger", "Name?"]
    assert chat.state.variables == {"name": "stranger"} and chat.state.turn_count == 0


def test_escalation_keyword_is_whole_word_and_phrase() -> None:
    flow = global_actions_flow()
    chat = Chat(flow)
    chat.say("hi")
    humane = chat.say("humane")  # not the whole word "human": an answer to the question
    assert humane.actions == (End(node="bye"),) and chat.state.variables["name"] == "humane"
    chat = Chat(flow)
    chat.say("hi")
    result = chat.say("Can I speak to someone?")
    assert result.actions == (Handoff(node="human", reason="asked"),)
    assert chat.state.handed_off and chat.state.current_node == "human"


def test_global_action_conditions_gate_the_keyword() -> None:
    chat = Chat(global_actions_flow())
    chat.now = T0.replace(hour=22)  # outside "open"
    chat.say("hi")
    result = chat.say("human")
    assert result.actions == (End(node="bye"),)  # answered the question, no handoff
    assert chat.state.variables["name"] == "human" and not chat.state.handed_off


def test_handoff_keeps_the_bot_silent_until_resumed() -> None:
    chat = Chat(global_actions_flow())
    chat.say("hi")
    chat.say("human")
    before = chat.state
    silent = chat.say("hello? anyone?")
    assert silent.replies == () and silent.actions == () and chat.state == before
    chat.state = resume(chat.state)
    assert texts(chat.say("back")) == ["Hello stranger", "Name?"]


def test_condition_branching() -> None:
    branch = {
        "id": "check",
        "type": "condition",
        "connections": [
            {"target": "adult", "condition": "age >= 18 and country in ['US', 'CA']"},
            {"target": "elsewhere", "condition": "age >= 18 and not (country in ['US', 'CA'])"},
            {"target": "minor", "condition": "always"},
        ],
    }
    flow = validate_flow(
        definition(
            collect("age_q", "age", "country_q", "Age?", validation="integer"),
            collect("country_q", "country", "check", "Country?"),
            branch,
            msg("adult", "Welcome", "bye"),
            msg("elsewhere", "Not available in {{country}} yet", "bye"),
            msg("minor", "Sorry, adults only", "bye"),
            END,
            variables={"name": {}},
        )
    )
    for age, country, expected in (
        ("30", "US", "Welcome"),
        ("30", "FR", "Not available in FR yet"),
        ("12", "US", "Sorry, adults only"),
    ):
        chat = Chat(flow)
        chat.say("hi")
        chat.say(age)
        assert texts(chat.say(country))[0] == expected


def test_node_without_a_matching_connection_uses_the_fallback_node() -> None:
    branch = {
        "id": "check",
        "type": "condition",
        "connections": [{"target": "vip", "condition": "vip == true"}],
    }
    flow = validate_flow(
        definition(
            msg("hi", "Hi", "check"),
            branch,
            msg("vip", "VIP", "bye"),
            END,
            collect("fallback", "name", "bye", "Sorry, who are you?"),
            global_settings={"fallback_node": "fallback"},
            variables={"vip": {"default": False}},
        )
    )
    assert texts(Chat(flow).say("hi")) == ["Hi", "Sorry, who are you?"]


def max_turns_flow(fallback: bool) -> Flow:
    settings: dict[str, Any] = {"max_turns": 3}
    nodes = [msg("hi", "Hi", "ask"), collect("ask", "n", "ask", "Again?")]
    if fallback:
        settings["fallback_node"] = "tired"
        nodes.append(msg("tired", "Let's wrap up", "bye"))
        nodes.append({"id": "bye", "type": "end"})
    return validate_flow(definition(*nodes, global_settings=settings))


def test_max_turns_goes_to_the_fallback_node() -> None:
    chat = Chat(max_turns_flow(fallback=True))
    for said in ("hi", "a", "b"):
        assert chat.say(said).actions == ()
    result = chat.say("c")
    assert texts(result) == ["Let's wrap up"] and result.actions == (End(node="bye"),)


def test_max_turns_without_fallback_ends_and_the_next_message_starts_over() -> None:
    chat = Chat(max_turns_flow(fallback=False))
    for said in ("hi", "a", "b"):
        chat.say(said)
    result = chat.say("c")
    assert result.actions == (End(node="ask", reason="max_turns"),) and chat.state.ended
    again = chat.say("hello again")
    assert texts(again) == ["Hi", "Again?"] and chat.state.turn_count == 1


def test_idle_timeout_starts_a_new_session() -> None:
    flow = validate_flow(
        definition(
            msg("hi", "Hi", "ask"),
            collect("ask", "n", "ask", "Name?"),
            global_settings={"timeout": 300},
        )
    )
    chat = Chat(flow)
    chat.say("hi")
    chat.say("Ann", after=299)
    assert chat.state.variables == {"n": "Ann"}
    result = chat.say("Bob", after=301)
    assert texts(result) == ["Hi", "Name?"] and chat.state.variables == {}


def test_knowledge_node_hands_the_message_to_the_knowledge_base() -> None:
    flow = validate_flow(
        definition(
            msg("hi", "Ask me anything", "ask"),
            {
                "id": "ask",
                "type": "ai_intent",
                "config": {
                    "fallback_intent": "kb",
                    "intents": [{"name": "bye", "examples": ["goodbye"], "target_node": "bye"}],
                },
            },
            {
                "id": "kb",
                "type": "knowledge",
                "config": {"message": "Let me look that up."},
                "connections": [{"target": "ask"}],
            },
            {"id": "bye", "type": "end"},
        )
    )
    chat = Chat(flow)
    chat.say("hi")
    result = chat.say("How do I reset my password?")
    assert texts(result) == ["Let me look that up."]
    assert result.actions == (KnowledgeFallback(text="How do I reset my password?"),)
    assert chat.state.current_node == "ask" and chat.state.awaiting == "intent"


def test_runtime_loop_guard_ends_a_loop_the_validator_would_reject() -> None:
    looping = Flow.model_validate(definition(msg("a", "A", "b"), msg("b", "B", "a")))
    result = step(
        looping, new_state(looping), UserInput(text="hi"), intents=FixedMatcher({}), now=T0
    )
    assert result.replies == ()
    assert result.actions == (End(node="a", reason="loop"),) and result.state.ended


def test_start_greets_without_a_message() -> None:
    flow = global_actions_flow()
    result = start(flow, now=T0)
    assert texts(result) == ["Hello stranger", "Name?"]
    assert result.state.current_node == "ask" and result.state.turn_count == 0


def test_a_state_whose_node_was_removed_starts_over() -> None:
    flow = global_actions_flow()
    stale = State(current_node="deleted_node", awaiting="intent", variables={"name": "Zed"})
    result = step(flow, stale, UserInput(text="hi"), intents=FixedMatcher({}), now=T0)
    assert texts(result) == ["Hello stranger", "Name?"]


def test_state_json_round_trip() -> None:
    flow = menu_flow(allow_free_text=False)
    chat = Chat(flow)
    chat.say("hi")
    chat.state = chat.state.model_copy(
        update={
            "variables": {**chat.state.variables, "cart": {"items": [1, 2.5, None], "ok": True}}
        }
    )
    stored = json.dumps(chat.state.to_json())
    restored = State.from_json(json.loads(stored))
    assert restored == chat.state
    assert restored.last_activity is not None and restored.last_activity.tzinfo is not None
    a = step(flow, chat.state, UserInput(text="Free"), intents=FixedMatcher({}), now=T0)
    b = step(flow, restored, UserInput(text="Free"), intents=FixedMatcher({}), now=T0)
    assert a == b and texts(a) == ["Free it is", "Bye friend!"]


def test_step_does_not_mutate_the_input_state() -> None:
    flow = menu_flow(allow_free_text=False)
    state = new_state(flow)
    snapshot = state.to_json()
    step(flow, state, UserInput(text="hi"), intents=FixedMatcher({}), now=T0)
    assert state.to_json() == snapshot
