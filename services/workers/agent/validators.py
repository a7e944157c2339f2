"""Answer validation for ``collect`` nodes: check a reply and turn it into the stored value."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]{2,}")
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_PHONE = re.compile(r"\+?\d{7,15}")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")


class Invalid(ValueError):
    """The answer does not pass the node's validation."""


def _text(answer: str, _pattern: str | None) -> str:
    if not answer:
        raise Invalid("Please type an answer.")
    return answer


def _email(answer: str, _pattern: str | None) -> str:
    if not _EMAIL.fullmatch(answer):
        raise Invalid("That doesn't look like an email address. Please try again.")
    return answer


def _phone(answer: str, _pattern: str | None) -> str:
    digits = _PHONE_NOISE.sub("", answer)
    if not _PHONE.fullmatch(digits):
        raise Invalid("That doesn't look like a phone number. Please try again.")
    return digits


def _number(answer: str, _pattern: str | None) -> int | float:
    if not _NUMBER.fullmatch(answer):
        raise Invalid("Please answer with a number.")
    value = float(answer.replace(",", "."))
    return int(value) if value.is_integer() and _INTEGER.fullmatch(answer) else value


def _integer(answer: str, _pattern: str | None) -> int:
    if not _INTEGER.fullmatch(answer):
        raise Invalid("Please answer with a whole number.")
    return int(answer)


def _regex(answer: str, pattern: str | None) -> str:
    if pattern is None or not re.fullmatch(pattern, answer):
        raise Invalid("That answer doesn't have the expected format. Please try again.")
    return answer


VALIDATORS: dict[str, Callable[[str, str | None], Any]] = {
    "text": _text,
    "non_empty": _text,
    "string": _text,
    "email": _email,
    "phone": _phone,
    "number": _number,
    "integer": _integer,
    "regex": _regex,
}


def check(kind: str, answer: str, *, pattern: str | None = None) -> Any:
    """The value to store for ``answer``, or :class:`Invalid` with a user-facing reason."""
    return VALIDATORS[kind](answer.strip(), pattern)
