"""Pane 3, the parts bin: a table over the catalog with filter, tag, note, remove, verify.

Catalog calls (file I/O under a lock) run in a thread worker; the table only draws rows.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static
from textual.worker import get_current_worker

from garage_tui.messages import JobFailed, PartsChanged, error_line
from garage_tui.render import human_count
from garage_tui.screens.ask import AskScreen, ConfirmScreen
from garage_tui.widgets.base import garage_app


def part_row(record: dict[str, Any]) -> tuple[str, ...]:
    source = record.get("source") or {}
    return (record["name"], record["kind"], record["address"], str(source.get("name") or ""),
            human_count(int(record.get("params") or 0)), str(record.get("dtype") or ""),
            ",".join(record.get("tags") or []), (record.get("notes") or "")[:30])


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[dict[str, Any]] = []
        self.filter_text = ""
        self._bin: Any = None

    def compose(self) -> ComposeResult:
        yield FilterInput(placeholder="filter: name, address or note (Enter applies, Esc clears)", id="parts-filter")
        yield DataTable(id="parts-table", cursor_type="row", zebra_stripes=True)
        yield Static("The bin is empty: select a part in the bay (1) and press x to extract it.", id="parts-detail")

    def on_mount(self) -> None:
        self.query_one("#parts-filter").display = False
        self.query_one(DataTable).add_columns("name", "kind", "address", "source", "params", "dtype", "tags", "notes")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one(DataTable))
        if not self.rows:
            self.reload()

    # ---- engine access (worker threads only) -----------------------------------------------
    def parts_bin(self) -> Any:
        """The app's parts bin; the factory may hand a zero-argument maker to keep torch lazy."""
        if self._bin is None:
            source = garage_app(self).parts_bin
            self._bin = source() if callable(source) and not hasattr(source, "list") else source
        return self._bin

    def _rows(self) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self.parts_bin().list(text=self.filter_text or None)]

    @work(thread=True, exclusive=True, group="parts")
    def reload(self, note: str = "") -> None:
        try:
            self.post_message(PartsChanged(note, self._rows()))
        except Exception as exc:  # noqa: BLE001
            self.post_message(JobFailed("parts bin", error_line(exc)))

    @work(thread=True, exclusive=True, group="parts")
    def _change(self, verb: str, name: str, value: str = "") -> None:
        try:
            bin_ = self.parts_bin()
            if verb == "tag":
                bin_.tag(name, value)
                note = f"tagged {name} with {value}"
            elif verb == "note":
                bin_.note(name, value)
                note = f"noted {name}"
            elif verb == "remove":
                bin_.remove(name)
                note = f"removed {name} (file deleted)"
            else:
                results = bin_.verify(name)
                note = "; ".join(f"{r.name}: {r.status}" for r in results)
            self.post_message(PartsChanged(note, self._rows()))
        except Exception as exc:  # noqa: BLE001
            self.post_message(JobFailed("parts bin", error_line(exc)))

    @work(thread=True, exclusive=True, group="parts")
    def extract(self, loaded: Any, address: str) -> None:
        """Extract ``address`` of the open model into the bin (the bay's x key)."""
        worker = get_current_worker()
        try:
            record = self.parts_bin().add_from_model(loaded, address)
            if not worker.is_cancelled:
                self.post_message(PartsChanged(f"extracted {address} as {record.name}", self._rows()))
        except Exception as exc:  # noqa: BLE001
            self.post_message(JobFailed("extract", error_line(exc)))

    # ---- drawing ---------------------------------------------------------------------------
    @on(PartsChanged)
    def _on_parts_changed(self, message: PartsChanged) -> None:
        self.rows = message.rows
        table = self.query_one(DataTable)
        table.clear()
        for record in self.rows:
            table.add_row(*part_row(record), key=record["name"])
        if message.note:
            garage_app(self).notify(message.note)
        self._show_detail()
        garage_app(self).refresh_bindings()

    @on(DataTable.RowHighlighted, "#parts-table")
    def _on_row(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        record = self.current()
        detail = self.query_one("#parts-detail", Static)
        if record is None:
            detail.update("The bin is empty: select a part in the bay (1) and press x to extract it."
                          if not self.filter_text else f"No part matches “{self.filter_text}”.")
            return
        shapes = ", ".join(f"{t['name']} {'×'.join(map(str, t['shape']))}" for t in record["tensors"][:3])
        detail.update(f"{record['name']}: {record['kind']} {record['address']} from {record['source'].get('name')} "
                      f"({record.get('family')}) · sha256 {record['sha256'][:12]} · {shapes}")

    def current(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    # ---- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("tag", "note", "remove", "verify"):
            return self.current() is not None
        return True

    def action_filter(self) -> None:
        box = self.query_one("#parts-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#parts-filter")
    def _on_filter(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply_filter(event.value)

    def apply_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.query_one(DataTable).focus()
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    def _ask(self, verb: str, question: str) -> None:
        record = self.current()
        if record is None:
            return

        def done(answer: str | None) -> None:
            if answer:
                self._change(verb, record["name"], answer.strip())

        garage_app(self).push_screen(AskScreen(question.format(name=record["name"])), done)

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
                self._change("remove", record["name"])

        garage_app(self).push_screen(ConfirmScreen(f"Remove {record['name']} and its file?"), done)

    def action_verify(self) -> None:
        record = self.current()
        if record is not None:
            self._change("verify", record["name"])

