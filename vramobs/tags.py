"""Owner tags: a small, declared set of names (``weights``, ``kv_cache``, ...) that
allocations carry, so live memory can be counted per owner with bounded cardinality.

Tag 0 is ``untagged``. Up to 63 more names may be declared, each a lower-case identifier;
the C registry counts live bytes and allocations per tag.
"""

from __future__ import annotations

import re
import threading
from typing import Optional

from . import _native
from .errors import InvalidArgumentError

__all__ = ["UNTAGGED", "declare", "tag_id", "tag_name", "declared"]

UNTAGGED = "untagged"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_lock = threading.Lock()
_names: list[str] = [UNTAGGED]
_ids: dict[str, int] = {UNTAGGED: 0}


def declare(name: str) -> int:
    """Declare a tag (idempotent) and return its id."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"tag must be a str, got {name!r}", reason="invalid_tag")
    found = _ids.get(name)
    if found is not None:
        return found
    if not _NAME.match(name):
        raise InvalidArgumentError(
            f"tag must be a lower-case identifier of at most 32 characters, got {name!r}",
            reason="invalid_tag",
        )
    with _lock:
        if name in _ids:
            return _ids[name]
        if len(_names) >= _native.MAX_TAGS:
            raise InvalidArgumentError(
                f"at most {_native.MAX_TAGS - 1} tags can be declared; {name!r} is one too many",
                reason="invalid_tag",
            )
        _ids[name] = len(_names)
        _names.append(name)
        return _ids[name]


def tag_id(name: Optional[str]) -> int:
    """The id of a tag, declaring it on first use; None is untagged."""
    return 0 if name is None else declare(name)


def tag_name(tag: int) -> str:
    """The name of a tag id (``"tag_<n>"`` for ids declared outside this process's Python)."""
    return _names[tag] if 0 <= tag < len(_names) else f"tag_{tag}"


def declared() -> list[str]:
    """All declared tag names, ``untagged`` first."""
    return list(_names)
