"""The prompt line: Enter runs the model, Esc goes back to the pane (or cancels a job)."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from garage_tui.widgets.base import garage_app


class PromptInput(Input):
    BINDINGS = [Binding("escape", "leave", "Back to pane", id="prompt.leave")]

    def action_leave(self) -> None:
        app = garage_app(self)
        if getattr(app, "job", None) is not None:
            app.action_cancel_job()
            return
        app.pane_widget(app.pane).focus_main()
