"""Pane 2, diagnostics: statistics and charts for the selected part and the current prompt.

The numbers come from the workbench controller as typed reports (``RunReport``,
``AttentionReport``, ``ImportanceReport``); the widgets here only draw them (once per run,
never on a timer). ``A`` and ``I`` post requests; the app runs them.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Static
from textual_plotext import PlotextPlot

from garage_tui.controller import AttentionReport, ImportanceReport, RunReport, Workbench
from garage_tui.messages import AttentionRequested, ImportanceRequested
from garage_tui.widgets.lists import KeyTable

STAT_ROWS = ("mean", "std", "rms", "min", "max", "absmax", "sparsity", "kurtosis")
CHARTS = {"norm-plot": "residual norm per layer", "hist-plot": "activation histogram",
          "entropy-plot": "attention entropy per head (A)", "pattern-plot": "attention pattern (A)"}
# Under NO_COLOR two lines differ only by their marker: now is a dot, before a cross.
NOW_MARKER, BEFORE_MARKER = "•", "x"
EMPTY_ENTROPY = "press A to read every head's attention entropy for this prompt"


SHADES = " ░▒▓█"


def pattern_grid(pattern: list[list[float]], tokens: list[str], address: str, width: int = 10) -> str:
    """An attention pattern as shaded cells, one row per query token (readable without colour)."""
    lines = [f"{address}: query ↓ attends to key →  ( ░▒▓█ = 0…1 )"]
    shown = pattern[-16:]
    first = len(pattern) - len(shown)
    for offset, row in enumerate(shown):
        label = repr(tokens[first + offset])[:width].ljust(width)
        cells = "".join(SHADES[min(len(SHADES) - 1, int(p * (len(SHADES) - 1) + 0.5))] * 2 for p in row[-24:])
        lines.append(f"{label} {cells}")
    return "\n".join(lines)


def axis_label(value: float) -> str:
    """A short tick label: 3 significant digits, no 17-digit floats."""
    if value == 0:
        return "0"
    return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"


class DiagnosticsPane(Vertical):
    """Stats table (now vs before the edits), residual-norm and histogram charts, logit lens."""

    BINDINGS = [
        Binding("c", "next_chart", "Chart", id="diagnostics.chart"),
        Binding("A", "attention", "Attention", id="diagnostics.attention"),
        Binding("I", "importance", "Head importance", id="diagnostics.importance"),
    ]

    def __init__(self, workbench: Workbench, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workbench = workbench
        self.attention: AttentionReport | None = None
        self.importance: ImportanceReport | None = None
        self.report: RunReport | None = None

    def compose(self) -> ComposeResult:
        yield Static("Run a prompt (r) to see statistics for the selected part.", id="diag-caption")
        with Horizontal(id="diag-body"):
            with VerticalScroll(id="diag-tables"):
                yield KeyTable(id="stats-table", cursor_type="row", zebra_stripes=True)
                yield KeyTable(id="importance-table", cursor_type="row", zebra_stripes=True)
                yield KeyTable(id="lens-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="diag-charts"):
                yield Static(CHARTS["norm-plot"] + " · c: next chart", id="chart-caption")
                with ContentSwitcher(initial="norm-plot", id="chart-switcher"):
                    for plot_id in ("norm-plot", "hist-plot", "entropy-plot"):
                        yield PlotextPlot(id=plot_id)
                    yield Static("Press A for the selected head's attention pattern.", id="pattern-plot")

    def on_mount(self) -> None:
        self.query_one("#stats-table", KeyTable).add_columns("statistic", "now", "before")
        self.query_one("#lens-table", KeyTable).add_columns("layer", "top token", "p", "answer rank")
        self.query_one("#importance-table", KeyTable).add_columns("part", "Δ loss", "loss")
        self.query_one("#importance-table").display = False
        self.query_one("#norm-plot", PlotextPlot).plt.xlabel("layer")
        # the entropy chart is empty until A: say so inside its frame
        self.query_one("#entropy-plot", PlotextPlot).plt.title(EMPTY_ENTROPY)

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one("#stats-table", KeyTable))

    def action_next_chart(self) -> None:
        switcher = self.query_one("#chart-switcher", ContentSwitcher)
        names = list(CHARTS)
        switcher.current = names[(names.index(switcher.current or names[0]) + 1) % len(names)]
        self.query_one("#chart-caption", Static).update(CHARTS[switcher.current] + " · c: next chart")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        workbench = self.workbench
        if action in ("attention", "importance"):
            return workbench.has_weights and workbench.job is None and bool(workbench.prompt)
        return True

    def action_attention(self) -> None:
        self.post_message(AttentionRequested())

    def action_importance(self) -> None:
        self.post_message(ImportanceRequested())

    def copy_text(self) -> tuple[str, str] | None:
        """The caption, the stats table and the lens, as the pane shows them."""
        if self.report is None:
            return None
        lines = [str(self.query_one("#diag-caption", Static).render())]
        for table_id in ("#stats-table", "#importance-table", "#lens-table"):
            table = self.query_one(table_id, KeyTable)
            if table.display and table.row_count:
                lines.append(table.as_text())
        return f"diagnostics of {self.report.point or 'the run'}", "\n".join(lines)

    # ---- drawing ---------------------------------------------------------------------------
    def _show_chart(self, plot_id: str) -> None:
        self.query_one("#chart-switcher", ContentSwitcher).current = plot_id
        self.query_one("#chart-caption", Static).update(CHARTS[plot_id] + " · c: next chart")

    def show_attention(self, report: AttentionReport) -> None:
        self.attention = report
        layer, head = report.layer, report.head
        widget = self.query_one("#entropy-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        heads = list(range(len(report.entropy)))
        if report.entropy_before is not None:
            plt.multiple_bar(heads, [report.entropy, report.entropy_before],  # type: ignore[call-arg]
                             labels=["now", "before"])
        else:
            plt.bar(heads, report.entropy)
        plt.title(f"L{layer} entropy per head (nats)")
        plt.xlabel("head")
        widget.refresh()
        self.query_one("#pattern-plot", Static).update(
            Text(pattern_grid(report.pattern, report.tokens, f"L{layer}.attn.h{head}")))
        roles = ", ".join(f"{a.rsplit('.', 1)[-1]} {r}" for a, r in report.roles.items()) or "no named roles"
        self.query_one("#diag-caption", Static).update(Text(f"attention L{layer}: {roles}"))
        self._show_chart("entropy-plot")

    def show_importance(self, report: ImportanceReport) -> None:
        self.importance = report
        table = self.query_one("#importance-table", KeyTable)
        table.display = True
        table.clear()
        for row in report.rows:
            table.add_row(row.address, f"{row.delta:+.4f}", f"{row.loss:.4f}")
        self.query_one("#diag-caption", Static).update(Text(
            f"head importance, L{report.layer} ({report.mode}-ablation, clean loss {report.clean_loss:.4f})"))

    def show_report(self, report: RunReport) -> None:
        """Draw one run's numbers; called by the app's RunFinished handler."""
        self.report = report
        edits = ", ".join(report.interventions) or "no edits"
        self.query_one("#diag-caption", Static).update(Text(f"{report.point or '-'} · “{report.prompt}” · {edits}"))
        self._draw_stats(report.stats, report.baseline_stats)
        self._draw_lens(report.lens)
        self._draw_norms(report.norms, report.baseline_norms)
        self._draw_histogram(report.stats)

    def _draw_stats(self, stats: dict[str, Any] | None, baseline: dict[str, Any] | None) -> None:
        table = self.query_one("#stats-table", KeyTable)
        table.clear()
        if not stats:
            return
        for name in STAT_ROWS:
            before = f"{baseline[name]:.4g}" if baseline else ""
            table.add_row(name, f"{stats[name]:.4g}", before)
        before = f"{baseline['token_l2']['mean']:.4g}" if baseline else ""
        table.add_row("token L2", f"{stats['token_l2']['mean']:.4g}", before)

    def _draw_lens(self, lens: dict[str, Any] | None) -> None:
        table = self.query_one("#lens-table", KeyTable)
        table.clear()
        for layer in (lens or {}).get("layers", []):
            top = layer["top"][0] if layer["top"] else {"token": "", "prob": 0.0}
            table.add_row(layer["address"], Text(repr(top["token"])), f"{top['prob']:.3f}",
                          str(layer["final_token_rank"]))

    def _draw_norms(self, norms: list[float], baseline: list[float] | None) -> None:
        widget = self.query_one("#norm-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        if norms:
            plt.plot(list(range(len(norms))), norms, label=f"{NOW_MARKER} now", marker=NOW_MARKER)
        if baseline:
            plt.plot(list(range(len(baseline))), baseline, label=f"{BEFORE_MARKER} before", marker=BEFORE_MARKER)
        widget.refresh()

    def _draw_histogram(self, stats: dict[str, Any] | None) -> None:
        widget = self.query_one("#hist-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        if stats:
            counts, edges = stats["histogram"]["counts"], stats["histogram"]["edges"]
            centres = [(edges[i] + edges[i + 1]) / 2 for i in range(len(counts))]
            plt.bar(centres, counts, width=0.8)
            ticks = [edges[0], (edges[0] + edges[-1]) / 2, edges[-1]]
            plt.xticks(ticks, [axis_label(t) for t in ticks])
            top = max(counts) if counts else 0
            plt.yticks([0, top], ["0", axis_label(top)])
            plt.xlabel("activation value")
        widget.refresh()
