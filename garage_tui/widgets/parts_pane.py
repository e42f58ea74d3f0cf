"""Pane 3, the parts bin: a table over the catalog with filter, tag, note, remove, verify.

Catalog calls (file I/O under a lock) run in the app's workers on request; the table only
draws rows. The filter narrows the rows already read, on every key, across every column.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from garage_tui.controller import Workbench
from garage_tui.messages import PartsRequested
from garage_tui.render import human_count
from garage_tui.screens.ask import AskScreen, ConfirmScreen
from garage_tui.widgets.lists import KeyTable

EMPTY = "The bin is empty: select a part in the bay (1) and press x to extract it."


def part_row(record: dict[str, Any]) -> tuple[str, ...]:
    source = record.get("source") or {}
    return (record["name"], record["kind"], record["address"], str(source.get("name") or ""),
            human_count(int(record.get("params") or 0)), str(record.get("dtype") or ""),
            ",".join(record.get("tags") or []), (record.get("notes") or "")[:30])


def matches(record: dict[str, Any], text: str) -> bool:
    """True when every word of ``text`` appears in some column of the record (notes in full)."""
    haystack = " ".join([*part_row(record), record.get("notes") or "", str(record.get("family") or "")]).lower()
    return all(word in haystack for word in text.lower().split())


class FilterInput(Input):
    """The parts filter line: Esc clears the filter and hands the keys back to the table."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", id="parts.filter_clear")]

    def action_clear_filter(self) -> None:
        self.value = ""
        self.display = False
        pane = next(ancestor for ancestor in self.ancestors if isinstance(ancestor, PartsPane))
        pane.apply_filter("")


class PartsPane(Vertical):
    """Table of catalogued parts; keys act on the highlighted row."""

    BINDINGS = [
        Binding("slash", "filter", "Filter", id="parts.filter"),
        Binding("t", "tag", "Tag", id="parts.tag"),
        Binding("n", "note", "Note", id="parts.note"),
        Binding("d,delete", "remove", "Remove", id="parts.remove"),
        Binding("v", "verify", "Verify", id="parts.verify"),
        Binding("ctrl+r", "reload", "Reload", show=False, id="parts.reload"),
    ]

    def __init__(self, workbench: Workbench, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workbench = workbench
        self.records: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.filter_text = ""
        self._asked = False

    def compose(self) -> ComposeResult:
        yield FilterInput(placeholder="filter: any column, as you type (Esc clears)", id="parts-filter")
        yield KeyTable(id="parts-table", cursor_type="row", zebra_stripes=True)
        yield Static(EMPTY, id="parts-detail")

    def on_mount(self) -> None:
        self.query_one("#parts-filter").display = False
        self.query_one(KeyTable).add_columns("name", "kind", "address", "source", "params", "dtype", "tags", "notes")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one(KeyTable))
        if not self._asked:
            self.reload()

    def reload(self) -> None:
        self._asked = True
        self.post_message(PartsRequested("reload"))

    # ---- drawing ---------------------------------------------------------------------------
    def show_rows(self, records: list[dict[str, Any]]) -> None:
        """The catalog as read by the worker; the filter decides which rows show."""
        self.records = records
        self._draw()

    def _draw(self) -> None:
        table = self.query_one(KeyTable)
        keep = table.highlighted_key()
        self.rows = [r for r in self.records if matches(r, self.filter_text)]
        table.clear()
        for record in self.rows:
            table.add_row(*[Text(cell) for cell in part_row(record)], key=record["name"])
        names = [r["name"] for r in self.rows]
        if keep in names:
            table.move_cursor(row=names.index(keep))
        self._show_detail()
        self.refresh_bindings()

    @on(KeyTable.RowHighlighted, "#parts-table")
    def _on_row(self, event: KeyTable.RowHighlighted) -> None:
        self._show_detail()
        self.refresh_bindings()

    def _show_detail(self) -> None:
        record = self.current()
        detail = self.query_one("#parts-detail", Static)
        if record is None:
            detail.update(Text(EMPTY if not self.filter_text else f"No part matches “{self.filter_text}”."))
            return
        shapes = ", ".join(f"{t['name']} {'×'.join(map(str, t['shape']))}" for t in record["tensors"][:3])
        detail.update(Text(f"{record['name']}: {record['kind']} {record['address']} from "
                           f"{record['source'].get('name')} ({record.get('family')}) · "
                           f"sha256 {record['sha256'][:12]} · {shapes}"))

    def current(self) -> dict[str, Any] | None:
        """The record of the highlighted row (by its key, so it is the row the user sees)."""
        name = self.query_one(KeyTable).highlighted_key()
        return next((record for record in self.rows if record["name"] == name), None)

    def copy_text(self) -> tuple[str, str] | None:
        record = self.current()
        if record is None:
            return None
        return record["name"], json.dumps(record, indent=2, sort_keys=True)

    # ---- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("tag", "note", "remove", "verify"):
            return self.current() is not None
        return True

    def action_filter(self) -> None:
        box = self.query_one("#parts-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#parts-filter")
    def _on_filter_typed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter_text = event.value.strip()
        self._draw()

    @on(Input.Submitted, "#parts-filter")
    def _on_filter(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply_filter(event.value)

    def apply_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.query_one(KeyTable).focus()
        self._draw()

    def action_reload(self) -> None:
        self.reload()

    def _ask(self, verb: str, question: str) -> None:
        record = self.current()
        if record is None:
            return

        def done(answer: str | None) -> None:
            if answer:
                self.post_message(PartsRequested(verb, record["name"], answer.strip()))

        self.app.push_screen(AskScreen(question.format(name=record["name"])), done)

    def action_tag(self) -> None:
        self._ask("tag", "Tag for {name}:")

    def action_note(self) -> None:
        self._ask("note", "Note for {name}:")

    def action_remove(self) -> None:
        record = self.current()
        if record is None:
            return

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.post_message(PartsRequested("remove", record["name"]))

        self.app.push_screen(ConfirmScreen(f"Remove {record['name']} and its file?"), done)

    def action_verify(self) -> None:
        record = self.current()
        if record is not None:
            self.post_message(PartsRequested("verify", record["name"]))
