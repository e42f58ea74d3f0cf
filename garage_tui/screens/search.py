"""``S`` on the build bench: search over the bench's recipe and watch the trials arrive.

``s`` starts a search from the recipe on the bench (a spec with default knobs: drop some of
its layers, score perplexity on the bundled text; the line asked for can change them), ``o``
runs a spec file. The spec is written beside its journal under ``GARAGE_HOME/searches`` and
both paths go into the workbench (and so into a saved session), so ``R`` resumes the last
search later: the journal replays what it holds and the run continues where it stopped.
Trials fill a table and a plotext chart of best-so-far (and the Pareto front with two
objectives); Enter on a trial posts ``SearchScreen.RecipeChosen``, which the app answers by
putting that trial's recipe on the bench. Esc stops the search between trials; ``q`` goes back.
The engine is imported only inside the worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Static
from textual_plotext import PlotextPlot

from garage_tui.controller import JobContext
from garage_tui.recipe_steps import step_span
from garage_tui.screens.ask import AskScreen
from garage_tui.screens.job_screen import JobScreen
from garage_tui.widgets.lists import KeyTable

OBJECTIVES = ("perplexity", "bits_per_byte")
DEFAULT_BUDGET = 20
DEFAULT_TOKENS = 256
MAX_BUDGET = 100_000  # trials are run one after another: a bound on a typo, not on memory
MAX_TOKENS = 1_000_000


@dataclass
class SearchKnobs:
    """What the start line asks for: how many layers to drop, the budget, seed, tokens and objectives."""

    drop: int
    budget: int = DEFAULT_BUDGET
    seed: int = 0
    tokens: int = DEFAULT_TOKENS
    objectives: list[str] = field(default_factory=lambda: ["perplexity"])

    def line(self) -> str:
        return (f"drop {self.drop} budget {self.budget} seed {self.seed} tokens {self.tokens} "
                f"objectives {','.join(self.objectives)}")


def recipe_layers(recipe: dict[str, Any]) -> int:
    """How many layers the recipe's hybrid has (a range take counts each of its layers)."""
    return sum(step_span(step) for step in recipe.get("layers") or [])


def default_knobs(recipe: dict[str, Any]) -> SearchKnobs:
    """Drop about one layer in eight (at least one): a search worth running on any depth."""
    return SearchKnobs(drop=max(1, recipe_layers(recipe) // 8))


def parse_knobs(line: str, layers: int) -> SearchKnobs:
    """``drop 4 budget 40 seed 0 tokens 256 objectives perplexity,bits_per_byte`` → knobs (checked)."""
    from engine.errors import GarageError
    from engine.limits import check_count

    words = line.split()
    if len(words) % 2:
        raise GarageError(f"'{line}' is not key/value pairs; write e.g. drop 4 budget 20 seed 0 tokens 256")
    pairs = dict(zip(words[::2], words[1::2], strict=True))
    unknown = sorted(set(pairs) - {"drop", "budget", "seed", "tokens", "objectives"})
    if unknown:
        raise GarageError(f"unknown search setting(s) {', '.join(unknown)}; use drop, budget, seed, tokens, objectives")

    def number(key: str, default: int, limit: int, minimum: int) -> int:
        text = pairs.get(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise GarageError(f"{key} must be a whole number, got '{text}'") from None
        return check_count(value, f"the search's {key}", limit, minimum=minimum)

    if layers < 2:
        raise GarageError(f"the recipe makes {layers} layer(s); a layer-drop search needs at least 2")
    objectives = pairs.get("objectives", "perplexity").split(",")
    if any(o not in OBJECTIVES for o in objectives) or len(set(objectives)) != len(objectives):
        raise GarageError(f"objectives are one or both of {', '.join(OBJECTIVES)}, comma-separated")
    return SearchKnobs(drop=number("drop", max(1, layers // 8), layers - 1, 1),
                       budget=number("budget", DEFAULT_BUDGET, MAX_BUDGET, 1), seed=number("seed", 0, 2**31 - 1, 0),
                       tokens=number("tokens", DEFAULT_TOKENS, MAX_TOKENS, 2), objectives=objectives)


def spec_document(recipe: dict[str, Any], knobs: SearchKnobs) -> dict[str, Any]:
    """A search spec over ``recipe`` (inline, so the spec file alone reruns it)."""
    layers = recipe_layers(recipe)
    name = str(recipe.get("name") or "bench")
    return {"search_version": 1, "name": f"{name}-drop{knobs.drop}", "recipe": recipe,
            "parameters": [{"drop": [0, layers - 1], "count": knobs.drop}], "objectives": list(knobs.objectives),
            "optimiser": "tpe" if len(knobs.objectives) == 1 else "nsga2", "budget": knobs.budget,
            "seed": knobs.seed, "max_tokens": knobs.tokens}


def trial_changes(base: list[Any], trial: list[Any]) -> str:
    """What a trial changed of the base recipe's layers, short: ``−L3 −L17`` (+ ``edited Lk``)."""
    kept = [layer for layer in trial if layer in base]
    missing = [f"−L{i}" for i, layer in enumerate(base) if layer not in kept]
    edited = [f"~L{base.index(layer)}" if layer in base else "~" for layer in trial if layer not in base]
    return " ".join(missing + edited) or "(base)"


class SearchScreen(JobScreen):
    """Trials table, best-so-far chart, Pareto chart, one status line."""

    BINDINGS = [
        Binding("s", "start", "Start", id="search.start"),
        Binding("o", "open_spec", "Spec file", id="search.open_spec"),
        Binding("R", "resume", "Resume", id="search.resume"),
        Binding("escape", "stop", "Stop", id="search.stop"),
        Binding("q", "dismiss", "Back", id="search.close"),
    ]
    DEFAULT_CSS = """
    SearchScreen #search-body { height: 1fr; }
    SearchScreen #search-trials { width: 1fr; }
    SearchScreen #search-charts { width: 1fr; }
    SearchScreen PlotextPlot { height: 1fr; }
    """
    STATUS = "#search-status"
    GROUP = "search"

    class Started(Message):
        """The spec is valid: its objectives, budget and name."""

        def __init__(self, objectives: list[str], budget: int, name: str) -> None:
            super().__init__()
            self.objectives, self.budget, self.name = objectives, budget, name

    class TrialArrived(Message):
        """One trial finished (or was replayed from the journal); ``front`` is the Pareto front so far."""

        def __init__(self, result: Any, replayed: bool, changes: str, front: list[int]) -> None:
            super().__init__()
            self.result, self.replayed, self.changes, self.front = result, replayed, changes, front

    class Finished(Message):
        def __init__(self, report: Any) -> None:
            super().__init__()
            self.report = report

    class RecipeChosen(Message):
        """The user picked a trial: put ``recipe`` on the bench."""

        def __init__(self, recipe: dict[str, Any], number: int) -> None:
            super().__init__()
            self.recipe, self.number = recipe, number

    def __init__(self, workbench: Any, recipe: dict[str, Any] | None) -> None:
        super().__init__()
        self.workbench = workbench
        self.recipe = recipe
        self.trials: dict[int, Any] = {}
        self.objectives: list[str] = ["perplexity"]
        self.front: list[int] = []
        self.budget = 0
        self.report: Any = None
        self.stop_event = threading.Event()

    @property
    def running(self) -> bool:
        return self.job is not None

    def compose(self) -> ComposeResult:
        with Vertical(id="search-box"):
            yield Static("Search · s start from the bench's recipe · o spec file · R resume · Enter opens a trial's "
                         "recipe on the bench · Esc stops · q back", id="search-title")
            yield Static(self._idle_line(), id="search-status")
            with Horizontal(id="search-body"):
                yield KeyTable(id="search-trials", cursor_type="row", zebra_stripes=True)
                with Vertical(id="search-charts"):
                    yield PlotextPlot(id="search-best")
                    yield PlotextPlot(id="search-pareto")

    def on_mount(self) -> None:
        self.query_one("#search-pareto").display = False
        self._columns(self.objectives)
        self.query_one("#search-trials", KeyTable).focus()

    def on_unmount(self) -> None:
        self.stop_event.set()  # leaving the screen stops the search at its next trial (the journal keeps it)

    def _idle_line(self) -> str:
        saved = self.workbench.search
        if saved:
            return f"last search: {saved['journal']} · R resumes it"
        return "no search yet" if self.recipe else "no recipe on the bench: s searches the open model's layers"

    # ---- starting ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("start", "open_spec"):
            return not self.running
        if action == "resume":
            return not self.running and bool(self.workbench.search)
        if action == "stop":
            return self.running
        return True

    def _base_recipe(self) -> dict[str, Any] | None:
        if self.recipe is not None:
            return self.recipe
        loaded = self.workbench.loaded
        if loaded is None:
            return None
        from garage_tui.widgets.bench_pane import identity_recipe

        return identity_recipe(loaded.name, self.workbench.spec_of_active(), loaded.anatomy.n_layers)

    def action_start(self) -> None:
        """``s``: ask for the knobs (defaults shown), write the spec, run it."""
        recipe = self._base_recipe()
        if recipe is None:
            self.app.notify("open a model or put a recipe on the bench first", severity="warning")
            return

        def answered(answer: str | None) -> None:
            if not answer:
                return
            from engine.errors import GarageError
            from engine.storage import atomic_write_json

            try:
                knobs = parse_knobs(answer, recipe_layers(recipe))
            except GarageError as exc:
                self.app.notify(str(exc), severity="error")
                return
            document = spec_document(recipe, knobs)
            spec_path, journal = self._paths(str(document["name"]))
            atomic_write_json(spec_path, document)
            self.run_search(spec_path, journal)

        self.app.push_screen(AskScreen("Search the recipe's layers (key/value pairs):",
                                       default_knobs(recipe).line()), answered)

    def action_open_spec(self) -> None:
        """``o``: run a search spec file (a new journal beside the others)."""
        from engine.storage import garage_home

        def answered(answer: str | None) -> None:
            if answer:
                path = Path(answer.strip()).expanduser()
                self.run_search(path, self._paths(path.stem.removesuffix(".spec"))[1])

        self.app.push_screen(AskScreen("Search spec file:", str(garage_home() / "searches") + "/"), answered)

    def action_resume(self) -> None:
        """``R``: rerun the session's last search from its journal (replayed trials are not re-evaluated)."""
        saved = self.workbench.search
        if saved:
            self.run_search(Path(saved["spec"]), Path(saved["journal"]))

    @staticmethod
    def _paths(name: str) -> tuple[Path, Path]:
        from engine.storage import garage_home

        folder = garage_home() / "searches"
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        return folder / f"{stem}.spec.json", folder / f"{stem}.jsonl"

    def run_search(self, spec_path: Path, journal: Path) -> None:
        """Run the spec at ``spec_path`` journaled to ``journal``; the session remembers both."""
        self.workbench.search = {"spec": str(spec_path), "journal": str(journal)}
        self.trials, self.front, self.report = {}, [], None
        self.stop_event = stop = threading.Event()
        self._start("search", f"search: reading {spec_path.name}",
                    lambda ctx: self._search(spec_path, journal, stop, ctx), name="_search")

    def _search(self, spec_path: Path, journal: Path, stop: threading.Event, ctx: JobContext) -> Message | None:
        """The job: validate the spec, run it trial by trial (posting each), return the report."""
        from engine.search import load_search_spec, pareto_front, run_search

        spec = load_search_spec(spec_path)
        ctx.post(self.Started(list(spec.objectives), spec.budget, spec.name))
        seen: list[Any] = []

        def arrived(result: Any, replayed: bool) -> None:
            seen.append(result)
            front = pareto_front(seen) if len(spec.objectives) > 1 else []
            ctx.post(self.TrialArrived(result, replayed, trial_changes(spec.base["layers"], result.recipe["layers"]),
                                       front))

        journal.parent.mkdir(parents=True, exist_ok=True)
        return self.Finished(run_search(spec, journal, on_trial=arrived, cancel=stop, progress=ctx.progress))

    def action_stop(self) -> None:
        """Esc: stop between trials; what finished is in the journal and ``R`` continues it."""
        self.stop_event.set()
        if self.running:
            self._status("search: stopping after the trial in flight…")

    # ---- drawing -------------------------------------------------------------------------------
    def _columns(self, objectives: list[str]) -> None:
        table = self.query_one("#search-trials", KeyTable)
        table.clear(columns=True)
        for column in ("#", *objectives, "layers", "changes", "from"):
            table.add_column(column, key=column)

    @on(Started)
    def _started(self, message: Started) -> None:
        self.objectives = message.objectives
        self.budget = message.budget
        self._columns(message.objectives)
        self.query_one("#search-pareto").display = len(message.objectives) > 1
        self._status(f"search {message.name}: 0/{message.budget} trials · Esc stops")

    @on(TrialArrived)
    def _trial(self, message: TrialArrived) -> None:
        result = message.result
        self.trials[result.number] = result
        self.front = message.front
        table = self.query_one("#search-trials", KeyTable)
        table.add_row(str(result.number), *[f"{v:.4f}" for v in result.values], str(result.layers),
                      Text(message.changes), "journal" if message.replayed else "run", key=str(result.number))
        best = min(self.trials.values(), key=lambda t: (t.values[0], t.number))
        self._status(f"search: {len(self.trials)}/{self.budget} trials · best #{best.number} "
                     f"{self.objectives[0]} {best.values[0]:.4f} · Esc stops")
        self._draw()

    def best_so_far(self) -> list[float]:
        """The lowest first objective after each trial, in trial order (what the chart draws)."""
        best, out = float("inf"), []
        for number in sorted(self.trials):
            best = min(best, self.trials[number].values[0])
            out.append(best)
        return out

    def _draw(self) -> None:
        numbers = sorted(self.trials)
        widget = self.query_one("#search-best", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.scatter(numbers, [self.trials[n].values[0] for n in numbers], marker="dot", label="trial")
        plt.plot(numbers, self.best_so_far(), label="best so far")
        plt.title(f"{self.objectives[0]} per trial (lower is better)")
        plt.xlabel("trial")
        widget.refresh()
        if len(self.objectives) > 1:
            widget = self.query_one("#search-pareto", PlotextPlot)
            plt = widget.plt
            plt.clear_data()
            plt.clear_figure()
            others = [n for n in numbers if n not in self.front]
            if others:  # plotext's legend fails on an empty labelled series
                plt.scatter([self.trials[n].values[0] for n in others], [self.trials[n].values[1] for n in others],
                            marker="dot", label="trial")
            front = sorted(self.front, key=lambda n: self.trials[n].values[0])
            plt.plot([self.trials[n].values[0] for n in front], [self.trials[n].values[1] for n in front],
                     label="Pareto front")
            plt.xlabel(self.objectives[0])
            plt.ylabel(self.objectives[1])
            plt.title("Pareto front (both minimised)")
            widget.refresh()

    @on(Finished)
    def _finished(self, message: Finished) -> None:
        self.report = report = message.report
        best = report.best
        where = f" · best recipe {report.best_recipe}" if report.best_recipe else ""
        head = "stopped" if report.stopped else "done"
        summary = (f"search {head}: {len(report.trials)} trials ({report.evaluated} run now, "
                   f"{len(report.trials) - report.evaluated} from the journal)")
        if best is not None:
            summary += f" · best #{best.number} {self.objectives[0]} {best.values[0]:.4f}{where}"
        if report.stopped:
            summary += " · R resumes"
        self._done(summary)

    def cancelled_line(self, job: str) -> str:
        return f"{job}: cancelled · R resumes"

    @on(KeyTable.RowSelected, "#search-trials")
    def _row_chosen(self, event: KeyTable.RowSelected) -> None:
        event.stop()
        key = event.row_key.value
        if key is not None and int(key) in self.trials:
            trial = self.trials[int(key)]
            self.post_message(self.RecipeChosen(dict(trial.recipe), trial.number))
