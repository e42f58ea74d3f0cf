"""The garage's Textual shell: panes, keys, and the state the handlers change.

Services arrive through the constructor (see ``factory.build_app``). The workers live in
``jobs``, the bay's intervention keys in ``edits``, session save/restore in ``session_actions``
and the palette and help in ``palette``. Nothing here imports torch at module level: the model
opens in a thread worker after the first frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import ContentSwitcher, Footer, Input, ProgressBar, Sparkline, Static

from engine.sessions import PANES, Session
from garage_tui.edits import STEERABLE, EditsMixin
from garage_tui.jobs import JobsMixin
from garage_tui.keymap import checked_keymap
from garage_tui.messages import ModelLoaded, RunFinished, StructureLoaded, error_line
from garage_tui.palette import PaletteMixin
from garage_tui.screens.ask import AskScreen, ConfirmScreen
from garage_tui.session_actions import SessionMixin
from garage_tui.settings import Settings
from garage_tui.themes import load_themes
from garage_tui.widgets.bay_pane import ABLATABLE, SCALABLE, BayPane, detail_text
from garage_tui.widgets.bench_pane import BenchPane
from garage_tui.widgets.diagnostics_pane import DiagnosticsPane
from garage_tui.widgets.part_tree import PartTree
from garage_tui.widgets.parts_pane import PartsPane
from garage_tui.widgets.prompt_bar import PromptInput

PANE_TITLES = {"bay": "Engine bay", "diagnostics": "Diagnostics", "parts": "Parts bin", "bench": "Build bench"}
DEFAULT_PROMPT = "The Eiffel Tower is in the city of"


class GarageApp(JobsMixin, SessionMixin, EditsMixin, PaletteMixin, App[None]):
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
    ]

    def __init__(self, engine: Any = None, parts_bin: Any = None, session: Session | None = None,
                 settings: Settings | None = None, *, model_spec: str = "smollm2-135m", device: str = "cpu",
                 session_path: Path | None = None, theme: str | None = None, keymap: dict[str, str] | None = None,
                 startup_notes: list[str] | None = None) -> None:
        super().__init__()
        self.garage = engine
        self.parts_bin = parts_bin
        self.settings = settings or Settings()
        self.model_spec = model_spec
        self.device = device
        self.pending_session = session
        self.session_path = session_path
        self.job: str | None = None
        self.pane = "bay"
        self.last_report: dict[str, Any] | None = None
        self.recipe: dict[str, Any] | None = None
        self.structure_only = False
        self._startup_notes = list(startup_notes or [])
        self._garage_ready = False
        themes, problems = load_themes()
        self._startup_notes += problems
        self.theme_names = [t.name for t in themes]
        for loaded_theme in themes:
            self.register_theme(loaded_theme)
        wanted = theme or (session.theme if session and session.theme else None) or self.settings.theme
        if wanted not in self.available_themes:
            known = ", ".join(self.theme_names)
            self._startup_notes.append(f"unknown theme '{wanted}'; using garage (themes: {known})")
            wanted = "garage"
        self.theme = wanted
        if keymap:
            keymap, problems = checked_keymap(self, keymap)
            self._startup_notes.extend(problems)
            self.set_keymap(keymap)

    # ---- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="pane-strip")
        with ContentSwitcher(initial="bay", id="panes"):
            yield BayPane(id="bay", classes="pane")
            yield DiagnosticsPane(id="diagnostics", classes="pane")
            yield PartsPane(id="parts", classes="pane")
            yield BenchPane(id="bench", classes="pane")
        with Horizontal(id="prompt-bar"):
            yield Static("prompt ", id="prompt-label")
            yield PromptInput(DEFAULT_PROMPT, id="prompt")
        with Horizontal(id="status-bar"):
            yield Static("", id="status")
            yield ProgressBar(total=100, show_eta=False, id="progress")
        yield Footer()

    def on_mount(self) -> None:
        for index, pane in enumerate(PANES, start=1):
            self.query_one(f"#{pane}").border_title = f"{index} {PANE_TITLES[pane]}"
        self.query_one("#progress", ProgressBar).display = False
        session = self.pending_session
        if session is not None:
            self.query_one("#prompt", Input).value = session.prompt
            self.show_pane(session.pane, focus=False)
        self._update_strip()
        # the pane the session opens takes the keys, not the hidden bay behind it
        self.pane_widget(self.pane).focus_main()
        for note in self._startup_notes:
            self.notify(note, severity="warning")
        self._garage_ready = True
        self.call_after_refresh(self._start)

    def _start(self) -> None:
        """Open the model the session or the command line names, unless it is already open."""
        session = self.pending_session
        entry = session.active_entry if session else None
        spec = entry.spec if entry else self.model_spec
        name = entry.name if entry else spec
        if self.garage is not None and name in getattr(self.garage, "models", {}):
            self.post_message(ModelLoaded(name, self.garage.models[name]))
        else:
            self.open_model(spec, entry.device if entry else self.device)

    # ---- state helpers ------------------------------------------------------------------
    @property
    def loaded(self) -> Any:
        if self.garage is None or self.garage.active not in self.garage.models:
            return None
        return self.garage.models[self.garage.active]

    @property
    def has_weights(self) -> bool:
        return self.loaded is not None and not self.loaded.structure_only

    @property
    def selected_part(self) -> Any:
        loaded = self.loaded
        if loaded is None or self.garage.selected is None:
            return None
        return loaded.anatomy.by_address.get(self.garage.selected)

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def _update_strip(self) -> None:
        parts = []
        for index, pane in enumerate(PANES, start=1):
            label = f" {index} {PANE_TITLES[pane]} "
            parts.append(f"[reverse b]{label}[/]" if pane == self.pane else label)
        loaded = self.loaded
        model = f"  {loaded.name}{' (structure only)' if loaded.structure_only else ''}" if loaded else ""
        edits = len(self.garage.interventions) if self.garage is not None else 0
        self.query_one("#pane-strip", Static).update("│".join(parts) + model + (f" · {edits} edits" if edits else ""))

    def refresh_bay(self, rebuild: bool = False) -> None:
        """Redraw the tree labels and the detail for the selected part."""
        loaded = self.loaded
        if loaded is None:
            return
        tree = self.query_one(PartTree)
        norms = (self.last_report or {}).get("norms")
        if rebuild or tree.anatomy is not loaded.anatomy:
            title = f"{loaded.name} · {loaded.anatomy.root.info.get('family') or 'generic'}"
            tree.show_anatomy(title, loaded.anatomy, self.marks(), norms)
        else:
            tree.relabel(self.marks(), norms)
        part = self.selected_part or loaded.anatomy.root
        self.query_one("#part-detail", Static).update(detail_text(part, self.intervention_rows(), self.last_report))
        self.query_one("#norms", Sparkline).data = list(norms or [])
        self._update_strip()
        self.refresh_bindings()

    def pane_widget(self, pane: str) -> BayPane | DiagnosticsPane | PartsPane | BenchPane:
        """The pane container called ``pane`` (each has ``focus_main``)."""
        return cast("BayPane | DiagnosticsPane | PartsPane | BenchPane", self.query_one(f"#{pane}"))

    def show_pane(self, pane: str, focus: bool = True) -> None:
        self.pane = pane
        self.query_one("#panes", ContentSwitcher).current = pane
        self._update_strip()
        if focus:
            self.pane_widget(pane).focus_main()
        report = self.last_report
        if (pane == "diagnostics" and report is not None and self.has_weights and self.job is None
                and report.get("selected") != self.garage.selected):
            # the pane describes the selected part: refresh it when the selection moved since the run
            self.action_run_prompt()
        self.refresh_bindings()

    # ---- message handlers: the only place state changes --------------------------------
    @on(StructureLoaded)
    def _on_structure(self, message: StructureLoaded) -> None:
        self._install_model(message.loaded)
        self.set_status(f"{message.name}: structure shown, loading weights…")

    @on(ModelLoaded)
    def _on_model_loaded(self, message: ModelLoaded) -> None:
        self._install_model(message.loaded)
        self.end_job(f"{message.name} open")
        session, self.pending_session = self.pending_session, None
        # a session's edits are rebuilt in a worker (a steer recomputes its vector); it runs the prompt
        restoring = self._restore_into_garage(session) if session is not None else False
        if session is None and self.garage.selected is None:
            self.garage.selected = "model"
        self.refresh_bay(rebuild=True)
        if self.garage.selected:
            self.query_one(PartTree).select_address(self.garage.selected)
        if self.has_weights and self.prompt_text and not restoring:
            self.action_run_prompt()

    def _install_model(self, loaded: Any) -> None:
        if self.garage is None:
            from engine.garage import Garage

            self.garage = Garage()
        self.garage.models[loaded.name] = loaded
        self.garage.active = loaded.name
        self.refresh_bay(rebuild=True)

    @on(RunFinished)
    def _on_run_finished(self, message: RunFinished) -> None:
        self.last_report = message.report
        self.end_job(f"ran “{message.report['prompt']}”")
        self.refresh_bay()
        self.query_one(DiagnosticsPane).show_report(message.report)

    @on(PartTree.NodeHighlighted)
    def _on_part_highlighted(self, event: PartTree.NodeHighlighted) -> None:
        if self.garage is None or event.node.data is None:
            return
        self.garage.selected = event.node.data
        part = self.selected_part
        if part is not None:
            self.query_one("#part-detail", Static).update(detail_text(part, self.intervention_rows(), self.last_report))
        self.refresh_bindings()

    @on(Input.Submitted, "#prompt")
    def _on_prompt_submitted(self, event: Input.Submitted) -> None:
        self.action_run_prompt()

    # ---- actions ------------------------------------------------------------------------
    @property
    def prompt_text(self) -> str:
        return self.query_one("#prompt", Input).value.strip()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only keys that work now show in the footer (and fire)."""
        part = self.selected_part
        if action == "run_prompt":
            return self.has_weights and self.job != "load"
        if action == "cancel_job":
            return self.job is not None
        if action == "toggle_intervention":
            kinds = SCALABLE if parameters and parameters[0] == "scale" else ABLATABLE
            return self.has_weights and part is not None and part.kind in kinds and self.job != "restore"
        if action == "steer_part":
            # layers only, like a/m/s on their kinds; computing the vector needs the model to itself
            return self.has_weights and part is not None and part.kind in STEERABLE and self.job is None
        if action == "clear_interventions":
            return self.garage is not None and bool(self.garage.interventions) and self.job != "restore"
        if action == "save_session":
            return self.loaded is not None
        if action in ("copy_selection", "goto_part"):
            return self.loaded is not None
        if action == "extract_part":
            return self.has_weights and self.parts_bin is not None and part is not None and part.kind != "model"
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
        self.garage.prompt = prompt
        self.begin_job("run", f"running “{prompt}”…")
        self._run_prompt(prompt, self.garage.selected, list(self.garage.interventions))

    def action_copy_selection(self) -> None:
        part = self.selected_part or (self.loaded.anatomy.root if self.loaded else None)
        if part is None:
            return
        text = detail_text(part, self.intervention_rows(), self.last_report).plain
        self.copy_to_clipboard(text)
        self.notify(f"copied {part.address} (OSC 52)")

    def action_goto_part(self) -> None:
        def go(answer: str | None) -> None:
            if not answer:
                return
            from engine.addresses import resolve

            try:
                address = resolve(self.loaded.anatomy, answer.strip()).part.address
            except Exception as exc:  # noqa: BLE001
                self.notify(error_line(exc), severity="error")
                return
            self.show_pane("bay")
            self.query_one(PartTree).select_address(address)

        self.push_screen(AskScreen("Go to part (e.g. L10.attn.h3):", placeholder="address"), go)

    def action_extract_part(self) -> None:
        self.query_one(PartsPane).extract(self.loaded, self.selected_part.address)

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
            except Exception as exc:  # noqa: BLE001 - a read-only home must not stop the garage
                self.notify(f"theme not remembered: {error_line(exc)}", severity="warning")

    def action_quit_garage(self) -> None:
        if self.job is None:
            self.exit()
            return

        def answer(confirmed: bool | None) -> None:
            if confirmed:
                self.action_cancel_job()
                self.exit()

        self.push_screen(ConfirmScreen(f"A {self.job} job is running. Quit anyway?"), answer)
