"""RFC 6902 JSON Patch (with RFC 6901 JSON Pointers) on decoded JSON, for ``PATCH /subs/{id}``.

``apply_patch(document, operations)`` returns a patched copy; the input is never modified, and
a patch that fails half-way changes nothing. ``parse_operations`` checks the shape of a patch
document and, with ``allowed_roots``, that every ``path`` and ``from`` lies under one of the
roots, matched by whole segments (``/senders`` and ``/senders/0``, not ``/sendersX``).

Errors: :class:`PatchError` (a malformed patch, or an operation that cannot apply: a missing
member, an index out of range) and its subclasses :class:`PatchTestFailed` (a ``test`` operation
whose value differs) and :class:`PatchTooLarge` (with ``max_bytes``: the document grew past it;
checked after every operation, so a chain of ``copy`` operations that doubles the document each
time stops as soon as it crosses the limit).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import orjson

__all__ = [
    "Operation",
    "PatchError",
    "PatchTestFailed",
    "PatchTooLarge",
    "apply_patch",
    "parse_operations",
    "parse_pointer",
]

OPERATIONS: Final = ("add", "remove", "replace", "move", "copy", "test")
_INDEX = re.compile(r"0|[1-9][0-9]*")

OpName = Literal["add", "remove", "replace", "move", "copy", "test"]


class PatchError(ValueError):
    """The patch is malformed or cannot be applied to the document."""


class PatchTestFailed(PatchError):
    """A ``test`` operation found another value."""


class PatchTooLarge(PatchError):
    """The patched document would be larger than the limit."""


def _size(value: Any) -> int:
    """The size of ``value`` as compact JSON, in bytes."""
    return len(orjson.dumps(value))


@dataclass(frozen=True)
class Operation:
    op: OpName
    path: str
    value: Any = None
    from_: str | None = None

    def describe(self) -> str:
        source = f" from {self.from_}" if self.from_ is not None else ""
        return f"{self.op} {self.path}{source}"


def parse_pointer(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 pointer (``""`` is the whole document)."""
    if not isinstance(pointer, str):
        raise PatchError(f"a JSON pointer is a string, not {type(pointer).__name__}")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer {pointer!r} must start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise PatchError(f"JSON pointer {pointer!r}: '~' must be followed by 0 or 1")
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def _under(pointer: str, roots: Iterable[str]) -> bool:
    return any(pointer == root or pointer.startswith(root + "/") for root in roots)


def parse_operations(
    document: Any, *, allowed_roots: Sequence[str] | None = None, roots_error: str = ""
) -> list[Operation]:
    """Check a patch document (a JSON array of operation objects) and return its operations.

    With ``allowed_roots``, a ``path`` or ``from`` outside them raises ``PatchError(roots_error)``.
    """
    if not isinstance(document, list):
        raise PatchError("a JSON Patch is an array of operations")
    operations: list[Operation] = []
    for position, item in enumerate(document):
        where = f"operation {position}"
        if not isinstance(item, dict):
            raise PatchError(f"{where}: an operation is an object")
        op = item.get("op")
        if op not in OPERATIONS:
            raise PatchError(f"{where}: 'op' must be one of {', '.join(OPERATIONS)}")
        expected = {"op", "path"}
        if op in ("add", "replace", "test"):
            expected.add("value")
        if op in ("move", "copy"):
            expected.add("from")
        missing = sorted(expected - item.keys())
        if missing:
            raise PatchError(f"{where} ({op}): missing {', '.join(missing)}")
        path = item["path"]
        parse_pointer(path)
        from_ = item.get("from") if op in ("move", "copy") else None
        if from_ is not None:
            parse_pointer(from_)
        if allowed_roots is not None:
            pointers = [path] if from_ is None else [path, from_]
            if not all(_under(pointer, allowed_roots) for pointer in pointers):
                raise PatchError(roots_error or f"{where}: path outside {list(allowed_roots)}")
        if op == "move" and from_ is not None and path.startswith(from_ + "/"):
            raise PatchError(f"{where}: cannot move {from_} into its own child {path}")
        operations.append(
            Operation(op=cast(OpName, op), path=path, value=item.get("value"), from_=from_)
        )
    return operations


def apply_patch(
    document: Any, operations: Sequence[Operation], *, max_bytes: int | None = None
) -> Any:
    """``document`` with ``operations`` applied, in order, to a deep copy of it. With
    ``max_bytes``, :class:`PatchTooLarge` as soon as the result (as compact JSON) would be
    larger."""
    result = copy.deepcopy(document)
    size = _size(result) if max_bytes is not None else 0
    for position, operation in enumerate(operations):
        try:
            if max_bytes is not None:
                size += _growth(result, operation)
                if size > max_bytes:
                    raise PatchTooLarge(f"the result would be larger than {max_bytes} bytes")
            result = _apply(result, operation)
        except PatchTooLarge as exc:
            raise PatchTooLarge(f"operation {position} ({operation.describe()}): {exc}") from None
        except PatchTestFailed as exc:
            raise PatchTestFailed(f"operation {position} ({operation.describe()}): {exc}") from None
        except PatchError as exc:
            raise PatchError(f"operation {position} ({operation.describe()}): {exc}") from None
    return result


def _growth(document: Any, operation: Operation) -> int:
    """About how many bytes ``operation`` adds to ``document`` (negative: removes), measured
    before it runs, without copying anything."""
    op = operation.op
    if op in ("test", "move"):
        return 0
    tokens = parse_pointer(operation.path)
    removed = 0
    if op in ("remove", "replace"):
        removed = _size(_get(document, tokens))
        if op == "remove":
            return -removed
    if op == "copy":
        assert operation.from_ is not None
        added = _size(_get(document, parse_pointer(operation.from_)))
    else:
        added = _size(operation.value)
    return added + 1 - removed  # + 1: the comma before a new member


def _apply(document: Any, operation: Operation) -> Any:
    tokens = parse_pointer(operation.path)
    if operation.op == "add":
        return _add(document, tokens, copy.deepcopy(operation.value))
    if operation.op == "remove":
        _remove(document, tokens)
        return document if tokens else None
    if operation.op == "replace":
        _get(document, tokens)  # must exist
        if not tokens:
            return copy.deepcopy(operation.value)
        _remove(document, tokens)
        return _add(document, tokens, copy.deepcopy(operation.value))
    if operation.op == "test":
        if not json_equal(_get(document, tokens), operation.value):
            raise PatchTestFailed("the value differs")
        return document
    assert operation.from_ is not None
    source = parse_pointer(operation.from_)
    value = _get(document, source)
    if operation.op == "move":
        if source == tokens:
            return document
        _remove(document, source)
        return _add(document, tokens, value)
    return _add(document, tokens, copy.deepcopy(value))  # copy


def _index(container: list[Any], token: str, *, append: bool) -> int:
    if append and token == "-":
        return len(container)
    if not _INDEX.fullmatch(token):
        raise PatchError(f"{token!r} is not an array index")
    index = int(token)
    limit = len(container) if append else len(container) - 1
    if index > limit:
        raise PatchError(f"index {index} is out of range (array of {len(container)})")
    return index


def _get(document: Any, tokens: list[str]) -> Any:
    current = document
    for depth, token in enumerate(tokens):
        where = "/" + "/".join(tokens[: depth + 1])
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"{where} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, append=False)]
        else:
            raise PatchError(f"{where} does not exist")
    return current


def _add(document: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _get(document, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, append=True), value)
    else:
        raise PatchError(f"/{'/'.join(tokens[:-1])} is neither an object nor an array")
    return document


def _remove(document: Any, tokens: list[str]) -> None:
    if not tokens:
        return
    parent = _get(document, tokens[:-1])
    last = tokens[-1]
    where = "/" + "/".join(tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{where} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, append=False)]
    else:
        raise PatchError(f"{where} does not exist")


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values: numbers by value, but a boolean is never a number."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if type(left) is not type(right):
        return False
    return bool(left == right)
