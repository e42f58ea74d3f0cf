"""The attribution view: a layer × head heat map and the top nodes, exact re-check filling in.

The view runs one attribution job through the garage's worker skeleton (``jobs.start_job``):
it scores every node, posts the report (the heat map and ranked list draw at once), then
re-checks the top nodes by exact patching and posts each batch as it lands, so the ``exact``
column fills in, and last measures the circuit faithfulness of the method's ranking (the
engine's ``Faithfulness``: the top-n heads and MLPs alone, the rest corrupted), shown on its
own line. Esc cancels the job; Enter on a row posts ``AttributionView.NodeSelected``
with the part's address so the app can jump to it in the bay. The engine is imported only
inside the worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Static
from textual_plotext import PlotextPlot

from garage_tui.controller import JobContext
from garage_tui.messages import JobCancelled, JobFailed
from garage_tui.widgets.lists import KeyTable

if TYPE_CHECKING:
    from engine.attribution import AttributionReport, Attributor, Faithfulness

SHOWN_NODES = 20
PENDING = "…"
FAITH_WAITING = "circuit faithfulness: measured after the exact re-check"


def part_of(address: str) -> str:
    """The bay address a node lives on: a residual position ``L3.out@4`` is layer ``L3``."""
    return address.split(".out@")[0] if ".out@" in address else address


def faithfulness_cells(faith: Faithfulness) -> list[tuple[int, str]]:
    """``(n, fraction recovered)`` per circuit size, as the view prints them."""
    return [(n, f"{value:.3f}") for n, value in zip(faith.sizes, faith.recovered, strict=True)]


def faithfulness_line(faith: Faithfulness, method: str) -> str:
    cells = " · ".join(f"n={n}: {value}" for n, value in faithfulness_cells(faith))
    return (f"faithfulness of {method}'s top-n {faith.scope} (the rest corrupted; share of clean − corrupted "
            f"{faith.difference:.3f} recovered): {cells}")


def heat_cells(grid: list[list[float]]) -> list[list[float]]:
    """|score| per (layer, head) scaled to 0…255 for plotext's matrix plot (brightest = largest)."""
    peak = max((abs(value) for row in grid for value in row), default=0.0) or 1.0
    return [[round(255 * abs(value) / peak) for value in row] for row in grid]


class AttributionView(Vertical):
    """Heat map of head scores, the ranked top nodes with their exact re-check, and a status line."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="attribution.stop"),
        Binding("enter", "jump", "Jump to node", id="attribution.jump"),
    ]

    class Scored(Message):
        def __init__(self, report: AttributionReport) -> None:
            super().__init__()
            self.report = report

    class Checked(Message):
        def __init__(self, indices: list[int], values: list[float]) -> None:
            super().__init__()
            self.indices, self.values = indices, values

    class Faithful(Message):
        def __init__(self, faithfulness: Faithfulness) -> None:
            super().__init__()
            self.faithfulness = faithfulness

    class Finished(Message):
        def __init__(self, summary: str, error: str | None = None) -> None:
            super().__init__()
            self.summary, self.error = summary, error

    class NodeSelected(Message):
        """The user picked a node: ``address`` is its bay part (``L3.attn.h4``, ``L3.mlp``, ``L3``)."""

        def __init__(self, address: str) -> None:
            super().__init__()
            self.address = address

    def __init__(self, top: int = SHOWN_NODES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top = top
        self.report: AttributionReport | None = None
        self.faithfulness: Faithfulness | None = None
        self.cancel = threading.Event()
        self.running = False

    def compose(self) -> ComposeResult:
        yield Static("attribution: no job yet", id="attribution-status")
        yield Static(FAITH_WAITING, id="attribution-faith")
        with Horizontal(id="attribution-body"):
            yield KeyTable(id="attribution-nodes", cursor_type="row", zebra_stripes=True)
            yield PlotextPlot(id="attribution-heat")

    def on_mount(self) -> None:
        table = self.query_one("#attribution-nodes", KeyTable)
        for column in ("#", "node", "score", "exact"):
            table.add_column(column, key=column)

    def start(self, make_job: Callable[[], Attributor], method: str = "atp", ig_steps: int = 5,
              lock: threading.Lock | None = None) -> None:
        """Run ``make_job()`` (built in the worker thread) with ``method``; Esc stops it.

        The job runs through the garage's one worker skeleton (``jobs.start_job``); ``lock`` (the
        workbench's model lock) is held for the whole job, so no other pass runs on the model meanwhile.
        """
        from garage_tui.jobs import start_job

        self.running = True
        self.report = None
        self.faithfulness = None
        self.query_one("#attribution-faith", Static).update(Text(FAITH_WAITING))
        self._status(f"attribution: {method} running · Esc stops")
        start_job(self, "attribution", lambda ctx: self._attribute(make_job, method, ig_steps, ctx),
                  group="attribution", name="_attribute", model_lock=lock)

    def _attribute(self, make_job: Callable[[], Attributor], method: str, ig_steps: int,
                   ctx: JobContext) -> Message | None:
        """The job: score, post the report, re-check the top nodes batch by batch, measure the top-n
        circuits' faithfulness, return the summary."""
        self.cancel = cancel = ctx.cancel
        job = make_job()
        report = job.score(method, ig_steps, cancel=cancel)
        ctx.post(self.Scored(report))

        def checked(indices: list[int], values: list[float]) -> None:
            ctx.post(self.Checked(indices, values))

        check = job.recheck(report, self.top, cancel=cancel, on_chunk=checked)
        ctx.post(self.Faithful(job.faithfulness(report, cancel=cancel)))
        return self.Finished(
            f"{report.method} over {report.n_pairs} pair(s) in {report.seconds:.2f}s · exact re-check of "
            f"{check.scope}: Spearman ρ {check.spearman:.3f}, mean |error| {check.mean_abs_error:.3g}")

    def action_stop(self) -> None:
        self.cancel.set()
        self.workers.cancel_group(self, "attribution")
        if self.running:
            self._status("attribution: stopping…")

    def action_jump(self) -> None:
        key = self.query_one("#attribution-nodes", KeyTable).highlighted_key()
        if key is not None:
            self.post_message(self.NodeSelected(part_of(key)))

    @on(KeyTable.RowSelected, "#attribution-nodes")
    def _row_chosen(self, event: KeyTable.RowSelected) -> None:
        event.stop()
        self.action_jump()

    @on(Scored)
    def _show_scores(self, message: Scored) -> None:
        self.report = report = message.report
        table = self.query_one("#attribution-nodes", KeyTable)
        table.clear()
        for rank, entry in enumerate(report.top_nodes(self.top), start=1):
            table.add_row(str(rank), entry.address, f"{entry.score:.4f}", PENDING, key=entry.address)
        widget = self.query_one("#attribution-heat", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.matrix_plot(heat_cells(report.head_grid()))
        plt.title(f"|{report.method} score| per head (rows: layers 0–{report.n_layers - 1}, columns: heads)")
        widget.refresh()
        self._status(f"attribution: {report.method} scored {len(report.nodes)} nodes in {report.seconds:.2f}s · "
                     f"exact re-check of the top {min(self.top, len(report.nodes))}, then circuit faithfulness, "
                     "running · Esc stops")

    @on(Checked)
    def _fill_exact(self, message: Checked) -> None:
        if self.report is None:
            return
        table = self.query_one("#attribution-nodes", KeyTable)
        for index, value in zip(message.indices, message.values, strict=True):
            entry = self.report.nodes[index]
            table.update_cell(entry.address, "exact", f"{value:.4f}")

    @on(Faithful)
    def _show_faithfulness(self, message: Faithful) -> None:
        if self.report is None:
            return
        self.faithfulness = message.faithfulness
        line = faithfulness_line(message.faithfulness, self.report.method)
        self.query_one("#attribution-faith", Static).update(Text(line))

    @on(Finished)
    def _finished(self, message: Finished) -> None:
        self.running = False
        self._status(f"attribution: {message.error}" if message.error else message.summary)

    @on(JobFailed)
    def _failed(self, message: JobFailed) -> None:
        message.stop()  # the view's own line says it; the app's job state is not this job's
        self.post_message(self.Finished("attribution stopped", message.message))

    @on(JobCancelled)
    def _cancelled(self, message: JobCancelled) -> None:
        message.stop()
        self.running = False
        self._status("attribution: cancelled")

    def _status(self, line: str) -> None:
        self.query_one("#attribution-status", Static).update(Text(line))

    def faithfulness_shown(self) -> str:
        """The faithfulness line as shown (for tests and copying)."""
        return str(self.query_one("#attribution-faith", Static).render())

    def exact_column(self) -> list[str]:
        """What the exact column shows, top to bottom (for tests and copying)."""
        table = self.query_one("#attribution-nodes", KeyTable)
        return [str(table.get_row_at(index)[3]) for index in range(table.row_count)]
