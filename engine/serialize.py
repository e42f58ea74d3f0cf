"""``to_json``: the one way a typed result becomes JSON-safe data (what ``--json`` prints).

A result with its own ``to_dict()`` is written that way (the report chooses its shape); any
other dataclass field by field; mappings and sequences item by item; tensors as nested lists;
paths as strings; anything else by its ``repr``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def to_json(value: Any) -> Any:
    """``value`` as plain dicts, lists, strings, numbers, booleans and None (``json.dumps``-ready)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_json(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: to_json(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # inf and nan stay floats: the writer decides (the CLI writes them as null)
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    tolist = getattr(value, "tolist", None)  # tensors and numpy arrays
    if callable(tolist):
        return to_json(tolist())
    return repr(value)
