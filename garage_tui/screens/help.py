"""``?``/F1: every binding of the garage, grouped by where it works, with its current keys."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from garage_tui.widgets.lists import KeyTable


class HelpScreen(ModalScreen[None]):
    """A table of (where, keys, what, binding id); Esc, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str, str]], title: str = "", notes: list[str] | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.title_text = title
        self.notes = list(notes or [])

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            if self.title_text or self.notes:
                # the session's own title and notes (a guided tour says what to try here)
                yield Static(Text("\n".join([self.title_text, *self.notes]).strip()), id="help-session")
            yield Static("Keys — rebind any of them by id in GARAGE_HOME/keymap.yaml", id="help-title")
            table = KeyTable(id="help-table", cursor_type="row", zebra_stripes=True)
            table.add_columns("where", "keys", "does", "id")
            for row in self.rows:
                table.add_row(*row)
            yield table

    def on_mount(self) -> None:
        self.query_one(KeyTable).focus()
