"""Pane 1, the engine bay: the part tree beside the next-token guesses, the selected part's
detail and the run's residual norms."""

from __future__ import annotations

from typing import Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Sparkline, Static
from textual.worker import Worker, WorkerState

from garage_tui.controller import PLAN_SEQ, RunReport, Workbench
from garage_tui.render import human_count
from garage_tui.render_plan import plan_lines
from garage_tui.widgets.part_tree import PartTree


def _prob(value: float | None) -> str:
    return "  —  " if value is None else f"{value:.3f}"


def guesses_text(report: RunReport | None) -> Text:
    """The next-token guesses; with edits, every token in either top list with both probabilities."""
    text = Text()
    if report is None or not report.guesses:
        return text
    text.append("next token for “")
    text.append(report.prompt)
    text.append("”\n", style="")
    text.stylize("bold", 0, len(text))
    edited = bool(report.interventions)
    if edited:
        text.append(f"  {'token':<14} {'now':>5}  {'before':>6}\n", style="dim")
    for guess in report.guesses:
        text.append(f"  {guess.token!r:<14} {_prob(guess.prob)}")
        if edited:
            text.append(f"  {_prob(guess.before):>6}")
        text.append("\n")
    return text


def detail_text(part: Any, interventions: list[dict[str, Any]], plan: Any = None) -> Text:
    """The detail pane's text for ``part``: what it is, where it lives, what is done to it.

    The model's own card also shows its fit plan (``FitPlan``, or the line saying why there is none).
    """
    text = Text()
    text.append(f"{part.address}", style="bold")
    text.append(f"  {part.kind}\n", style="italic")
    if part.module_path is not None:
        text.append(f"module  {part.module_path or '(root)'}\n")
    text.append(f"params  {human_count(part.params)} ({part.params:,})\n")
    if part.dtype:
        text.append(f"dtype   {part.dtype}\n")
    info = part.info or {}
    if part.kind == "head":
        text.append(f"head {info.get('head')} · KV group {info.get('kv_group')} · d_head {info.get('head_dim')}\n")
    elif part.kind == "attn":
        gqa = " (GQA)" if info.get("gqa") else ""
        text.append(f"{info.get('heads')} heads · {info.get('kv_heads')} KV heads{gqa} · "
                    f"d_head {info.get('head_dim')}\n")
    elif part.kind == "model":
        for key in ("family", "layers", "hidden_size", "heads", "kv_heads", "norm", "layout"):
            if key in info:
                text.append(f"{key:<12}{info[key]}\n")
    for name, shape in list(part.shapes.items())[:6]:
        text.append(f"  {name}  {'×'.join(map(str, shape))}\n", style="dim")
    if len(part.shapes) > 6:
        text.append(f"  … {len(part.shapes) - 6} more tensors\n", style="dim")
    if part.points:
        text.append("points  " + " ".join(f"{part.address}.{p}" for p in part.points) + "\n", style="dim")
    here = [item for item in interventions if item["address"] == part.address]
    if here:
        text.append("active  " + ", ".join(item["describe"] for item in here) + "\n", style="bold")
    if part.kind == "model" and plan is not None:
        text.append("fit plan\n", style="bold")
        for line in [plan] if isinstance(plan, str) else plan_lines(plan):
            text.append(f"  {line}\n")
    return text


class BayPane(Vertical):
    """Tree plus detail; intervention keys act on the highlighted part."""

    BINDINGS = [
        Binding("a", "app.toggle_intervention('ablate')", "Ablate", id="bay.ablate"),
        Binding("m", "app.toggle_intervention('mean')", "Mean-ablate", id="bay.mean_ablate"),
        Binding("s", "app.toggle_intervention('scale')", "Scale ×0.5", id="bay.scale"),
        Binding("v", "app.steer_part", "Steer", id="bay.steer"),
        Binding("c", "app.clear_interventions", "Clear edits", id="bay.clear"),
        Binding("x", "app.extract_part", "Extract", id="bay.extract"),
        Binding("slash", "app.goto_part", "Go to", id="bay.goto"),
    ]

    def __init__(self, workbench: Workbench, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workbench = workbench
        self._planning: str | None = None  # the model whose plan a worker is computing

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield PartTree(id="part-tree")
            with Vertical(id="bay-side"):
                yield Static("", id="guesses")
                with VerticalScroll(id="detail-scroll"):
                    yield Static("Opening the model…", id="part-detail")
                yield Static("residual norm per layer (last run)", id="norms-caption")
                yield Sparkline([], id="norms")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one(PartTree))

    def redraw(self, rebuild: bool = False) -> None:
        """Tree labels (marks, norm glyphs), guesses, the selected part's detail, the norms line."""
        workbench = self.workbench
        loaded = workbench.loaded
        if loaded is None:
            return
        tree = self.query_one(PartTree)
        report = workbench.last_report
        norms = report.norms if report else None
        if rebuild or tree.anatomy is not loaded.anatomy:
            title = f"{loaded.name} · {loaded.anatomy.root.info.get('family') or 'generic'}"
            tree.show_anatomy(title, loaded.anatomy, workbench.marks(), norms)
        else:
            tree.relabel(workbench.marks(), norms)
        guesses = self.query_one("#guesses", Static)
        guesses.update(guesses_text(report))
        guesses.display = bool(report and report.guesses)
        part = workbench.selected_part or loaded.anatomy.root
        plan = workbench.plans.get(loaded.name)
        if part.kind == "model" and self._planning is None:
            # decided after the current message, once a handler that opens a model has started its first run
            self.call_later(self._plan_if_stale)
        shown = "computing…" if plan is None and self._planning == loaded.name else plan
        self.query_one("#part-detail", Static).update(detail_text(part, workbench.intervention_rows(), shown))
        self.query_one("#norms", Sparkline).data = list(norms or [])

    def _plan_if_stale(self) -> None:
        """Plan the shown model for the last run's token count (``PLAN_SEQ`` before any run).

        A model with weights waits for its first run while a job is in flight, so it is planned
        once at the prompt's length rather than first at the default and again after the run.
        """
        loaded, report = self.workbench.loaded, self.workbench.last_report
        if self._planning is not None or loaded is None:
            return
        plan = self.workbench.plans.get(loaded.name)
        tokens = report.tokens if report is not None and report.model == loaded.name else 0
        if plan is None:
            if not loaded.structure_only and not tokens and self.workbench.job is not None:
                return
        elif isinstance(plan, str) or not tokens or plan.seq == tokens:
            return
        self._planning = loaded.name
        workbench = self.workbench

        def compute() -> tuple[str, Any]:
            return loaded.name, workbench.compute_plan(loaded, tokens or PLAN_SEQ)

        self.run_worker(compute, thread=True, group="plan", name="_plan_model")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "_plan_model" or event.state != WorkerState.SUCCESS:
            return
        event.stop()  # the plan is the card's own business, not a job of the app's
        name, plan = cast("tuple[str, Any]", event.worker.result)
        self.workbench.plans[name] = plan
        self._planning = None
        self.redraw()

    def copy_text(self) -> tuple[str, str] | None:
        """The selected part's detail and the guesses, as the bay shows them."""
        loaded = self.workbench.loaded
        if loaded is None:
            return None
        part = self.workbench.selected_part or loaded.anatomy.root
        text = detail_text(part, self.workbench.intervention_rows(), self.workbench.plans.get(loaded.name)).plain
        guesses = guesses_text(self.workbench.last_report).plain
        return part.address, text + ("\n" + guesses if guesses else "")
