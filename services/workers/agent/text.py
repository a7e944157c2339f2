"""Text helpers shared by the engine and the matchers: templates, normalisation, keywords."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}")


def template_names(text: str) -> set[str]:
    """The root variable names a message template refers to (``{{user.name}}`` → user)."""
    return {m.group(1).split(".")[0] for m in _TEMPLATE.finditer(text)}


def render(text: str, lookup: Callable[[str], Any]) -> str:
    """Substitute ``{{var}}`` / ``{{var.key}}``; a missing value renders as empty text."""

    def substitute(match: re.Match[str]) -> str:
        root, *rest = match.group(1).split(".")
        value = lookup(root)
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return ""
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return _TEMPLATE.sub(substitute, text)


def normalize(text: str) -> str:
    """Casefolded words without accents, emoji or punctuation, single-spaced."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = [
        ch if unicodedata.category(ch)[0] in {"L", "N"} else " "
        for ch in decomposed
        if not unicodedata.combining(ch)
    ]
    return " ".join("".join(kept).split())


def contains_phrase(text: str, phrases: Iterable[str]) -> bool:
    """Whether any phrase occurs in text as whole words (case and punctuation ignored)."""
    padded = f" {normalize(text)} "
    return any(f" {p} " in padded for p in map(normalize, phrases) if p)
