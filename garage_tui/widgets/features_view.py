"""The features view: an attached SAE's top features for the current prompt, each with its top tokens.

The view runs one overview job through the garage's worker skeleton (the engine is imported only there), posts
the typed ``FeaturesOverview``, and draws a table of features; the detail line under it shows
the highlighted feature's top tokens with their context. Esc cancels a running job; Enter on a
row posts ``FeaturesView.FeatureChosen`` so the app can read or steer that feature.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from garage_tui.controller import JobContext
from garage_tui.messages import JobCancelled, JobFailed
from garage_tui.widgets.lists import KeyTable

if TYPE_CHECKING:
    from engine.features.reading import FeaturesOverview

OverviewJob = Callable[[threading.Event], "FeaturesOverview"]


def hit_line(before: str, token: str, after: str, activation: float) -> Text:
    """``…before[token]after…  1.234`` with the token in bold, newlines shown as ⏎."""
    line = Text()
    line.append(f"{activation:8.3f}  ")
    line.append("…" + before.replace("\n", "⏎"))
    line.append(token.replace("\n", "⏎"), style="bold reverse")
    line.append(after.replace("\n", "⏎") + "…")
    return line


class FeaturesView(Vertical):
    """Top features of the selected address for the prompt, with a detail pane of top tokens."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="features.stop"),
        Binding("enter", "choose", "Use feature", id="features.choose"),
    ]

    class Computed(Message):
        def __init__(self, overview: FeaturesOverview) -> None:
            super().__init__()
            self.overview = overview

    class Failed(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    class FeatureChosen(Message):
        """The user picked a feature of the coder at ``address``."""

        def __init__(self, address: str, feature: int) -> None:
            super().__init__()
            self.address, self.feature = address, feature

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.overview: FeaturesOverview | None = None
        self.cancel = threading.Event()
        self.running = False

    def compose(self) -> ComposeResult:
        yield Static("features: attach an SAE to see its features", id="features-status")
        yield KeyTable(id="features-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="features-detail")

    def on_mount(self) -> None:
        table = self.query_one("#features-table", KeyTable)
        for column in ("feature", "max act", "at token", "fires most on"):
            table.add_column(column, key=column)

    def start(self, job: OverviewJob, label: str = "", lock: threading.Lock | None = None) -> None:
        """Run ``job(cancel)`` through the garage's worker skeleton; Esc cancels it.

        ``lock`` (the workbench's model lock) makes the overview wait for the model to be free.
        """
        from garage_tui.jobs import start_job

        self.running = True
        self._status(f"features: reading {label} · Esc stops".replace("  ", " "))

        def compute(ctx: JobContext) -> Message | None:
            self.cancel = ctx.cancel
            return self.Computed(job(ctx.cancel))

        start_job(self, "features", compute, group="features", name="_features", model_lock=lock)

    def action_stop(self) -> None:
        self.cancel.set()
        self.workers.cancel_group(self, "features")
        if self.running:
            self._status("features: stopping…")

    def action_choose(self) -> None:
        key = self.query_one("#features-table", KeyTable).highlighted_key()
        if key is not None and self.overview is not None:
            self.post_message(self.FeatureChosen(self.overview.address, int(key)))

    @on(KeyTable.RowSelected, "#features-table")
    def _row_chosen(self, event: KeyTable.RowSelected) -> None:
        event.stop()
        self.action_choose()

    @on(KeyTable.RowHighlighted, "#features-table")
    def _row_highlighted(self, event: KeyTable.RowHighlighted) -> None:
        event.stop()
        self._show_detail()

    @on(Computed)
    def _show(self, message: Computed) -> None:
        self.running = False
        self.overview = overview = message.overview
        table = self.query_one("#features-table", KeyTable)
        table.clear()
        for item in overview.features:
            tops = ", ".join(repr(hit.token) for hit in item.top_tokens[:4]) or "—"
            table.add_row(f"#{item.feature}", f"{item.activation:.3f}", repr(item.token), tops, key=str(item.feature))
        self._status(f"features: {overview.coder} at {overview.address} · {len(overview.features)} active on the "
                     f"prompt · top tokens over {overview.tokens_read} tokens of text")
        self._show_detail()

    @on(Failed)
    def _failed(self, message: Failed) -> None:
        self.running = False
        self._status(f"features: {message.error}")

    @on(JobFailed)
    def _job_failed(self, message: JobFailed) -> None:
        message.stop()  # the view's status line says it; the app's job state is not this job's
        self.post_message(self.Failed(message.message))

    @on(JobCancelled)
    def _job_cancelled(self, message: JobCancelled) -> None:
        message.stop()
        self.running = False
        self._status("features: cancelled")

    def _show_detail(self) -> None:
        detail = self.query_one("#features-detail", Static)
        key = self.query_one("#features-table", KeyTable).highlighted_key()
        if self.overview is None or key is None:
            detail.update("")
            return
        item = next(f for f in self.overview.features if str(f.feature) == key)
        lines = Text(f"feature #{item.feature}: top tokens\n", style="bold")
        for hit in item.top_tokens:
            lines.append_text(hit_line(hit.before, hit.token, hit.after, hit.activation))
            lines.append("\n")
        detail.update(lines)

    def _status(self, line: str) -> None:
        self.query_one("#features-status", Static).update(Text(line))

    def status(self) -> str:
        return str(self.query_one("#features-status", Static).render())

    def detail(self) -> str:
        return str(self.query_one("#features-detail", Static).render())
