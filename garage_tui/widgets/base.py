"""Typed access from a pane to the garage app that hosts it."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

if TYPE_CHECKING:
    from garage_tui.app import GarageApp


def garage_app(node: DOMNode) -> GarageApp:
    """``node.app`` as the ``GarageApp`` it always is inside the garage."""
    return cast("GarageApp", node.app)
