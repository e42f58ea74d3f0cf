"""The ctrl+p command palette and the ``?`` help screen: both list every garage binding."""

from __future__ import annotations

from typing import Any

from textual.app import SystemCommand
from textual.screen import Screen

from garage_tui.screens.help import HelpScreen


class PaletteMixin:
    """Every action of the garage in the palette, every binding in help: mixed into ``GarageApp``."""

    def get_system_commands(self, screen: Screen) -> Any:
        """Textual's own commands, then the garage's (see ``keymap.palette_commands``)."""
        yield from super().get_system_commands(screen)  # type: ignore[misc]
        from garage_tui.keymap import palette_commands

        for title, help_text, callback in palette_commands(self):
            yield SystemCommand(title, help_text, callback)

    def action_show_help(self) -> None:
        from garage_tui.keymap import binding_rows

        self.push_screen(HelpScreen(binding_rows(self)))
