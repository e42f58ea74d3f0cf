"""One factory for the garage app, shared by the ``garage`` command and the tests.

Tests pass an engine (a ``Garage`` with a model already open) and a parts bin; the command
passes makers so torch is imported only after the first frame, inside workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.bundled import DEFAULT_MODEL
from garage_tui.keymap import load_keymap
from garage_tui.settings import Settings, load_settings

if TYPE_CHECKING:
    from engine.sessions import Session


def default_parts_bin() -> Any:
    """The parts bin under GARAGE_HOME (imports torch: call it from a worker)."""
    from engine.parts import PartsBin

    return PartsBin()


def build_app(engine: Any = None, parts_bin: Any = default_parts_bin, session: Session | Path | str | None = None,
              settings: Settings | None = None, *, model: str = DEFAULT_MODEL, device: str = "cpu",
              theme: str | None = None) -> Any:
    """The garage app with its services; ``session`` may be a path (read and validated here)."""
    from garage_tui.app import GarageApp

    session_path = None
    if isinstance(session, (str, Path)):
        from engine.sessions import load_session

        session_path = Path(session).expanduser()
        session = load_session(session_path)
    settings = settings or load_settings()
    keymap, problem = load_keymap()
    keymap = {**settings.keymap, **keymap}
    return GarageApp(engine, parts_bin, session, settings, model_spec=model, device=device,
                     session_path=session_path, theme=theme, keymap=keymap,
                     startup_notes=[problem] if problem else [])
