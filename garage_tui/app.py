"""The garage's Textual shell: composition, bindings and message routing.

Every engine call and the state behind it live in the workbench controller
(``controller.Workbench``); the panes draw its typed reports and post requests
(``messages.py``); long calls run through the one worker skeleton in ``jobs``. Nothing here
imports torch at module level: the model opens in a thread worker after the first frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input, Static
from textual.worker import Worker, WorkerState

from engine.bundled import DEFAULT_MODEL
from garage_tui.controller import ABLATABLE, SCALABLE, STEERABLE, JobContext, Workbench, error_line
from garage_tui.jobs import start_job
from garage_tui.keymap import checked_keymap
from garage_tui.messages import (
    AttentionRead,
    AttentionRequested,
    BuildFinished,
    BuildRequested,
    FitsFound,
    FitsRequested,
    ImportanceRead,
    ImportanceRequested,
    InterventionsRestored,
    JobCancelled,
    JobFailed,
    JobProgressed,
    ModelLoaded,
    PartsChanged,
    PartsRequested,
    RecipeChecked,
    RecipeCheckRequested,
    RunFinished,
    SteerComputed,
    StructureLoaded,
)
from garage_tui.settings import Settings
from garage_tui.themes import find_theme, load_themes
from garage_tui.views import VIEWS, GarageFooter, View, pane_strip, session_view
from garage_tui.widgets.prompt_bar import PromptInput

# The panes, their widgets (plotext charts, tables) and the modal screens are imported where they
# are used: the first frame draws only the chrome, and the panes are mounted right after it.
if TYPE_CHECKING:
    from textual.widgets import ProgressBar

    from engine.sessions import Session
    from garage_tui.screens.search import SearchScreen
    from garage_tui.screens.steer import SteerRequest
    from garage_tui.widgets.attribution_view import AttributionView
    from garage_tui.widgets.bench_pane import BenchPane
    from garage_tui.widgets.diagnostics_pane import DiagnosticsPane
    from garage_tui.widgets.features_view import FeaturesView
    from garage_tui.widgets.part_tree import PartTree
    from garage_tui.widgets.parts_pane import PartsPane

DEFAULT_PROMPT = "The Eiffel Tower is in the city of"
Handler = TypeVar("Handler", bound=Callable[..., None])


def while_shown(handler: Handler) -> Handler:
    """Drop a worker's late message once the panes are gone (the app quit while the job ran)."""

    @wraps(handler)
    def guarded(self: GarageApp, *args: Any) -> None:
        if self.is_running and not self._exit and self.query("#panes"):
            handler(self, *args)

    return cast(Handler, guarded)


class GarageApp(App[None]):
    """Model Garage: engine bay, diagnostics, parts bin and build bench, all by keyboard."""

    CSS_PATH = "app.tcss"
    TITLE = "Model Garage"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("question_mark,f1", "show_help", "Help", id="app.help"),
        Binding("q", "quit_garage", "Quit", id="app.quit"),
        Binding("1", "show_pane('bay')", "Bay", show=False, id="app.pane_bay"),
        Binding("2", "show_pane('diagnostics')", "Diagnostics", show=False, id="app.pane_diagnostics"),
        Binding("3", "show_pane('parts')", "Parts", show=False, id="app.pane_parts"),
        Binding("4", "show_pane('bench')", "Bench", show=False, id="app.pane_bench"),
        Binding("i", "focus_prompt", "Prompt", id="app.prompt"),
        Binding("r", "run_prompt", "Run", id="app.run"),
        Binding("escape", "cancel_job", "Cancel", id="app.cancel"),
        Binding("y", "copy_selection", "Copy", show=False, id="app.copy"),
        Binding("ctrl+s", "save_session", "Save", id="app.save_session"),
        Binding("ctrl+o", "open_session", "Open session", show=False, id="app.open_session"),
        Binding("ctrl+t", "next_theme", "Theme", show=False, id="app.theme"),
        Binding("T", "attribute", "Attribution", show=False, id="app.attribution"),
        Binding("f", "features", "SAE features", show=False, id="app.features"),
        Binding("S", "search", "Search", show=False, id="app.search"),
        Binding("X", "transfer", "Transfer", show=False, id="app.transfer"),
    ]

    def __init__(self, engine: Any = None, parts_bin: Any = None, session: Session | None = None,
                 settings: Settings | None = None, *, model_spec: str = DEFAULT_MODEL, device: str = "cpu",
                 session_path: Path | None = None, theme: str | None = None, keymap: dict[str, str] | None = None,
                 startup_notes: list[str] | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.workbench = Workbench(engine, parts_bin, self.settings, model_spec=model_spec, device=device)
        self.pending_session = session
        self.session_path = session_path
        self.session_title = session.title if session else ""
        self.session_notes = list(session.notes) if session else []
        self.pane = "bay"
        self._startup_notes = list(startup_notes or [])
        self._garage_ready = False
        self._panes_ready = False  # set once the panes are mounted behind the first frame
        self._first_prompt = session.prompt if session is not None else DEFAULT_PROMPT
        self._saved_report: dict[str, Any] | None = None  # a restored session's last run, until re-run
        self._exit_after_mount: tuple[None, int, Any] | None = None
        wanted = theme or (session.theme if session and session.theme else None) or self.settings.theme
        # the first frame needs only the theme it is drawn in; the others are read behind it
        first = find_theme(wanted) if wanted not in self.available_themes else None
        self.theme_names: list[str] = []
        if first is not None:
            self.register_theme(first)
        elif wanted not in self.available_themes:
            self._register_themes()
            if wanted not in self.available_themes:
                known = ", ".join(self.theme_names)
                self._startup_notes.append(f"unknown theme '{wanted}'; using garage (themes: {known})")
                wanted = "garage"
        self.theme = wanted
        if keymap:
            keymap, problems = checked_keymap(self, keymap)
            self._startup_notes.extend(problems)
            self.set_keymap(keymap)

    def _register_themes(self) -> None:
        """Every shipped and user theme (once); a broken file is one warning."""
        if self.theme_names:
            return
        themes, problems = load_themes()
        for problem in problems:
            if self.is_running:
                self.notify(problem, severity="warning")
            else:
                self._startup_notes.append(problem)
        shown = self.get_theme(self.theme) if self.is_running else None
        for loaded_theme in themes:
            self.register_theme(loaded_theme)
        self.theme_names = [t.name for t in themes] or ["garage"]
        if shown is not None and self.get_theme(self.theme) != shown:
            self.refresh_css()  # a user file overrides the theme the first frame was drawn in

    # ---- the workbench's state, read by tests and the palette ----------------------------------
    @property
    def garage(self) -> Any:
        return self.workbench.garage

    @property
    def job(self) -> str | None:
        return self.workbench.job

    @property
    def last_report(self) -> Any:
        return self.workbench.last_report

    @property
    def loaded(self) -> Any:
        return self.workbench.loaded

    @property
    def has_weights(self) -> bool:
        return self.workbench.has_weights

    @property
    def selected_part(self) -> Any:
        return self.workbench.selected_part

    @property
    def prompt_text(self) -> str:
        if not self._panes_ready:
            return self._first_prompt.strip()
        return self.query_one("#prompt", Input).value.strip()

    # ---- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """The first frame: the chrome and a placeholder where the panes go.

        The panes (tree, tables, plotext charts) and the progress bar are mounted by
        ``_mount_panes`` right after this frame is painted: they have nothing to show before the
        model's structure arrives, and building them first made the first frame ~2× slower.
        """
        yield Static("", id="pane-strip")
        with ContentSwitcher(initial="first-frame", id="panes"):
            placeholder = Static(f"Opening {self._opening_spec()}…", id="first-frame", classes="pane")
            placeholder.border_title = f"1 {VIEWS[0].title}"
            yield placeholder
        with Horizontal(id="prompt-bar"):
            yield Static("prompt ", id="prompt-label")
            # drawn as text in the first frame; the editable input replaces it with the panes
            yield Static(Text(self._first_prompt), id="prompt-text")
        with Horizontal(id="status-bar"):
            yield Static("", id="status")
        yield GarageFooter()

    def on_mount(self) -> None:
        session = self.pending_session
        if session is not None:
            self.pane = session_view(session.view)
        self._update_strip()
        for note in self._startup_notes:
            self.notify(note, severity="warning")
        self._garage_ready = True
        self.call_after_refresh(self._first_frame)

    def _first_frame(self) -> None:
        """Called once the first frame is painted (the start-up bench times this)."""
        self.call_next(self._mount_panes)

    async def _mount_panes(self) -> None:
        """Build the panes behind the first frame, then open the model (``_start``)."""
        from textual.widgets import ProgressBar

        self._register_themes()
        self.stylesheet.read(Path(__file__).with_name("panes.tcss"))
        self.stylesheet.parse()  # only the new file: parsed sources are cached
        switcher = self.query_one("#panes", ContentSwitcher)
        panes = [view.make(self.workbench) for view in VIEWS]
        for index, (view, pane) in enumerate(zip(VIEWS, panes, strict=True), start=1):
            pane.border_title = f"{index} {view.title}"
            pane.display = False
        progress = ProgressBar(total=100, show_eta=True, id="progress")
        progress.display = False
        try:
            with self.batch_update():
                await switcher.mount_all(panes)
                await self.query_one("#status-bar").mount(progress)
                await self.query_one("#prompt-bar").mount(PromptInput(self._first_prompt, id="prompt"))
                await self.query("#first-frame, #prompt-text").remove()
                self._panes_ready = True
                self.show_pane(self.pane, focus=False)
        finally:
            self._panes_ready = True  # a failed mount must not leave q and ctrl+q swallowed
        if self._exit_after_mount is not None:
            super().exit(*self._exit_after_mount)  # q (or ctrl+q) came while the panes were mounting
            return
        # the pane the session opens takes the keys, not the hidden bay behind it
        self.pane_widget(self.pane).focus_main()
        self._start()

    def exit(self, result: None = None, return_code: int = 0, message: Any = None) -> None:
        """Quit; while the panes are still mounting (a moment after the first frame), once they are.

        Tearing the screen down under a pane that is mounting fails in its ``on_mount``.
        """
        if not self._panes_ready and self._garage_ready:
            self._exit_after_mount = (result, return_code, message)
            return
        super().exit(result, return_code, message)

    def _opening_spec(self) -> str:
        session = self.pending_session
        entry = session.active_entry if session else None
        return entry.spec if entry else self.workbench.model_spec

    # ---- the panes, found by id (their modules load after the first frame) --------------------
    def part_tree(self) -> PartTree:
        return cast("PartTree", self.query_one("#part-tree"))

    def diagnostics_pane(self) -> DiagnosticsPane:
        return cast("DiagnosticsPane", self.query_one("#diagnostics"))

    def parts_pane(self) -> PartsPane:
        return cast("PartsPane", self.query_one("#parts"))

    def bench_pane(self) -> BenchPane:
        return cast("BenchPane", self.query_one("#bench"))

    def progress_bar(self) -> ProgressBar:
        return cast("ProgressBar", self.query_one("#progress"))

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every notification carries user or file text (paths, prompts, recipe refs): never markup."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def _start(self) -> None:
        """Open the model the session or the command line names, unless it is already open."""
        session = self.pending_session
        entry = session.active_entry if session else None
        spec = entry.spec if entry else self.workbench.model_spec
        name = entry.name if entry else spec
        garage = self.workbench.garage
        if garage is not None and name in garage.models:
            self.post_message(ModelLoaded(name, garage.models[name]))
        else:
            self.open_model(spec, entry.device if entry else self.workbench.device)

    # ---- jobs -------------------------------------------------------------------------------
    def begin_job(self, job: str, text: str) -> None:
        self.workbench.job = job
        bar = self.progress_bar()
        bar.display = True
        bar.update(total=None, progress=0)
        self.set_status(text)
        self.refresh_bindings()

    def end_job(self, text: str = "") -> None:
        self.workbench.job = None
        self.progress_bar().display = False
        self.set_status(text)
        self.refresh_bindings()

    def set_status(self, text: str) -> None:
        # a prompt like "[bold] is" is shown as typed, never read as markup
        self.query_one("#status", Static).update(Text(text))

    def open_model(self, spec: str, device: str = "cpu") -> None:
        self.begin_job("load", f"opening {spec}…")

        def compute(ctx: JobContext) -> ModelLoaded | None:
            loaded = self.workbench.open_model(spec, device, ctx,
                                               lambda shell: ctx.post(StructureLoaded(shell.name, shell)))
            return None if ctx.cancel.is_set() else ModelLoaded(loaded.name, loaded)

        start_job(self, "load", compute, group="model", name="_open_model")

    # ---- pane helpers -----------------------------------------------------------------------
    def pane_widget(self, pane: str) -> View.Pane:
        """The pane container called ``pane`` (each has ``focus_main`` and ``copy_text``)."""
        return cast("View.Pane", self.query_one(f"#{pane}"))

    def show_pane(self, pane: str, focus: bool = True) -> None:
        self.pane = pane
        self.query_one("#panes", ContentSwitcher).current = pane
        self._update_strip()
        if focus:
            self.pane_widget(pane).focus_main()
        report = self.workbench.last_report
        if (pane == "diagnostics" and report is not None and self.has_weights and self.job is None
                and report.selected != self.workbench.selected):
            # the pane describes the selected part: refresh it when the selection moved since the run
            self.action_run_prompt()
        self.refresh_bindings()

    def _update_strip(self) -> None:
        edits = len(self.workbench.interventions())
        self.query_one("#pane-strip", Static).update(pane_strip(self.pane, self.loaded, edits, self.session_title))

    def refresh_bay(self, rebuild: bool = False) -> None:
        """Redraw the tree labels, the selected part's detail and the guesses."""
        from garage_tui.widgets.bay_pane import BayPane

        self.query_one(BayPane).redraw(rebuild)
        self._update_strip()
        self.refresh_bindings()

    # ---- handlers: models and runs ----------------------------------------------------------
    @on(StructureLoaded)
    @while_shown
    def _on_structure(self, message: StructureLoaded) -> None:
        self.workbench.install_model(message.loaded)
        self.refresh_bay(rebuild=True)
        self.set_status(f"{message.name}: structure shown, loading weights…")

    @on(ModelLoaded)
    @while_shown
    def _on_model_loaded(self, message: ModelLoaded) -> None:
        self.workbench.install_model(message.loaded)
        self.refresh_bay(rebuild=True)
        self.end_job(f"{message.name} open")
        session, self.pending_session = self.pending_session, None
        # a session's edits are rebuilt in a worker (a steer recomputes its vector); it runs the prompt
        restoring = self._restore(session) if session is not None else False
        if session is None and self.garage.selected is None:
            self.garage.selected = "model"
        self.refresh_bay(rebuild=True)
        if session is not None:
            self._restore_view(session)
        if self.garage.selected:
            self.part_tree().select_address(self.garage.selected)
        if self.has_weights and self.prompt_text and not restoring:
            self.action_run_prompt()

    @on(RunFinished)
    @while_shown
    def _on_run_finished(self, message: RunFinished) -> None:
        self.workbench.last_report = message.report
        self.end_job(f"ran “{message.report.prompt}”")
        self.refresh_bay()
        self.diagnostics_pane().show_report(message.report)
        saved, self._saved_report = self._saved_report, None
        if saved is not None:
            from garage_tui.ui_state import differences

            for problem in differences(saved, message.report):
                self.notify(f"the restored run differs from the saved session: {problem}", severity="warning")

    def _restore_view(self, session: Session) -> None:
        """The session's tree expansion; its saved run is checked against the re-run when it lands."""
        from garage_tui.ui_state import expanded_of, saved_report

        self.part_tree().expand_addresses(expanded_of(session.ui))
        self._saved_report = saved_report(session.ui)

    # Named handlers (not ``@on``) for the widgets' own messages: ``@on`` would import each widget
    # module (plotext charts, tables) when this module loads, before the first frame.
    def on_tree_node_highlighted(self, event: PartTree.NodeHighlighted) -> None:
        """The bay tree's cursor moved: that part is selected."""
        if self.garage is None or event.node.data is None:
            return
        self.garage.selected = event.node.data
        self.refresh_bay()

    @on(Input.Submitted, "#prompt")
    def _on_prompt_submitted(self, event: Input.Submitted) -> None:
        self.action_run_prompt()

    @on(JobProgressed)
    @while_shown
    def _on_progress(self, message: JobProgressed) -> None:
        bar = self.progress_bar()
        if message.fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=100, progress=round(message.fraction * 100))
        self.set_status(f"{message.job}: {message.stage}")

    @on(JobFailed)
    @while_shown
    def _on_failed(self, message: JobFailed) -> None:
        if self.job == message.job or message.job == "load":
            self.end_job(f"{message.job} failed")
        self.notify(message.message, title=f"{message.job} failed", severity="error", timeout=8)

    @on(JobCancelled)
    @while_shown
    def _on_cancelled(self, message: JobCancelled) -> None:
        stale = message.worker
        if stale is not None and any(w is not stale and w.group == stale.group and w.is_running and not w.is_cancelled
                                     for w in self.workers):
            return  # a newer worker of the same group replaced this one: its job goes on
        self.end_job(f"{message.job} cancelled")
        self.notify(f"{message.job} cancelled", severity="warning")

    @while_shown
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            # Workers catch their own errors; this is the last guard against a traceback.
            self.end_job("job failed")
            error = event.worker.error or RuntimeError("a background job failed")
            self.notify(error_line(error), severity="error")

    # ---- handlers: requests from panes, and their results -------------------------------------
    @on(AttentionRequested)
    def _on_attention_requested(self, message: AttentionRequested) -> None:
        if not (self.has_weights and self.prompt_text):
            return
        workbench, loaded, prompt = self.workbench, self.loaded, self.prompt_text
        selected, edits = workbench.selected, workbench.interventions()
        self.begin_job("attention", "reading every head's attention pattern…")

        def compute(ctx: JobContext) -> AttentionRead | None:
            report = workbench.compute_attention(loaded, prompt, selected, edits, ctx)
            return None if report is None else AttentionRead(report)

        start_job(self, "attention", compute, group="diag", name="_attention",
                  model_lock=self.workbench.model_lock)

    @on(ImportanceRequested)
    def _on_importance_requested(self, message: ImportanceRequested) -> None:
        from garage_tui.controller import layer_of

        layer = layer_of(self.workbench.selected)
        if layer is None:
            self.notify("select a layer, attention block or head in the bay first (1)", severity="warning")
            return
        workbench, loaded = self.workbench, self.loaded
        self.begin_job("importance", f"ablating each head of L{layer} on the sample text…")

        def compute(ctx: JobContext) -> ImportanceRead | None:
            report = workbench.compute_importance(loaded, layer, ctx)
            return None if report is None else ImportanceRead(report)

        start_job(self, "importance", compute, group="diag", name="_importance",
                  model_lock=self.workbench.model_lock)

    @on(AttentionRead)
    @while_shown
    def _on_attention(self, message: AttentionRead) -> None:
        self.end_job("attention ready")
        self.diagnostics_pane().show_attention(message.report)

    @on(ImportanceRead)
    @while_shown
    def _on_importance(self, message: ImportanceRead) -> None:
        self.end_job("importance ready")
        self.diagnostics_pane().show_importance(message.report)

    @on(PartsRequested)
    def _on_parts_requested(self, message: PartsRequested) -> None:
        workbench, verb, name, value = self.workbench, message.verb, message.name, message.value

        def compute(ctx: JobContext) -> PartsChanged:
            note = "" if verb == "reload" else workbench.change_part(verb, name, value)
            return PartsChanged(note, workbench.read_parts())

        start_job(self, "parts bin", compute, group="parts", name="_parts")

    @on(PartsChanged)
    @while_shown
    def _on_parts_changed(self, message: PartsChanged) -> None:
        if message.note:
            self.notify(message.note)
        self.parts_pane().show_rows(message.rows)
        self.refresh_bindings()

    @on(FitsRequested)
    def _on_fits_requested(self, message: FitsRequested) -> None:
        workbench, loaded, slot, index = self.workbench, self.loaded, message.slot, message.index

        def compute(ctx: JobContext) -> FitsFound:
            return FitsFound(slot, index, workbench.fitting_parts(loaded, slot))

        start_job(self, "parts bin", compute, group="bench-fits", name="_find_fits")

    @on(FitsFound)
    @while_shown
    def _on_fits(self, message: FitsFound) -> None:
        self.bench_pane().offer_parts(message.slot, message.index, message.names)

    @on(RecipeCheckRequested)
    def _on_check_requested(self, message: RecipeCheckRequested) -> None:
        workbench, recipe = self.workbench, message.recipe
        start_job(self, "recipe check", lambda ctx: RecipeChecked(recipe, workbench.check_recipe(recipe)),
                  group="bench-validate", name="_validate")

    @on(RecipeChecked)
    @while_shown
    def _on_checked(self, message: RecipeChecked) -> None:
        self.bench_pane().show_check(message.recipe, message.check)
        self.refresh_bindings()

    @on(BuildRequested)
    def _on_build_requested(self, message: BuildRequested) -> None:
        workbench, recipe, out_dir = self.workbench, message.recipe, message.out_dir
        self.begin_job("build", f"building {recipe.get('name', 'hybrid')}…")
        start_job(self, "build", lambda ctx: BuildFinished(workbench.build_and_evaluate(recipe, out_dir, ctx)),
                  group="bench", name="_build_and_evaluate",
                  model_lock=self.workbench.model_lock)

    @on(BuildFinished)
    @while_shown
    def _on_built(self, message: BuildFinished) -> None:
        self.bench_pane().show_build(message.report)
        self.end_job(f"built {message.report.out_dir}")
        self.notify(f"built and evaluated {message.report.out_dir}")

    # ---- actions ----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only keys that work now show in the footer (and fire)."""
        part = self.selected_part
        if action in ("show_pane", "open_session", "focus_prompt", "save_session") and not self._panes_ready:
            return False  # the panes are mounted a moment after the first frame
        if action == "run_prompt":
            return self.has_weights and self.job != "load"
        if action == "cancel_job":
            return self.job is not None
        if action == "toggle_intervention":
            kinds = SCALABLE if parameters and parameters[0] == "scale" else ABLATABLE
            return self.has_weights and part is not None and part.kind in kinds and self.job != "restore"
        if action == "steer_part":
            # a steer supersedes a run in flight, like a/m/s do; other jobs keep the model to themselves
            return self.has_weights and part is not None and part.kind in STEERABLE and self.job in (None, "run")
        if action == "clear_interventions":
            return self.garage is not None and bool(self.garage.interventions) and self.job != "restore"
        if action in ("save_session", "copy_selection", "goto_part"):
            return self.loaded is not None
        if action == "attribute":
            return self.has_weights
        if action == "transfer":
            return self.has_weights
        if action == "search":
            # the build bench's view: it searches the bench's recipe (or the open model's layers)
            return self.pane == "bench" and self.loaded is not None
        if action == "features":
            return self.has_weights and self.workbench.has_parts_bin and part is not None
        if action == "extract_part":
            return (self.has_weights and self.workbench.has_parts_bin and part is not None
                    and part.kind != "model")
        return True

    def action_show_pane(self, pane: str) -> None:
        self.show_pane(pane)

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_run_prompt(self) -> None:
        prompt = self.prompt_text
        if not prompt:
            self.notify("the prompt is empty; press i and type one", severity="warning")
            return
        if not self.has_weights:
            return
        workbench, loaded = self.workbench, self.loaded
        workbench.garage.prompt = prompt
        selected, edits = workbench.selected, workbench.interventions()
        self.begin_job("run", f"running “{prompt}”…")

        def compute(ctx: JobContext) -> RunFinished | None:
            report = workbench.compute_run(loaded, prompt, selected, edits, ctx)
            return None if report is None else RunFinished(report)

        start_job(self, "run", compute, group="run", name="_run_prompt",
                  model_lock=self.workbench.model_lock)

    def action_cancel_job(self) -> None:
        """Esc: every running job gets its cancel event set; the engine stops at its next check."""
        if self.job is None:
            return
        for worker in list(self.workers):
            if worker.is_running and worker.group != "bench-validate":
                worker.cancel()
        self.set_status(f"cancelling {self.job}…")

    def action_leave_prompt(self) -> None:
        """Esc in the prompt: cancel the job in flight, else hand the keys back to the pane."""
        if self.job is not None:
            self.action_cancel_job()
            return
        self.pane_widget(self.pane).focus_main()

    def action_toggle_intervention(self, kind: str) -> None:
        """a/m/s: toggle an edit on the selected part, then re-run the prompt (as v does)."""
        if self.selected_part is None:
            return
        try:
            described, active = self.workbench.toggle_edit(kind)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal, shown as one line
            self.notify(error_line(exc), severity="error")
            return
        self.notify(f"{'on' if active else 'off'}: {described}")
        self.refresh_bay()
        self._rerun()

    def action_clear_interventions(self) -> None:
        self.workbench.clear_edits()
        self.notify("all interventions removed")
        self.refresh_bay()
        self._rerun()

    def _rerun(self) -> None:
        if self.has_weights and self.prompt_text:
            self.action_run_prompt()

    def action_steer_part(self) -> None:
        """``v``: steer the selected layer (ask for prompts), or take its active steer off."""
        part = self.selected_part
        if part is None:
            return
        if part.kind not in STEERABLE:
            self.notify(f"cannot steer {part.address} ({part.kind}): steering adds a vector to the residual "
                        "stream; select a layer such as L10 and press v", severity="warning")
            return
        removed = self.workbench.remove_steers(part.address)
        if removed:
            self.notify(f"off: {', '.join(removed)}")
            self.refresh_bay()
            self._rerun()
            return

        def start(request: SteerRequest | None) -> None:
            if request is None:
                return
            workbench, loaded = self.workbench, self.loaded
            workbench.last_steer = request
            self.begin_job("steer", f"steering vector for {part.address}…")
            start_job(self, "steer",
                      lambda ctx: SteerComputed(workbench.compute_steer(loaded, part.address, request)),
                      group="run", name="_compute_steer",
                  model_lock=self.workbench.model_lock)

        from garage_tui.screens.steer import SteerScreen

        self.push_screen(SteerScreen(part.address, self.workbench.last_steer), start)

    @on(SteerComputed)
    @while_shown
    def _on_steer_computed(self, message: SteerComputed) -> None:
        item = message.intervention
        active = self.workbench.toggle(item)
        self.end_job(f"{'on' if active else 'off'}: {item.describe()}")
        self.notify(f"{'on' if active else 'off'}: {item.describe()}")
        self.refresh_bay()
        self._rerun()

    def action_copy_selection(self) -> None:
        """``y``: copy what the focused pane shows (OSC 52, works over SSH)."""
        copied = self.pane_widget(self.pane).copy_text()
        if copied is None:
            self.notify("nothing to copy here yet", severity="warning")
            return
        what, text = copied
        self.copy_to_clipboard(text)
        self.notify(f"copied {what} (OSC 52)")

    def action_goto_part(self) -> None:
        def go(answer: str | None) -> None:
            if not answer:
                return
            from engine.addresses import resolve
            from engine.errors import GarageError

            try:
                address = resolve(self.loaded.anatomy, answer.strip()).part.address
            except (GarageError, KeyError, ValueError) as exc:
                self.notify(error_line(exc), severity="error")
                return
            self.show_pane("bay")
            self.part_tree().select_address(address)

        from garage_tui.screens.ask import AskScreen

        self.push_screen(AskScreen("Go to part (e.g. L10.attn.h3):", placeholder="address"), go)

    def action_extract_part(self) -> None:
        workbench, loaded, address = self.workbench, self.loaded, self.selected_part.address

        def compute(ctx: JobContext) -> PartsChanged:
            return PartsChanged(workbench.extract(loaded, address), workbench.read_parts())

        start_job(self, "extract", compute, group="parts", name="_extract")

    def action_attribute(self) -> None:
        """``T``: the attribution screen (pick a shipped task; Enter on a node selects it in the bay)."""
        from garage_tui.screens.attribution import AttributionScreen

        self.push_screen(AttributionScreen(self.workbench))

    def on_attribution_view_node_selected(self, message: AttributionView.NodeSelected) -> None:
        from garage_tui.screens.attribution import AttributionScreen

        if isinstance(self.screen, AttributionScreen):
            self.pop_screen()
        address = message.address
        if address not in self.loaded.anatomy.by_address:
            self.notify(f"{address} is not a part of {self.loaded.name}", severity="warning")
            return
        self.show_pane("bay")
        self.part_tree().select_address(address)

    def action_search(self) -> None:
        """``S`` on the bench: the search view over the bench's recipe (Enter on a trial puts its recipe back)."""
        from garage_tui.screens.search import SearchScreen

        self.push_screen(SearchScreen(self.workbench, self.bench_pane().recipe))

    def on_search_screen_recipe_chosen(self, message: SearchScreen.RecipeChosen) -> None:
        """A search trial's recipe onto the bench (the search screen closes; its journal stays resumable)."""
        from garage_tui.screens.search import SearchScreen

        if isinstance(self.screen, SearchScreen):
            self.pop_screen()
        self.show_pane("bench")
        self.bench_pane().set_recipe(message.recipe, cursor=0)
        self.notify(f"trial {message.number}'s recipe is on the bench")

    def action_transfer(self) -> None:
        """``X``: the transfer view (model B, a stitch, the sweep heat map, the steer moved across, blades)."""
        from garage_tui.screens.transfer import TransferScreen

        self.push_screen(TransferScreen(self.workbench))

    def action_features(self) -> None:
        """``f``: the top features of the SAE that reads the selected part, for the prompt line's text."""
        from garage_tui.screens.features import FeaturesScreen

        prompt = self.prompt_text
        if not prompt:
            self.notify("the prompt is empty; press i and type one", severity="warning")
            return
        self.push_screen(FeaturesScreen(self.workbench, self.selected_part.address, prompt))

    def on_features_view_feature_chosen(self, message: FeaturesView.FeatureChosen) -> None:
        """Toggle ablating the chosen feature on the workbench's edits, then re-run (as ``a`` does)."""
        from garage_tui.screens.features import FeaturesScreen

        if isinstance(self.screen, FeaturesScreen):
            self.pop_screen()
        try:
            described, active = self.workbench.toggle_feature(message.address, message.feature)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal, shown as one line
            self.notify(error_line(exc), severity="error")
            return
        self.notify(f"{'on' if active else 'off'}: {described}")
        self.show_pane("bay")
        self.refresh_bay()
        self._rerun()

    def action_next_theme(self) -> None:
        names = self.theme_names or ["garage"]
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self.notify(f"theme: {self.theme}")

    def watch_theme(self, theme: str) -> None:
        if self._garage_ready and self.settings.theme != theme:
            self.settings.theme = theme
            try:
                self.settings.save()
            except OSError as exc:  # a read-only home must not stop the garage
                self.notify(f"theme not remembered: {error_line(exc)}", severity="warning")

    def action_quit_garage(self) -> None:
        if self.job is None:
            self.exit()
            return

        def answer(confirmed: bool | None) -> None:
            if confirmed:
                self.action_cancel_job()
                self.exit()

        from garage_tui.screens.ask import ConfirmScreen

        self.push_screen(ConfirmScreen(f"A {self.job} job is running. Quit anyway?"), answer)

    # ---- help and palette -------------------------------------------------------------------
    def action_show_help(self) -> None:
        from garage_tui.keymap import binding_rows
        from garage_tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(binding_rows(self), self.session_title, self.session_notes))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Textual's own commands, then the garage's (see ``keymap.palette_commands``)."""
        yield from super().get_system_commands(screen)
        from garage_tui.keymap import palette_commands

        for title, help_text, callback in palette_commands(self):
            yield SystemCommand(title, help_text, callback)

    # ---- sessions ---------------------------------------------------------------------------
    def _restore(self, session: Session) -> bool:
        """Apply ``session`` to the open model; True when its edits are still being rebuilt."""
        self.workbench.apply_session(session)
        self.session_title, self.session_notes = session.title, list(session.notes)
        self.bench_pane().set_recipe(session.recipe)
        if session.title or session.notes:
            self.notify("\n".join([session.title, *session.notes]).strip(), title="session", timeout=10)
        if not session.interventions:
            return False
        workbench, loaded, documents = self.workbench, self.loaded, list(session.interventions)
        self.begin_job("restore", "restoring the session's edits…")

        def compute(ctx: JobContext) -> InterventionsRestored | None:
            result = workbench.rebuild_edits(loaded, documents, ctx)
            return None if result is None else InterventionsRestored(*result)

        start_job(self, "restore", compute, group="restore", name="_rebuild_interventions",
                  model_lock=self.workbench.model_lock)
        return True

    @on(InterventionsRestored)
    @while_shown
    def _on_restored(self, message: InterventionsRestored) -> None:
        self.workbench.set_edits(message.interventions)
        self.end_job(f"restored {len(message.interventions)} edits")
        for problem in message.problems:
            self.notify(problem, severity="error")
        self.refresh_bay()
        self._rerun()

    def default_session_path(self) -> Path:
        from engine.storage import garage_home

        if self.session_path is not None and garage_home() in self.session_path.resolve().parents:
            return self.session_path
        stem = self.session_path.stem if self.session_path else "workbench"
        return garage_home() / "sessions" / f"{stem}.json"

    def current_session(self) -> Session:
        from garage_tui.ui_state import ui_state

        session = cast("Session", self.workbench.current_session(
            self.prompt_text, pane=self.pane, theme=self.theme, recipe=self.bench_pane().recipe,
            title=self.session_title, notes=self.session_notes))
        # the tree as the user left it and what the last run showed, not only the edits
        session.ui = ui_state(self.part_tree().expanded_addresses(), self.last_report)
        return session

    def action_save_session(self) -> None:
        def save(answer: str | None) -> None:
            if not answer:
                return
            from engine.errors import GarageError
            from engine.sessions import save_session

            try:
                path = save_session(Path(answer), self.current_session())
            except (GarageError, OSError) as exc:
                self.notify(error_line(exc), severity="error")
                return
            self.session_path = path
            self.notify(f"session saved to {path}")

        from garage_tui.screens.ask import AskScreen

        self.push_screen(AskScreen("Save session to:", str(self.default_session_path())), save)

    def action_open_session(self) -> None:
        from engine.storage import garage_home
        from garage_tui.screens.ask import AskScreen

        def restore(answer: str | None) -> None:
            if answer:
                self.restore_session_file(Path(answer))

        self.push_screen(AskScreen("Open session file:", str(garage_home() / "sessions") + "/"), restore)

    def restore_session_file(self, path: Path) -> None:
        """Bring back a saved workbench: theme, pane, prompt, model, selection, edits, recipe."""
        from engine.sessions import SessionError, load_session

        try:
            session = load_session(path)
        except SessionError as exc:
            self.notify(str(exc), severity="error")
            return
        self.session_path = path
        if session.theme in self.available_themes:
            self.theme = session.theme
        self.query_one("#prompt", Input).value = session.prompt
        self.show_pane(session_view(session.view))
        self.pending_session = session
        self._start()
