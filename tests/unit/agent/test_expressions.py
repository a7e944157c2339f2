"""The condition language: what it evaluates, what it refuses (there is no eval)."""

from __future__ import annotations

from typing import Any

import pytest

from services.workers.agent.expressions import ExpressionError, compile_expression

VARS: dict[str, Any] = {
    "age": 30,
    "score": "7.5",
    "tier": "premium",
    "tags": ["vip", "beta"],
    "user": {"name": "Ada", "plan": {"seats": 3}},
    "empty": "",
    "flag": False,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, True),
        ("always", True),
        ("age == 30", True),
        ("age != 30", False),
        ("age >= 18 and age < 65", True),
        ("age > 40 or tier == 'premium'", True),
        ("not flag", True),
        ('!flag && tier === "premium"', True),
        ("tier !== 'premium' || age <= 29", False),
        ("score > 7", True),  # numeric strings compare as numbers
        ("score == 7.5", True),
        ("'vip' in tags", True),
        ("'gold' not in tags", True),
        ("tier in ['premium', 'enterprise']", True),
        ("user.name == 'Ada' and user.plan.seats >= 3", True),
        ("tags.length == 2", True),
        ("exists user", True),
        ("exists(missing)", False),
        ("exists empty", False),
        ("not exists missing", True),
        ("missing == null", True),
        ("missing > 3", False),  # null never orders
        ("tier > 3", False),  # mixed types never order
        ("(age > 18 or flag) and not (tier == 'free')", True),
        ("TRUE and age == 30", True),
    ],
)
def test_evaluates(source: str | None, expected: bool) -> None:
    assert compile_expression(source).evaluate(VARS.get) is expected


@pytest.mark.parametrize(
    "source",
    ["age >=", "__import__('os').system('true')", "age = 3", "(age > 1", "a b", "tags[0]", "1 +"],
)
def test_refuses(source: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(source)


def test_names_lists_roots() -> None:
    expr = compile_expression("user.tier == 'x' and exists other or 'a' in [third, 'b']")
    assert expr.names == {"user", "other", "third"}
