"""One set of list keys for every table of the garage: j/k, g/G, PageUp/PageDown, Home/End."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable


class KeyTable(DataTable[Any]):
    """A ``DataTable`` that also answers to vim keys; ``as_text`` gives what it shows as plain text."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="list.down"),
        Binding("k", "cursor_up", "Up", show=False, id="list.up"),
        Binding("g", "scroll_top", "First", show=False, id="list.first"),
        Binding("G", "scroll_bottom", "Last", show=False, id="list.last"),
    ]

    def as_text(self) -> str:
        """The header and every row, tab-separated (what ``y`` copies)."""
        header = "\t".join(str(column.label) for column in self.ordered_columns)
        rows = ["\t".join(str(cell) for cell in self.get_row_at(index)) for index in range(self.row_count)]
        return "\n".join([header, *rows])

    def highlighted_key(self) -> str | None:
        """The key of the highlighted row (actions act on what the user sees highlighted)."""
        if self.row_count == 0 or self.cursor_row is None or not 0 <= self.cursor_row < self.row_count:
            return None
        key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value
        return None if key is None else str(key)
