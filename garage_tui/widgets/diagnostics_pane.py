"""Pane 2, diagnostics: statistics and charts for the selected part and the current prompt.

``compute`` runs in the app's run worker and returns plain numbers from engine analyzers;
the widgets here only draw them (once per run, never on a timer).
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from garage_tui.messages import AnalysisFinished, JobCancelled, JobProgressed, job_stopped
from garage_tui.widgets.base import garage_app

STAT_ROWS = ("mean", "std", "rms", "min", "max", "absmax", "sparsity", "kurtosis")
CHARTS = {"norm-plot": "residual norm per layer", "hist-plot": "activation histogram",
          "entropy-plot": "attention entropy per head (A)", "pattern-plot": "attention pattern (A)"}


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


def layer_of(address: str | None) -> int | None:
    """The layer number an address lives in (``L10.attn.h3`` → 10), or None."""
    if not address or not address.startswith("L"):
        return None
    head = address.split(".", 1)[0][1:]
    return int(head) if head.isdigit() else None


def head_of(address: str | None) -> int | None:
    last = (address or "").rsplit(".", 1)[-1]
    return int(last[1:]) if last.startswith("h") and last[1:].isdigit() else None


def stats_point(address: str | None, kind: str | None, n_layers: int) -> str | None:
    """The capture point whose statistics describe a selected part."""
    if address is None or kind is None:
        return None
    if kind == "model":
        return f"L{n_layers - 1}.out" if n_layers else None
    if kind == "head":
        return f"{address}.z"
    return f"{address}.out"


class DiagnosticsPane(Vertical):
    """Stats table (now vs before the edits), residual-norm and histogram charts, logit lens."""

    BINDINGS = [
        Binding("j", "scroll_down", "Down", show=False, id="diagnostics.down"),
        Binding("k", "scroll_up", "Up", show=False, id="diagnostics.up"),
        Binding("c", "next_chart", "Chart", id="diagnostics.chart"),
        Binding("A", "attention", "Attention", id="diagnostics.attention"),
        Binding("I", "importance", "Head importance", id="diagnostics.importance"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attention: dict[str, Any] | None = None
        self.importance: dict[str, Any] | None = None
        self.report: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static("Run a prompt (r) to see statistics for the selected part.", id="diag-caption")
        with Horizontal(id="diag-body"):
            with VerticalScroll(id="diag-tables"):
                yield DataTable(id="stats-table", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="importance-table", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="lens-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="diag-charts"):
                yield Static(CHARTS["norm-plot"] + " · c: next chart", id="chart-caption")
                with ContentSwitcher(initial="norm-plot", id="chart-switcher"):
                    for plot_id in ("norm-plot", "hist-plot", "entropy-plot"):
                        yield PlotextPlot(id=plot_id)
                    yield Static("Press A for the selected head's attention pattern.", id="pattern-plot")

    def on_mount(self) -> None:
        self.query_one("#stats-table", DataTable).add_columns("statistic", "now", "before")
        self.query_one("#lens-table", DataTable).add_columns("layer", "top token", "p", "answer rank")
        self.query_one("#importance-table", DataTable).add_columns("part", "Δ loss", "loss")
        self.query_one("#importance-table").display = False
        self.query_one("#norm-plot", PlotextPlot).plt.xlabel("layer")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one("#stats-table", DataTable))

    def action_scroll_down(self) -> None:
        self.query_one("#diag-tables").scroll_down()

    def action_scroll_up(self) -> None:
        self.query_one("#diag-tables").scroll_up()

    def action_next_chart(self) -> None:
        switcher = self.query_one("#chart-switcher", ContentSwitcher)
        names = list(CHARTS)
        switcher.current = names[(names.index(switcher.current or names[0]) + 1) % len(names)]
        self.query_one("#chart-caption", Static).update(CHARTS[switcher.current] + " · c: next chart")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        app = garage_app(self)
        if action in ("attention", "importance"):
            return app.has_weights and app.job is None and bool(app.prompt_text)
        return True

    def action_attention(self) -> None:
        app = garage_app(self)
        app.begin_job("attention", "reading every head's attention pattern…")
        self._attention(app.loaded, app.prompt_text, app.garage.selected, list(app.garage.interventions))

    def action_importance(self) -> None:
        app = garage_app(self)
        layer = layer_of(app.garage.selected)
        if layer is None:
            app.notify("select a layer, attention block or head in the bay first (1)", severity="warning")
            return
        app.begin_job("importance", f"ablating each head of L{layer} on the sample text…")
        self._importance(app.loaded, layer)

    @work(thread=True, exclusive=True, group="diag")
    def _attention(self, loaded: Any, prompt: str, selected: str | None, interventions: list[Any]) -> None:
        worker = get_current_worker()
        try:
            from engine.analyzers.attention import attention_report

            now = attention_report(loaded, prompt, interventions)
            before = attention_report(loaded, prompt) if interventions and not worker.is_cancelled else None
        except Exception as exc:  # noqa: BLE001
            self.post_message(job_stopped("attention", worker, exc))
            return
        if worker.is_cancelled:
            self.post_message(JobCancelled("attention", worker))
            return
        layer, head = layer_of(selected) or 0, head_of(selected) or 0
        report = {"layer": layer, "head": head, "tokens": now.tokens,
                  "entropy": now.entropy_grid()[layer], "pattern": now.pattern(layer, head).tolist(),
                  "roles": {h.address: h.role for h in now.heads if h.layer == layer and h.role}}
        if before is not None:
            report["entropy_before"] = before.entropy_grid()[layer]
        self.post_message(AnalysisFinished("attention", report))

    @work(thread=True, exclusive=True, group="diag")
    def _importance(self, loaded: Any, layer: int) -> None:
        worker = get_current_worker()

        def progress(stage: str, fraction: float | None) -> None:
            self.post_message(JobProgressed("importance", stage, fraction))

        try:
            from engine.analyzers.importance import head_importance

            report = head_importance(loaded, layers=[layer], progress=progress, cancel=worker.cancelled_event)
        except Exception as exc:  # noqa: BLE001
            self.post_message(job_stopped("importance", worker, exc))
            return
        if worker.is_cancelled:
            self.post_message(JobCancelled("importance", worker))
            return
        self.post_message(AnalysisFinished("importance", {"layer": layer, **report.to_dict()}))

    @on(AnalysisFinished)
    def _on_analysis(self, message: AnalysisFinished) -> None:
        garage_app(self).end_job(f"{message.kind} ready")
        if message.kind == "attention":
            self.attention = message.report
            self._draw_attention(message.report)
        else:
            self.importance = message.report
            self._draw_importance(message.report)

    def _show_chart(self, plot_id: str) -> None:
        self.query_one("#chart-switcher", ContentSwitcher).current = plot_id
        self.query_one("#chart-caption", Static).update(CHARTS[plot_id] + " · c: next chart")

    def _draw_attention(self, report: dict[str, Any]) -> None:
        layer, head = report["layer"], report["head"]
        widget = self.query_one("#entropy-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        heads = list(range(len(report["entropy"])))
        if "entropy_before" in report:
            plt.multiple_bar(heads, [report["entropy"], report["entropy_before"]], labels=["now", "before"])  # type: ignore[call-arg]
        else:
            plt.bar(heads, report["entropy"])
        plt.title(f"L{layer} entropy per head (nats)")
        plt.xlabel("head")
        widget.refresh()
        self.query_one("#pattern-plot", Static).update(
            pattern_grid(report["pattern"], report["tokens"], f"L{layer}.attn.h{head}"))
        roles = ", ".join(f"{a.rsplit('.', 1)[-1]} {r}" for a, r in report["roles"].items()) or "no named roles"
        self.query_one("#diag-caption", Static).update(f"attention L{layer}: {roles}")
        self._show_chart("entropy-plot")

    def _draw_importance(self, report: dict[str, Any]) -> None:
        table = self.query_one("#importance-table", DataTable)
        table.display = True
        table.clear()
        for entry in report["heads"] + report["blocks"]:
            table.add_row(entry["address"], f"{entry['delta']:+.4f}", f"{entry['loss']:.4f}")
        self.query_one("#diag-caption", Static).update(
            f"head importance, L{report['layer']} ({report['mode']}-ablation, clean loss {report['clean_loss']:.4f})")

    @staticmethod
    def compute(loaded: Any, prompt: str, selected: str | None, interventions: list[Any],
                worker: Any) -> dict[str, Any]:
        """Engine calls for this pane (runs in a worker thread): stats, and the logit lens."""
        from engine.stats import stream_stats

        part = loaded.anatomy.by_address.get(selected) if selected else None
        point = stats_point(selected, part.kind if part else None, loaded.anatomy.n_layers)
        report: dict[str, Any] = {"point": point}
        if point is not None and not worker.is_cancelled:
            now = stream_stats(loaded, prompt, [point], bins=24, interventions=interventions)
            report["stats"] = now[point].to_dict()
            if interventions:
                report["baseline_stats"] = stream_stats(loaded, prompt, [point], bins=24)[point].to_dict()
        if loaded.is_causal_lm and not worker.is_cancelled:
            from engine.analyzers.lens import logit_lens

            report["lens"] = logit_lens(loaded, prompt, top_k=1, interventions=interventions).to_dict()
        return report

    def show_report(self, report: dict[str, Any]) -> None:
        """Draw one run's numbers; called by the app's RunFinished handler."""
        diagnostics = report.get("diagnostics") or {}
        edits = ", ".join(report.get("interventions") or []) or "no edits"
        point = diagnostics.get("point") or "-"
        self.query_one("#diag-caption", Static).update(f"{point} · “{report.get('prompt', '')}” · {edits}")
        self._draw_stats(diagnostics.get("stats"), diagnostics.get("baseline_stats"))
        self._draw_lens(diagnostics.get("lens"))
        self._draw_norms(report.get("norms") or [], report.get("baseline_norms"))
        self._draw_histogram(diagnostics.get("stats"))

    def _draw_stats(self, stats: dict[str, Any] | None, baseline: dict[str, Any] | None) -> None:
        table = self.query_one("#stats-table", DataTable)
        table.clear()
        if not stats:
            return
        for name in STAT_ROWS:
            before = f"{baseline[name]:.4g}" if baseline else ""
            table.add_row(name, f"{stats[name]:.4g}", before)
        before = f"{baseline['token_l2']['mean']:.4g}" if baseline else ""
        table.add_row("token L2", f"{stats['token_l2']['mean']:.4g}", before)

    def _draw_lens(self, lens: dict[str, Any] | None) -> None:
        table = self.query_one("#lens-table", DataTable)
        table.clear()
        for layer in (lens or {}).get("layers", []):
            top = layer["top"][0] if layer["top"] else {"token": "", "prob": 0.0}
            table.add_row(layer["address"], repr(top["token"]), f"{top['prob']:.3f}", str(layer["final_token_rank"]))

    def _draw_norms(self, norms: list[float], baseline: list[float] | None) -> None:
        widget = self.query_one("#norm-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        if norms:
            plt.plot(list(range(len(norms))), norms, label="now", marker="braille")
        if baseline:
            plt.plot(list(range(len(baseline))), baseline, label="before", marker="braille")
        widget.refresh()

    def _draw_histogram(self, stats: dict[str, Any] | None) -> None:
        widget = self.query_one("#hist-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        if stats:
            counts, edges = stats["histogram"]["counts"], stats["histogram"]["edges"]
            centres = [(edges[i] + edges[i + 1]) / 2 for i in range(len(counts))]
            plt.bar(centres, counts, width=0.8)
        widget.refresh()
