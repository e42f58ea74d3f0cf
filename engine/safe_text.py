"""Untrusted text (a folder's manifest, a part's record) made safe to put into a one-line message."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["shown"]


def shown(value: Any, limit: int = 120) -> str:
    """``value`` as it may go into a one-line message: control and format characters (newlines, ANSI
    escapes, bidi overrides) become ``?``, so a crafted name cannot forge lines or recolour a terminal,
    and it is cut to ``limit`` characters."""
    text = "".join("?" if unicodedata.category(char).startswith("C") else char for char in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"
