"""Saving and restoring the workbench from the TUI (ctrl+s, ctrl+o, ``--session``).

The session document itself lives in ``engine.sessions``; this mixin asks for paths, applies a
restored session to the garage, and rebuilds its interventions in a worker, because a steer's
vector is recomputed from its prompts on the open model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import Input
from textual.worker import get_current_worker

from engine.sessions import Session, SessionError, load_session, save_session
from engine.storage import garage_home
from garage_tui.messages import InterventionsRestored, JobCancelled, error_line
from garage_tui.screens.ask import AskScreen
from garage_tui.widgets.bench_pane import BenchPane


class SessionMixin:
    """ctrl+s / ctrl+o and the restore path: mixed into ``GarageApp``."""

    session_path: Path | None
    pending_session: Session | None
    recipe: dict[str, Any] | None

    def _restore_into_garage(self, session: Session) -> bool:
        """Apply ``session`` to the open model; True when its edits are still being rebuilt."""
        self.garage.prompt = session.prompt
        self.garage.selected = session.selected if session.selected in self.loaded.anatomy.by_address else "model"
        self.garage.interventions = []
        self.recipe = session.recipe
        self.query_one(BenchPane).restore_recipe(session.recipe)
        if not session.interventions:
            return False
        self.begin_job("restore", "restoring the session's edits…")
        self._rebuild_interventions(list(session.interventions))
        return True

    @work(thread=True, exclusive=True, group="restore")
    def _rebuild_interventions(self, documents: list[dict[str, Any]]) -> None:
        from engine.sessions import intervention_from_dict

        worker = get_current_worker()
        loaded, rebuilt, problems = self.loaded, [], []
        for document in documents:
            if worker.is_cancelled:
                self.post_message(JobCancelled("restore", worker))
                return
            try:
                rebuilt.append(intervention_from_dict(document, loaded))
            except SessionError as exc:
                problems.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad edit must not lose the others
                problems.append(error_line(exc))
        self.post_message(InterventionsRestored(rebuilt, problems))

    def on_interventions_restored(self, message: InterventionsRestored) -> None:
        self.garage.interventions = list(message.interventions)
        self.end_job(f"restored {len(message.interventions)} edits")
        for problem in message.problems:
            self.notify(problem, severity="error")
        self.refresh_bay()
        if self.has_weights and self.prompt_text:
            self.action_run_prompt()

    def default_session_path(self) -> Path:
        if self.session_path is not None and garage_home() in self.session_path.resolve().parents:
            return self.session_path
        stem = self.session_path.stem if self.session_path else "workbench"
        return garage_home() / "sessions" / f"{stem}.json"

    def current_session(self) -> Session:
        from engine.sessions import session_from_garage

        self.garage.prompt = self.prompt_text
        return session_from_garage(self.garage, pane=self.pane, theme=self.theme,
                                   recipe=self.query_one(BenchPane).recipe_document())

    def action_save_session(self) -> None:
        def save(answer: str | None) -> None:
            if not answer:
                return
            try:
                path = save_session(Path(answer), self.current_session())
            except Exception as exc:  # noqa: BLE001
                self.notify(error_line(exc), severity="error")
                return
            self.session_path = path
            self.notify(f"session saved to {path}")

        self.push_screen(AskScreen("Save session to:", str(self.default_session_path())), save)

    def action_open_session(self) -> None:
        def restore(answer: str | None) -> None:
            if answer:
                self.restore_session_file(Path(answer))

        self.push_screen(AskScreen("Open session file:", str(garage_home() / "sessions") + "/"), restore)

    def restore_session_file(self, path: Path) -> None:
        """Bring back a saved workbench: theme, pane, prompt, model, selection, edits, recipe."""
        try:
            session = load_session(path)
        except SessionError as exc:
            self.notify(str(exc), severity="error")
            return
        self.session_path = path
        if session.theme in self.available_themes:
            self.theme = session.theme
        self.query_one("#prompt", Input).value = session.prompt
        self.show_pane(session.pane)
        self.pending_session = session
        self._start()
