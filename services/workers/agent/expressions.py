"""A tiny, safe expression language for flow conditions (no ``eval``).

Grammar (Python words and the seed's JavaScript spellings both accepted)::

    expr    := and (("or" | "||") and)*
    and     := not (("and" | "&&") not)*
    not     := ("not" | "!") not | compare
    compare := operand (op operand)?   op: == != === !== < <= > >= in, not in
    operand := number | 'string' | "string" | true | false | null | none
             | name("." name)* | "exists" name | "exists" "(" name ")"
             | "(" expr ")" | "[" [expr ("," expr)*] "]"

Names are looked up through a callable; an unknown name is ``None``, so a missing
variable makes a comparison false rather than raising. ``x.length`` is the length of
a list or string (the seed writes ``conversation_history.length``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import SwitchboardError

Lookup = Callable[[str], Any]

# Names the engine provides to conditions and templates without a declaration.
BUILTIN_NAMES = frozenset({"hour", "minute", "day_of_week", "date", "turn_count", "input"})

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d+)?)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>===|!==|==|!=|<=|>=|&&|\|\||[<>!()\[\],])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_CONSTANTS = {"true": True, "false": False, "null": None, "none": None}
_ALIASES = {"===": "==", "!==": "!=", "&&": "and", "||": "or", "!": "not"}
_COMPARE = {"==", "!=", "<", "<=", ">", ">=", "in", "not in"}


class ExpressionError(SwitchboardError):
    """A condition does not parse."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # num | str | op | name | end
    value: Any


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    source = source.rstrip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"unexpected character {source[pos:].lstrip()[:1]!r}")
        pos = m.end()
        if (num := m.group("num")) is not None:
            tokens.append(_Tok("num", float(num) if "." in num else int(num)))
        elif (text := m.group("str")) is not None:
            tokens.append(_Tok("str", re.sub(r"\\(.)", r"\1", text[1:-1])))
        elif (op := m.group("op")) is not None:
            tokens.append(_Tok("op", _ALIASES.get(op, op)))
        else:
            name = m.group("name")
            low = name.lower()
            if low in _CONSTANTS:
                tokens.append(_Tok("const", _CONSTANTS[low]))
            elif low in {"and", "or", "not", "in", "exists"}:
                tokens.append(_Tok("op", low))
            else:
                tokens.append(_Tok("name", name))
    tokens.append(_Tok("end", None))
    return tokens


# AST nodes are plain tuples: ("const", v) ("name", dotted) ("exists", dotted)
# ("list", items) ("not", x) ("and", a, b) ("or", a, b) ("cmp", op, a, b)
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.pos = 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.pos += 1
        return tok

    def accept(self, op: str) -> bool:
        if self.peek().kind == "op" and self.peek().value == op:
            self.pos += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise ExpressionError(f"expected {op!r}, found {self._describe(self.peek())}")

    @staticmethod
    def _describe(tok: _Tok) -> str:
        return "end of expression" if tok.kind == "end" else repr(tok.value)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression")
        node = self.or_()
        if self.peek().kind != "end":
            raise ExpressionError(f"unexpected {self._describe(self.peek())}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("or"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.accept("and"):
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.peek().kind == "op" and self.peek().value == "not":
            if not (self.peek(1).kind == "op" and self.peek(1).value == "in"):
                self.pos += 1
                return ("not", self.not_())
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op" and tok.value == "not" and self.peek(1).value == "in":
            self.pos += 2
            return ("cmp", "not in", left, self.operand())
        if tok.kind == "op" and tok.value in _COMPARE:
            self.pos += 1
            return ("cmp", tok.value, left, self.operand())
        return left

    def operand(self) -> Node:
        tok = self.take()
        if tok.kind in {"num", "str", "const"}:
            return ("const", tok.value)
        if tok.kind == "name":
            return ("name", tok.value)
        if tok.kind == "op" and tok.value == "exists":
            paren = self.accept("(")
            name = self.take()
            if name.kind != "name":
                raise ExpressionError("'exists' needs a variable name")
            if paren:
                self.expect(")")
            return ("exists", name.value)
        if tok.kind == "op" and tok.value == "(":
            node = self.or_()
            self.expect(")")
            return node
        if tok.kind == "op" and tok.value == "[":
            items: list[Node] = []
            if not self.accept("]"):
                items.append(self.or_())
                while self.accept(","):
                    items.append(self.or_())
                self.expect("]")
            return ("list", tuple(items))
        raise ExpressionError(f"unexpected {self._describe(tok)}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in {"in", "not in"}:
        try:
            found = left in right if right is not None else False
        except TypeError:
            found = False
        return found if op == "in" else not found
    ln, rn = _number(left), _number(right)
    both_numbers = (
        ln is not None and rn is not None and not (isinstance(left, str) and isinstance(right, str))
    )
    if op in {"==", "!="}:
        equal = ln == rn if both_numbers else left == right
        return equal if op == "==" else not equal
    if both_numbers:
        a, b = ln, rn
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right  # type: ignore[assignment]
    else:
        return False  # None or mixed types never order
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]


def _resolve(lookup: Lookup, dotted: str) -> Any:
    root, *rest = dotted.split(".")
    value = lookup(root)
    for part in rest:
        if part == "length" and isinstance(value, list | str | dict):
            value = len(value)
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


@dataclass(frozen=True)
class Expression:
    """A parsed condition; evaluate it against variables any number of times."""

    source: str
    tree: Node

    @property
    def names(self) -> frozenset[str]:
        """The root names the expression reads (for validation warnings)."""
        found: set[str] = set()

        def walk(node: Node) -> None:
            if node[0] in {"name", "exists"}:
                found.add(node[1].split(".")[0])
            for child in node[1:]:
                if isinstance(child, tuple):
                    if child and isinstance(child[0], str):
                        walk(child)
                    else:
                        for item in child:
                            walk(item)

        walk(self.tree)
        return frozenset(found)

    def evaluate(self, lookup: Lookup) -> bool:
        """The truth of the expression; unknown names read as ``None``."""
        return bool(self._eval(self.tree, lookup))

    def _eval(self, node: Node, lookup: Lookup) -> Any:
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "name":
            return _resolve(lookup, node[1])
        if kind == "exists":
            return _resolve(lookup, node[1]) not in (None, "")
        if kind == "list":
            return [self._eval(item, lookup) for item in node[1]]
        if kind == "not":
            return not self._eval(node[1], lookup)
        if kind == "and":
            return bool(self._eval(node[1], lookup)) and bool(self._eval(node[2], lookup))
        if kind == "or":
            return bool(self._eval(node[1], lookup)) or bool(self._eval(node[2], lookup))
        return _compare(node[1], self._eval(node[2], lookup), self._eval(node[3], lookup))


ALWAYS = Expression("always", ("const", True))


def compile_expression(source: str | None) -> Expression:
    """Parse a condition; ``None``, ``""`` and ``"always"`` are always true."""
    if source is None or not source.strip() or source.strip().lower() == "always":
        return ALWAYS
    return Expression(source, _Parser(source).parse())
