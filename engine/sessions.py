"""The workbench as a versioned JSON document that restores exactly.

A session names the open models (how to reopen them), the prompt, the selected part, the
active interventions (as ``Intervention.to_dict()``), the recipe on the build bench, and the
app's own view state (``view``: free-form, the app decides what it names) and theme. Reading
never imports torch: interventions are rebuilt on demand by ``interventions_from_session``,
so the TUI can read a session before its first frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import GarageError
from engine.limits import MAX_DOC_BYTES
from engine.storage import atomic_write_json

if TYPE_CHECKING:
    from engine.garage import Garage
    from engine.interventions import Intervention

SESSION_VERSION = 1
KIND = "model-garage-session"


class SessionError(GarageError):
    """A session file that cannot be read, is malformed, or comes from a newer garage."""


@dataclass
class ModelEntry:
    """How to reopen one model: the spec given to ``open_model`` and its options."""

    name: str
    spec: str
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class Session:
    """Everything the workbench needs to come back as it was."""

    models: list[ModelEntry] = field(default_factory=list)
    active: str | None = None
    prompt: str = ""
    selected: str | None = None
    interventions: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    view: str | None = None  # what the app was showing; the app validates it (older files call it "pane")
    theme: str | None = None
    title: str = ""
    notes: list[str] = field(default_factory=list)
    # the build bench's last search: {"spec": path, "journal": path}, so it can be resumed later
    search: dict[str, str] | None = None
    # the app's own view state beyond the pane (free-form, the app validates what it reads), e.g.
    # the tree's expanded nodes and a summary of the last prompt run; older files have none
    ui: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        document = {"kind": KIND, "version": SESSION_VERSION}
        document.update(asdict(self))
        return document

    @property
    def active_entry(self) -> ModelEntry | None:
        for entry in self.models:
            if entry.name == self.active:
                return entry
        return self.models[0] if self.models else None


def intervention_from_dict(document: dict[str, Any], loaded: Any = None) -> Intervention:
    """Rebuild an intervention from ``Intervention.to_dict()``.

    A steer is rebuilt from its ``origin`` (positive and negative prompts) by recomputing the
    vector on ``loaded``, the open model; other tensor-carrying kinds are refused.
    """
    from engine.interventions import INTERVENTIONS

    kind = document.get("kind")
    address = document.get("address")
    if not isinstance(address, str) or not address:
        raise SessionError(f"intervention {document!r} has no address; each needs e.g. \"address\": \"L10.attn.h3\"")
    if kind == "steer" and document.get("origin") is not None:
        return _steer_from_document(document, address, loaded)
    if kind in ("features", "direction"):  # SAE splices and directions come back from the parts bin
        from engine.features.restore import feature_intervention

        try:
            return _fitted(feature_intervention(document, loaded), loaded)
        except GarageError as exc:
            raise SessionError(f"{kind} edit on {address} cannot be restored: {exc}") from None
    restore = INTERVENTIONS.get(kind).restore if isinstance(kind, str) and kind in INTERVENTIONS else None
    if restore is not None:
        try:
            item = restore(document)
        except GarageError as exc:
            raise SessionError(str(exc)) from None
        return _fitted(item, loaded)
    raise SessionError(
        f"intervention '{kind}' on {address} carries a tensor that sessions do not store; "
        "remove it from the session (ablate, scale, steers made from prompts, and SAE or direction edits of "
        "parts-bin parts restore)"
    )


def _fitted(item: Intervention, loaded: Any) -> Intervention:
    """``item`` once it is known to fit the open model (a session may name a part it lacks)."""
    if loaded is None or getattr(loaded, "anatomy", None) is None:
        return item
    from engine.interventions import edits_for

    try:
        edits_for(loaded.anatomy, item)
    except GarageError as exc:
        raise SessionError(f"{item.kind} on {item.address} does not fit {loaded.name}: {exc}") from None
    return item


def _steer_from_document(document: dict[str, Any], address: str, loaded: Any) -> Intervention:
    from engine.analyzers.steering import steer_from_prompts

    origin = document["origin"]
    texts = (origin.get("positive"), origin.get("negative")) if isinstance(origin, dict) else (None, None)
    if not all(isinstance(t, list) and t and all(isinstance(x, str) for x in t) for t in texts):
        raise SessionError(f"steer on {address} needs an 'origin' with non-empty 'positive' and 'negative' "
                           "lists of prompts")
    strength = document.get("strength", 1.0)
    if not isinstance(strength, (int, float)) or isinstance(strength, bool):
        raise SessionError(f"steer on {address} needs a numeric 'strength'")
    if loaded is None or getattr(loaded, "structure_only", False):
        raise SessionError(f"steer on {address} is rebuilt from its prompts and needs a model with weights open")
    positions = document.get("positions")
    if positions is not None and not (isinstance(positions, list) and all(type(p) is int for p in positions)):
        raise SessionError(f"steer on {address} has 'positions' that are not a list of integers")
    try:
        item = steer_from_prompts(loaded, address, list(texts[0] or ()), list(texts[1] or ()), float(strength))
    except GarageError as exc:
        raise SessionError(f"steer on {address} cannot be rebuilt: {exc}") from None
    item.positions = positions
    return item


def interventions_from_session(session: Session, loaded: Any = None) -> list[Intervention]:
    """Every intervention of ``session``; steers need ``loaded`` to recompute their vectors."""
    return [intervention_from_dict(item, loaded) for item in session.interventions]


def session_from_garage(garage: Garage, *, view: str | None = None, theme: str | None = None,
                        recipe: dict[str, Any] | None = None, title: str = "") -> Session:
    """Snapshot a ``Garage`` (plus the app's view and theme) as a session."""
    models = [ModelEntry(name, spec_of(loaded), str(loaded.device), str(loaded.dtype))
              for name, loaded in garage.models.items()]
    return Session(
        models=models, active=garage.active, prompt=garage.prompt, selected=garage.selected,
        interventions=[_stored(item) for item in garage.interventions], recipe=recipe,
        view=view, theme=theme, title=title,
    )


def _stored(item: Intervention) -> dict[str, Any]:
    """An intervention as session data; a feature/direction edit also records its part's sha256."""
    document = item.to_dict()
    if document.get("kind") in ("features", "direction"):
        from engine.features.restore import with_part_digest

        return with_part_digest(document)
    return document


def spec_of(loaded: Any) -> str:
    """The spec that reopens ``loaded``: its bundled name, else its source path or hub id."""
    if str(getattr(loaded, "source_kind", "")).startswith("bundled"):
        return str(loaded.name)
    return str(loaded.source)


def save_session(path: Path, session: Session) -> Path:
    """Write ``session`` atomically as JSON; returns the path written."""
    path = Path(path).expanduser()
    atomic_write_json(path, session.to_dict())
    return path


def recipe_shape_problem(document: Any) -> str | None:
    """What keeps ``document`` from being edited as a recipe at all (the build's own checks come later)."""
    if not isinstance(document, dict):
        return "a recipe is a mapping with recipe_version, sources and layers"
    if not isinstance(document.get("sources", {}), dict):
        return "the recipe's 'sources' must map an alias to a model, e.g. {smol: smollm2-135m}"
    layers = document.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(step, dict) for step in layers):
        return "the recipe's 'layers' must be a list of steps such as {take: smol.L3}"
    return None


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise SessionError(f"session {path} is malformed: {what}; fix the file or save a new session")


def parse_session(document: Any, path: Path = Path("<session>")) -> Session:
    """Validate a decoded JSON document and turn it into a ``Session``."""
    _require(isinstance(document, dict), path, "the top level must be a JSON object")
    _require(document.get("kind") == KIND, path, f"'kind' must be \"{KIND}\"")
    version = document.get("version")
    _require(isinstance(version, int) and not isinstance(version, bool), path, "'version' must be an integer")
    if version > SESSION_VERSION:
        raise SessionError(
            f"session {path} is version {version}, newer than this garage understands ({SESSION_VERSION}); "
            "upgrade Model Garage to open it"
        )
    _require(version >= 1, path, f"unknown version {version}")
    models_doc = document.get("models", [])
    _require(isinstance(models_doc, list), path, "'models' must be a list")
    models = []
    for item in models_doc:
        _require(isinstance(item, dict) and isinstance(item.get("spec"), str) and isinstance(item.get("name"), str),
                 path, "each model needs a 'name' and a 'spec'")
        models.append(ModelEntry(item["name"], item["spec"], str(item.get("device", "cpu")),
                                 str(item.get("dtype", "float32"))))
    interventions = document.get("interventions", [])
    _require(isinstance(interventions, list) and all(isinstance(i, dict) for i in interventions),
             path, "'interventions' must be a list of objects")
    for key in ("prompt", "title"):
        _require(isinstance(document.get(key, ""), str), path, f"'{key}' must be a string")
    for key in ("active", "selected", "theme"):
        _require(document.get(key) is None or isinstance(document.get(key), str), path,
                 f"'{key}' must be a string or null")
    view = document.get("view", document.get("pane"))  # sessions written before 'view' said 'pane'
    _require(view is None or isinstance(view, str), path, "'view' must be a string or null")
    recipe = document.get("recipe")
    problem = None if recipe is None else recipe_shape_problem(recipe)
    _require(problem is None, path, f"'recipe' must be null or a recipe: {problem}")
    notes = document.get("notes", [])
    _require(isinstance(notes, list) and all(isinstance(n, str) for n in notes), path,
             "'notes' must be a list of strings")
    return Session(models=models, active=document.get("active"), prompt=document.get("prompt", ""),
                   selected=document.get("selected"), interventions=list(interventions), recipe=recipe,
                   view=view, theme=document.get("theme"), title=document.get("title", ""), notes=notes,
                   search=_search_paths(document.get("search"), path), ui=_ui_state(document.get("ui"), path))


def _ui_state(ui: Any, path: Path) -> dict[str, Any] | None:
    _require(ui is None or isinstance(ui, dict), path, "'ui' must be null or an object")
    return None if ui is None else dict(ui)


def _search_paths(search: Any, path: Path) -> dict[str, str] | None:
    """The session's search paths (spec and journal), checked to be two strings."""
    _require(search is None or (isinstance(search, dict) and set(search) == {"spec", "journal"}
                                and all(isinstance(v, str) for v in search.values())), path,
             "'search' must be null or {\"spec\": path, \"journal\": path}")
    return None if search is None else dict(search)


def load_session(path: Path) -> Session:
    """Read and validate a session file; every problem is one ``SessionError`` line."""
    path = Path(path).expanduser()
    try:
        if path.is_file() and path.stat().st_size > MAX_DOC_BYTES:
            raise SessionError(f"session {path} is larger than the limit of {MAX_DOC_BYTES:,} bytes; "
                               "is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionError(
            f"no session file at {path}; check the path (saved sessions live in GARAGE_HOME/sessions)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"cannot read session {path}: {exc}") from None
    from engine.safe_parse import BadDocumentError, check_depth

    try:
        document = json.loads(text)
        check_depth(document, f"session {path}")  # nesting and size limits: a session is a file from disk
    except json.JSONDecodeError as exc:
        raise SessionError(
            f"session {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it") from None
    except RecursionError:
        raise SessionError(f"session {path} is nested too deeply to be a session; fix or delete it") from None
    except BadDocumentError as exc:
        raise SessionError(str(exc)) from None
    return parse_session(document, path)
