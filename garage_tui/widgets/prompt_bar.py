"""The prompt line: Enter runs the model, Esc goes back to the pane (or cancels a job)."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class PromptInput(Input):
    """One line of prompt; its Esc is the app's ``leave_prompt`` (cancel a job, else back to the pane)."""

    BINDINGS = [Binding("escape", "app.leave_prompt", "Back to pane", id="prompt.leave")]
