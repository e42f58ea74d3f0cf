"""``T``: attribution over a shipped task — pick the task, watch the heat map and the exact re-check.

The screen lists the bundled prompt-pair tasks; Enter on one starts the attribution view's job
on the open model (through the workbench, under its model lock). Enter on a ranked node posts
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


def shipped_tasks() -> list[str]:
    """The bundled tasks by name (read from the package, without importing the engine's torch code)."""
    folder = resources.files("engine").joinpath("data/tasks")
    return sorted(entry.name.removesuffix(".jsonl") for entry in folder.iterdir() if entry.name.endswith(".jsonl"))


class AttributionScreen(Screen[None]):
    """The task list above the attribution view."""

    BINDINGS = [Binding("q", "dismiss", "Back", id="attribution.close")]

    def __init__(self, workbench: Any) -> None:
        super().__init__()
        self.workbench = workbench
        self.loaded = workbench.loaded
        self.task_name: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="attribution-box"):
            yield Static(f"Attribution on {self.loaded.name}: pick a task (Enter), then Enter on a node jumps to it "
                         "in the bay · Esc stops · q back", id="attribution-title")
            yield OptionList(*shipped_tasks(), id="attribution-tasks")
            yield AttributionView(top=ATTRIBUTION_TOP, id="attribution")

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
        view.start(lambda: workbench.make_attributor(loaded, task, ATTRIBUTION_PAIRS), "atp",
                   lock=workbench.model_lock)
        view.query_one("#attribution-nodes").focus()
