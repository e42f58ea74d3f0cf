"""Where the garage's panes are registered, and the chrome drawn around them.

A new view is one widget file plus one ``View`` line in ``VIEWS``: it gets a number key's
place in the strip, a numbered border title and the ``copy_text``/``focus_main`` protocol the
app relies on. Its widget takes the workbench controller in its constructor, reads state
from it, and posts requests (``messages.py``) for anything slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from garage_tui.controller import Workbench

# Keys that must stay visible at 80 columns, whatever pane has focus (first in the footer).
ESSENTIAL = ("app.help", "app.quit", "app.run", "app.save_session")


@dataclass(frozen=True)
class View:
    """One pane of the garage: its id (also the session's ``pane``), title and widget maker."""

    id: str
    title: str
    make: Callable[[Workbench], Widget]

    class Pane(Protocol):
        """What the app asks of every pane widget."""

        def focus_main(self) -> None: ...

        def copy_text(self) -> tuple[str, str] | None: ...


def _bay(workbench: Workbench) -> Widget:
    from garage_tui.widgets.bay_pane import BayPane

    return BayPane(workbench, id="bay", classes="pane")


def _diagnostics(workbench: Workbench) -> Widget:
    from garage_tui.widgets.diagnostics_pane import DiagnosticsPane

    return DiagnosticsPane(workbench, id="diagnostics", classes="pane")


def _parts(workbench: Workbench) -> Widget:
    from garage_tui.widgets.parts_pane import PartsPane

    return PartsPane(workbench, id="parts", classes="pane")


def _bench(workbench: Workbench) -> Widget:
    from garage_tui.widgets.bench_pane import BenchPane

    return BenchPane(workbench, id="bench", classes="pane")


VIEWS: list[View] = [
    View("bay", "Engine bay", _bay),
    View("diagnostics", "Diagnostics", _diagnostics),
    View("parts", "Parts bin", _parts),
    View("bench", "Build bench", _bench),
]


def session_view(view: str | None) -> str:
    """The pane a session's ``view`` names, or the first pane when it names none of ours."""
    known = [item.id for item in VIEWS]
    return view if view is not None and view in known else known[0]


def pane_strip(current: str, loaded: Any, edits: int, title: str = "") -> Text:
    """The top line: numbered panes (the current one reversed), the model, edits, session title."""
    strip = Text()
    for index, view in enumerate(VIEWS, start=1):
        if index > 1:
            strip.append("│")
        strip.append(f" {index} {view.title} ", style="reverse bold" if view.id == current else "")
    if loaded is not None:
        strip.append(f"  {loaded.name}{' (structure only)' if loaded.structure_only else ''}")
    if edits:
        strip.append(f" · {edits} edits")
    if title:
        strip.append(f" · {title}", style="italic")
    return strip


class GarageFooter(Footer):
    """Textual's footer with the essential keys first, so a narrow terminal cuts the pane's extras.

    Textual rebuilds every key of the footer at each bindings signal (every focus move, every
    refreshed check): here it is rebuilt only when what it shows changed, which saves ~10 widgets
    restyled per key press on a slow terminal host."""

    _shown: tuple[tuple[Any, ...], ...] | None = None

    def _rows(self) -> list[tuple[Any, bool, str]]:
        rows = [(binding, enabled, tooltip) for (_, binding, enabled, tooltip) in self.screen.active_bindings.values()
                if binding.show]
        rows.sort(key=lambda row: ESSENTIAL.index(row[0].id) if row[0].id in ESSENTIAL else len(ESSENTIAL))
        seen: set[str] = set()
        unique = []
        for row in rows:
            if row[0].action not in seen:
                seen.add(row[0].action)
                unique.append(row)
        return unique

    def _signature(self, rows: list[tuple[Any, bool, str]]) -> tuple[tuple[Any, ...], ...]:
        return tuple((binding.key, self.app.get_key_display(binding), binding.description, binding.action, enabled,
                      tooltip) for binding, enabled, tooltip in rows)

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        self._shown = self._signature(self._rows())
        self.styles.grid_size_columns = len(self._shown)
        for key, display, description, action, enabled, tooltip in self._shown:
            yield FooterKey(key, display, description, action, disabled=not enabled,
                            tooltip=tooltip).data_bind(compact=Footer.compact)

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self._recompose_if_changed)

    async def _recompose_if_changed(self) -> None:
        if self.is_attached and self._signature(self._rows()) != self._shown:
            await self.recompose()
