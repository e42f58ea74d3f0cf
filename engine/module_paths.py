"""Dotted module paths, joined the one way every room joins them."""

from __future__ import annotations


def join_path(*parts: str | None) -> str:
    """``join_path("model", "", "layers", "3")`` → ``"model.layers.3"``: empty pieces drop out."""
    return ".".join(p for p in parts if p)
