"""What a value decoded from JSON holds in this process, about: the size a cap must count.

A kernel chooses what its messages decode into. Counting characters undercounts: ``[[]] *
450000`` is 1.8 MB of JSON and 25 MB of Python lists, and an astral character is 4 bytes in a
``str``. So caps on what kernelenv keeps count ``sys.getsizeof`` of every object, containers
and their keys included.
"""

from __future__ import annotations

import sys
from typing import Any


def held_bytes(value: Any) -> int:
    """The memory ``value`` and everything it contains take, about (shared objects count
    each time they are referenced, so this is an upper bound for JSON-decoded data)."""
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return total
