"""Walking and editing a decoded msgpack tree: the structural fuzzers' tools (tests/test_wire.py,
simulations/fuzz_security.py) replace one node of a valid message with any value."""

from __future__ import annotations

from typing import Any, Iterator


def paths(tree: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (a tuple of list indexes) in ``tree``, the root's ``()`` first."""
    yield prefix
    if isinstance(tree, list):
        for i, child in enumerate(tree):
            yield from paths(child, prefix + (i,))


def replaced(tree: Any, path: tuple, value: Any) -> Any:
    """A copy of ``tree`` whose node at ``path`` is ``value`` (lists on the way are copied)."""
    if not path:
        return value
    tree = list(tree)
    tree[path[0]] = replaced(tree[path[0]], path[1:], value)
    return tree
