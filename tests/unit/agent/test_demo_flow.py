"""The demo flow (the seed's example, completed) end to end with the lexical matcher."""

from __future__ import annotations

from datetime import UTC, datetime

from services.workers.agent import Flow, Handoff, KnowledgeFallback
from tests.unit.agent.conftest import Chat, texts

SATURDAY_NOON_NY = datetime(2025, 1, 11, 17, 0, tzinfo=UTC)
GREETING = "Hello! I'm here to help. What can I do for you?"


def test_product_path_collects_an_email(demo: Flow) -> None:
    chat = Chat(demo)
    assert texts(chat.say("hi")) == [GREETING]
    menu = chat.say("Tell me about your products")
    assert menu.intent == "product_inquiry" and menu.confidence is not None
    assert [title for title, _ in menu.replies[0].quick_replies] == [
        "🚀 AI Tools",
        "💼 Business Solutions",
        "🎓 Educational",
    ]
    assert texts(chat.say(payload="ai_tools")) == [
        "Our AI tools build, train and deploy chatbots for you.",
        "What email address should we send the details to?",
    ]
    assert chat.state.awaiting == "answer"
    assert texts(chat.say("not-an-email")) == [
        "That doesn't look like an email address. Could you check it?"
    ]
    done = chat.say("ada@example.com")
    assert texts(done)[0] == "Thanks! We'll write to ada@example.com shortly."
    assert texts(chat.say("No, thanks")) == ["Thanks for chatting with us. Have a great day!"]
    assert chat.state.ended


def test_free_text_on_the_product_menu_escalates(demo: Flow) -> None:
    chat = Chat(demo)
    chat.say("hi")
    chat.say("what do you sell")
    result = chat.say("do you build robots?")
    assert texts(result) == [
        "Let me find a person who can help with that.",
        "Connecting you with a human agent. One moment, please.",
    ]
    assert result.actions == (Handoff(node="human_handoff", reason="escalation"),)


def test_support_asks_for_an_email_only_when_unknown(demo: Flow) -> None:
    chat = Chat(demo)
    chat.say("hi")
    assert texts(chat.say("something is broken")) == ["Sorry to hear that. What went wrong?"]
    assert texts(chat.say("The export button fails")) == [
        "Which email address can our support team reach you at?"
    ]
    ticket = chat.say("ada@example.com")
    assert texts(ticket)[0] == (
        "I've opened a ticket about \"The export button fails\". We'll reply to ada@example.com."
    )
    chat.say("yes")
    chat.say("I need help")
    again = chat.say("It crashed again")
    assert texts(again)[0].startswith('I\'ve opened a ticket about "It crashed again"')


def test_billing_depends_on_business_hours(demo: Flow) -> None:
    open_chat = Chat(demo)
    open_chat.say("hi")
    assert open_chat.say("billing issue").actions == (
        Handoff(node="billing_handoff", reason="billing"),
    )
    closed = Chat(demo)
    closed.now = SATURDAY_NOON_NY
    closed.say("hi")
    result = closed.say("billing issue")
    assert result.actions == () and closed.state.current_node == "ask_email"


def test_unknown_questions_go_to_the_knowledge_base(demo: Flow) -> None:
    chat = Chat(demo)
    chat.say("hi")
    result = chat.say("Do you have an office in Berlin?")
    assert result.actions == (KnowledgeFallback(text="Do you have an office in Berlin?"),)
    assert chat.state.current_node == "intent_classification" and chat.state.awaiting == "intent"


def test_global_keywords(demo: Flow) -> None:
    chat = Chat(demo)
    chat.say("hi")
    chat.say("what do you sell")
    restarted = chat.say("Let's start over")
    assert texts(restarted) == [GREETING] and chat.state.current_node == "intent_classification"
    urgent = chat.say("URGENT: I need a human")  # emergency has priority over escalation
    assert urgent.actions == (
        Handoff(node="emergency_protocol", reason="emergency", priority="high"),
    )
    after_hours = Chat(demo)
    after_hours.now = SATURDAY_NOON_NY
    after_hours.say("hi")
    # Escalation needs business hours: otherwise "human" is just an unknown question.
    assert after_hours.say("human").actions == (KnowledgeFallback(text="human"),)
    assert not after_hours.state.handed_off


def test_max_turns_goes_to_the_fallback_node(demo: Flow) -> None:
    chat = Chat(demo)
    for _ in range(50):
        assert chat.say("hi").actions != () or chat.state.turn_count == 1
    fallback = chat.say("hi")
    assert texts(fallback) == [
        "Sorry, I didn't get that. You can ask about products, support or billing, "
        "or type 'agent' to talk to a person."
    ]
    assert chat.state.turn_count == 0 and chat.state.current_node == "intent_classification"
