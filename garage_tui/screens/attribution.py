"""``T``: attribution over a shipped task — pick the task, watch the heat map, the exact re-check
and the circuit faithfulness.

The screen lists the bundled prompt-pair tasks; Enter on one starts the attribution view's job
on the open model (through the workbench, under its model lock) with the method ``m`` picks
(AtP, EAP, EAP-IG; the faithfulness line is the picked method's ranking). Enter on a ranked node posts
``AttributionView.NodeSelected``, which the app answers by closing this screen and selecting
that part in the bay. ``q`` closes the screen; Esc stops a running job.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import OptionList, Static

from garage_tui.widgets.attribution_view import AttributionView

ATTRIBUTION_PAIRS = 4  # prompt pairs per job: enough for a stable ranking, quick on a CPU
ATTRIBUTION_TOP = 10
METHODS = ("atp", "eap", "eap-ig")  # mirrors engine.attribution.METHODS without importing torch


def shipped_tasks() -> list[str]:
    """The bundled tasks by name (read from the package, without importing the engine's torch code)."""
    folder = resources.files("engine").joinpath("data/tasks")
    return sorted(entry.name.removesuffix(".jsonl") for entry in folder.iterdir() if entry.name.endswith(".jsonl"))


class AttributionScreen(Screen[None]):
    """The task list above the attribution view."""

    BINDINGS = [Binding("q", "dismiss", "Back", id="attribution.close"),
                Binding("m", "next_method", "Method (AtP, EAP, EAP-IG)", id="attribution.method")]

    def __init__(self, workbench: Any) -> None:
        super().__init__()
        self.workbench = workbench
        self.loaded = workbench.loaded
        self.task_name: str | None = None
        self.method = METHODS[0]

    def compose(self) -> ComposeResult:
        with Vertical(id="attribution-box"):
            yield Static(self._title(), id="attribution-title")
            yield OptionList(*shipped_tasks(), id="attribution-tasks")
            yield AttributionView(top=ATTRIBUTION_TOP, id="attribution")

    def _title(self) -> str:
        return (f"Attribution on {self.loaded.name} with {self.method} (m: next method): pick a task (Enter), "
                "then Enter on a node jumps to it in the bay · Esc stops · q back")

    def action_next_method(self) -> None:
        """The method the next Enter on a task runs."""
        self.method = METHODS[(METHODS.index(self.method) + 1) % len(METHODS)]
        self.query_one("#attribution-title", Static).update(self._title())

    def on_mount(self) -> None:
        self.query_one("#attribution-tasks", OptionList).focus()

    @on(OptionList.OptionSelected, "#attribution-tasks")
    def _task_chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.start(str(event.option.prompt))

    def start(self, task: str) -> None:
        """Attribute ``task``'s first pairs on the open model; the ranked list takes the keys."""
        workbench, loaded = self.workbench, self.loaded
        self.task_name = task
        view = self.query_one(AttributionView)
        view.start(lambda: workbench.make_attributor(loaded, task, ATTRIBUTION_PAIRS), self.method,
                   lock=workbench.model_lock)
        view.query_one("#attribution-nodes").focus()
