"""``f``: the features of the SAE in the parts bin that reads the selected part, for the current prompt.

The screen opens on the features view and starts its overview job through the workbench
(which finds a coder part made for the open model at that address). Enter on a feature posts
``FeaturesView.FeatureChosen``, which the app answers by closing this screen and toggling an
ablation of that feature on the workbench's edits. ``q`` closes the screen; Esc stops the job.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static

from garage_tui.widgets.features_view import FeaturesView


class FeaturesScreen(Screen[None]):
    """The features view for one address and prompt."""

    BINDINGS = [Binding("q", "dismiss", "Back", id="features.close")]

    def __init__(self, workbench: Any, address: str, prompt: str) -> None:
        super().__init__()
        self.workbench = workbench
        self.loaded = workbench.loaded
        self.address, self.prompt = address, prompt

    def compose(self) -> ComposeResult:
        with Vertical(id="features-box"):
            yield Static(f"Features at {self.address} for “{self.prompt}” · Enter toggles ablating a feature · "
                         "Esc stops · q back", id="features-title")
            yield FeaturesView(id="features")

    def on_mount(self) -> None:
        workbench, loaded, address, prompt = self.workbench, self.loaded, self.address, self.prompt
        view = self.query_one(FeaturesView)
        view.start(lambda cancel: workbench.compute_features(loaded, address, prompt, cancel), address,
                   lock=workbench.model_lock)
        view.query_one("#features-table").focus()
