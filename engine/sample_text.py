"""The English sample text bundled with the engine: the default text for losses and perplexity."""

from __future__ import annotations

from importlib import resources

SAMPLE_TEXT_PATH = "engine/data/sample_text.txt"  # as reports name it


def sample_text() -> str:
    """The bundled sample text (a few hundred words of plain English)."""
    return resources.files("engine").joinpath("data/sample_text.txt").read_text(encoding="utf-8")
