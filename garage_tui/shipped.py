"""Where the shipped themes, example recipes and example sessions lie, in a checkout or a wheel.

The repository keeps them in top-level ``themes/``, ``recipes/`` and ``sessions/`` folders;
``setup.py`` copies them into ``garage_tui/data/`` when a wheel is built, because an installed
package cannot reach folders beside it.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_FOLDERS = ("themes", "recipes", "sessions")
_PACKAGE = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """The folder holding the shipped ``name`` files: the wheel's copy, else the checkout's."""
    if name not in SHIPPED_FOLDERS:
        raise ValueError(f"no shipped folder '{name}'; choose one of {', '.join(SHIPPED_FOLDERS)}")
    packaged = _PACKAGE / "data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name
