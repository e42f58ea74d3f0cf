"""Rebinding keys from a file: ``GARAGE_HOME/keymap.yaml`` maps binding ids to keys.

Example file::

    bay.ablate: b
    app.save_session: ctrl+w,f2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.storage import garage_home


def keymap_path() -> Path:
    return garage_home() / "keymap.yaml"


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], str | None]:
    """``({binding id: keys}, problem)``; a broken file yields no keymap and a one-line problem."""
    target = path or keymap_path()
    if not target.is_file():
        return {}, None
    from engine.safe_parse import BadDocumentError, load_yaml

    try:
        document = load_yaml(target, "keymap") or {}  # size, UTF-8, depth and alias limits
    except BadDocumentError as exc:
        return {}, f"{exc}"
    if not isinstance(document, dict):
        return {}, f"keymap {target} must map binding ids to keys, e.g. 'bay.ablate: b'"
    return {str(key): str(value) for key, value in document.items()}, None


def checked_keymap(app: Any, keymap: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The entries of ``keymap`` that rebind a real binding to real keys, and one line per other entry."""
    known = {binding.id for _, owner in _binding_sources(app) for binding in owner.BINDINGS if binding.id}
    kept: dict[str, str] = {}
    problems = []
    for binding_id, keys in keymap.items():
        wanted = [key.strip() for key in str(keys).split(",")]
        if binding_id not in known:
            problems.append(f"keymap: no binding '{binding_id}' (ignored); the help screen (?) lists every id")
        elif not all(wanted):
            problems.append(f"keymap: '{binding_id}' has no key (ignored); give keys such as 'f5' or 'ctrl+w,f2'")
        else:
            kept[binding_id] = ",".join(wanted)
    return kept, problems


def _binding_sources(app: Any) -> list[tuple[str, Any]]:
    """Where bindings live, in the order the help screen lists them."""
    from garage_tui.screens.ask import AskScreen, ConfirmScreen
    from garage_tui.screens.attribution import AttributionScreen
    from garage_tui.screens.features import FeaturesScreen
    from garage_tui.screens.help import HelpScreen
    from garage_tui.screens.search import SearchScreen
    from garage_tui.screens.steer import SteerScreen
    from garage_tui.screens.transfer import TransferScreen
    from garage_tui.widgets.attribution_view import AttributionView
    from garage_tui.widgets.bay_pane import BayPane
    from garage_tui.widgets.bench_pane import BenchPane
    from garage_tui.widgets.diagnostics_pane import DiagnosticsPane
    from garage_tui.widgets.features_view import FeaturesView
    from garage_tui.widgets.lists import KeyTable
    from garage_tui.widgets.part_tree import PartTree
    from garage_tui.widgets.parts_pane import FilterInput, PartsPane
    from garage_tui.widgets.prompt_bar import PromptInput

    app_class = app if isinstance(app, type) else type(app)
    return [("everywhere", app_class), ("engine bay", BayPane), ("part tree", PartTree),
            ("diagnostics", DiagnosticsPane), ("parts bin", PartsPane),
            ("parts filter", FilterInput), ("build bench", BenchPane), ("every list", KeyTable),
            ("prompt", PromptInput), ("help", HelpScreen), ("confirm", ConfirmScreen), ("question", AskScreen),
            ("steer", SteerScreen), ("attribution", AttributionScreen), ("attribution", AttributionView),
            ("features", FeaturesScreen), ("features", FeaturesView), ("search", SearchScreen),
            ("transfer", TransferScreen)]


def garage_bindings(app: Any) -> list[tuple[str, Any, str]]:
    """``(where, Binding, keys now)`` for every binding the garage defines, keymap applied."""
    keymap = getattr(app, "_keymap", {}) or {}
    rows = []
    for where, owner in _binding_sources(app):
        for binding in owner.BINDINGS:
            keys = keymap.get(binding.id, binding.key) if binding.id else binding.key
            rows.append((where, binding, keys))
    return rows


def binding_rows(app: Any) -> list[tuple[str, str, str, str]]:
    """Rows for the help screen: where, keys (as typed), what it does, binding id."""
    rows = [(where, keys.replace("question_mark", "?").replace("slash", "/"), binding.description, binding.id or "")
            for where, binding, keys in garage_bindings(app)]
    rows.append(("everywhere", "ctrl+p", "Command palette (every action)", "app.command_palette"))
    return rows


def palette_commands(app: Any) -> list[tuple[str, str, Any]]:
    """``(title, help, callback)`` for the palette: every garage action, with its keys."""
    commands: list[tuple[str, str, Any]] = []
    owners = dict(_binding_sources(app))
    for where, binding, keys in garage_bindings(app):
        if where in ("help", "confirm", "question", "steer", "prompt", "part tree", "parts filter", "every list",
                     "attribution", "features", "search", "transfer"):
            continue
        action, owner = binding.action, owners.get(where)
        commands.append((f"{binding.description} ({where})", f"keys: {keys}",
                         lambda action=action, owner=owner: app.run_action(action, _namespace(app, owner))))
    for theme in getattr(app, "theme_names", []):
        commands.append((f"Theme: {theme}", "switch theme (remembered)",
                         lambda theme=theme: setattr(app, "theme", theme)))
    return commands


def _namespace(app: Any, owner: Any) -> Any:
    """The widget a pane's own action runs on (the app for app-level bindings)."""
    if owner is None or isinstance(app, owner):
        return app
    found = app.query(owner)
    return found.first() if found else app
