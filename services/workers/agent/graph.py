"""Graph checks on a flow's node ids: what is reachable, and which cycles never wait."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def reachable(roots: Iterable[str], edges: Mapping[str, Sequence[str]]) -> set[str]:
    """Every node reachable from ``roots`` (roots included)."""
    seen: set[str] = set()
    stack = [r for r in roots if r in edges]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(t for t in edges.get(node, ()) if t in edges and t not in seen)
    return seen


def cycles(order: Sequence[str], edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component that has a cycle.

    ``order`` fixes which node each reported cycle starts from (the earliest one), so
    error messages are stable. Iterative Tarjan: flows can be long.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in order:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [t for t in edges.get(node, ()) if t in edges]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    position = {node: i for i, node in enumerate(order)}
    found = []
    for component in components:
        members = set(component)
        start = min(component, key=lambda n: position.get(n, len(position)))
        if len(component) == 1 and start not in edges.get(start, ()):
            continue
        found.append(_path(start, members, edges))
    return sorted(found, key=lambda c: position.get(c[0], len(position)))


def _path(start: str, members: set[str], edges: Mapping[str, Sequence[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside one component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges.get(node, ()):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return [start, start]
