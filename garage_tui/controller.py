"""The workbench controller: the open models, the job state and every engine call of the app.

Panes draw the typed reports this returns and post requests (``messages.py``); the app routes
requests here and runs the slow calls in thread workers (``jobs.run_job``). Nothing here
touches a widget, and the engine is imported lazily inside each call so the first frame
never pays for torch. Methods named ``compute_*`` / ``read_*`` run in worker threads and only
read the state they are handed; the others run on the UI thread and change state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.bundled import DEFAULT_MODEL
from garage_tui.settings import Settings

Progress = Callable[[str, "float | None"], None]
SCALE_FACTOR = 0.5
# The model card's KV cache is sized for the prompt; with no prompt to count, for this many tokens.
PLAN_SEQ = 128
STEERABLE = ("layer",)
# Parts an intervention can act on (mirrors engine.interventions.EDITABLE_KINDS without torch).
ABLATABLE = ("head", "attn", "mlp", "layer")
SCALABLE = ("head", "attn", "mlp", "layer", "norm", "final_norm", "embed", "lm_head", "proj")


@dataclass
class JobContext:
    """What a worker hands an engine call: its cancel event, a progress callback, a message poster."""

    cancel: threading.Event
    progress: Progress
    post: Callable[[Any], Any]


@dataclass
class Guess:
    """One next-token guess: its probability now and, when edits are active, before them."""

    token: str
    prob: float | None
    before: float | None = None


@dataclass
class RunReport:
    """Every number the panes draw for one prompt (the bay's guesses and norms, the diagnostics)."""

    prompt: str
    model: str
    selected: str | None
    interventions: list[str] = field(default_factory=list)
    guesses: list[Guess] = field(default_factory=list)
    tokens: int = 0
    norms: list[float] = field(default_factory=list)
    baseline_norms: list[float] | None = None
    point: str | None = None
    stats: dict[str, Any] | None = None
    baseline_stats: dict[str, Any] | None = None
    lens: dict[str, Any] | None = None
    forward_passes: int = 0

    @property
    def top(self) -> list[tuple[str, float]]:
        """The edited run's own top tokens, most likely first."""
        rows = [(g.token, g.prob) for g in self.guesses if g.prob is not None]
        return sorted(rows, key=lambda row: -row[1])[:5]

    @property
    def baseline_top(self) -> list[tuple[str, float]] | None:
        """The run without edits, most likely first; None when no edit is active."""
        if not self.interventions:
            return None
        rows = [(g.token, g.before) for g in self.guesses if g.before is not None]
        return sorted(rows, key=lambda row: -row[1])[:5]


@dataclass
class AttentionReport:
    """One layer's attention for the diagnostics pane: entropy per head, a head's pattern, named roles."""

    layer: int
    head: int
    tokens: list[str]
    entropy: list[float]
    pattern: list[list[float]]
    roles: dict[str, str]
    entropy_before: list[float] | None = None


@dataclass
class ImportanceRow:
    address: str
    delta: float
    loss: float


@dataclass
class ImportanceReport:
    """Δ loss of ablating each head and block of one layer on the sample text."""

    layer: int
    mode: str
    clean_loss: float
    rows: list[ImportanceRow]


@dataclass
class BuildReport:
    """A built hybrid and its evaluation beside its sources (``evaluation`` is the engine's dict)."""

    out_dir: str
    evaluation: dict[str, Any]


@dataclass
class RecipeCheck:
    """The validator's verdict on the bench's recipe, as lines a person reads."""

    ok: bool
    problems: list[str]
    warnings: list[str]
    layers: int | None = None
    parameters: int = 0


def layer_of(address: str | None) -> int | None:
    """The layer number an address lives in (``L10.attn.h3`` → 10), or None."""
    if not address or not address.startswith("L"):
        return None
    head = address.split(".", 1)[0][1:]
    return int(head) if head.isdigit() else None


def head_of(address: str | None) -> int | None:
    last = (address or "").rsplit(".", 1)[-1]
    return int(last[1:]) if last.startswith("h") and last[1:].isdigit() else None


def error_line(exc: BaseException) -> str:
    """One line for the user: a GarageError's own message, else the type and text."""
    from engine.errors import GarageError

    if isinstance(exc, GarageError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _problem_line(item: dict[str, Any]) -> str:
    line = f" (line {item['line']})" if item.get("line") else ""
    return f"{item.get('where', '')}{line}: {item.get('message', '')}"


class Workbench:
    """The open models, the job in flight, the last results, and every engine call the app makes."""

    def __init__(self, garage: Any = None, parts_bin: Any = None, settings: Settings | None = None, *,
                 model_spec: str = DEFAULT_MODEL, device: str = "cpu") -> None:
        self.garage = garage
        self._parts_bin = parts_bin
        self._parts_bin_lock = threading.Lock()
        # one pass at a time on the open models (their hooks are shared by every thread)
        self.model_lock = threading.Lock()
        self.settings = settings or Settings()
        self.model_spec = model_spec
        self.device = device
        self.job: str | None = None
        self.last_report: RunReport | None = None
        self.last_steer: Any = None
        # the sparse coder last read at each address: ``(part name, coder)``, for feature edits
        self.coders: dict[str, tuple[str, Any]] = {}
        # each open model's fit plan (``engine.fit_plan.FitPlan``), or the one line saying why it has none;
        # the bay's model card plans in a worker and keeps the result here
        self.plans: dict[str, Any] = {}
        # the bench's last search ({"spec": path, "journal": path}), saved with the session to resume it
        self.search: dict[str, str] | None = None
        # the transfer view's model B, addresses, kind and last stitch report, kept while the app runs
        self.transfer: dict[str, Any] = {}

    # ---- state (UI thread) -------------------------------------------------------------------
    @property
    def loaded(self) -> Any:
        if self.garage is None or self.garage.active not in self.garage.models:
            return None
        return self.garage.models[self.garage.active]

    @property
    def has_weights(self) -> bool:
        return self.loaded is not None and not self.loaded.structure_only

    @property
    def selected(self) -> str | None:
        return None if self.garage is None else self.garage.selected

    @property
    def selected_part(self) -> Any:
        loaded = self.loaded
        if loaded is None or self.garage.selected is None:
            return None
        return loaded.anatomy.by_address.get(self.garage.selected)

    @property
    def prompt(self) -> str:
        """The prompt of the last run (the prompt line may hold an edited one not yet run)."""
        return "" if self.garage is None else str(self.garage.prompt)

    @property
    def has_parts_bin(self) -> bool:
        return self._parts_bin is not None

    def interventions(self) -> list[Any]:
        return [] if self.garage is None else list(self.garage.interventions)

    def install_model(self, loaded: Any) -> None:
        """Make ``loaded`` the active model (a new ``Garage`` when the app started without one)."""
        if self.garage is None:
            from engine.garage import Garage

            self.garage = Garage()
        self.garage.models[loaded.name] = loaded
        self.garage.active = loaded.name

    def intervention_rows(self) -> list[dict[str, Any]]:
        return [dict(item.to_dict(), describe=item.describe()) for item in self.interventions()]

    def marks(self) -> dict[str, list[str]]:
        """Short tags the tree shows beside each edited part."""
        marks: dict[str, list[str]] = {}
        for item in self.intervention_rows():
            if item["kind"] == "ablate":
                mark = "ablated" if item.get("mode") == "zero" else "mean-ablated"
            elif item["kind"] == "scale":
                mark = f"×{item.get('factor', 1):g}"
            elif item["kind"] == "steer":
                mark = f"steer {item.get('strength', 1):+g}"
            else:
                mark = item["kind"]
            marks.setdefault(item["address"], []).append(mark)
        return marks

    def toggle_edit(self, kind: str) -> tuple[str, bool]:
        """Toggle an ablate/mean/scale on the selected part; ``(description, now active)``.

        Raises the engine's error when the edit cannot apply to this part (refused now, not mid-run).
        """
        from engine import interventions

        part = self.selected_part
        if kind == "scale":
            item = interventions.scale(part.address, SCALE_FACTOR)
        else:
            item = interventions.ablate(part.address, "mean" if kind == "mean" else "zero")
        interventions.edits_for(self.loaded.anatomy, item)
        return item.describe(), self.garage.toggle(item)

    def active_steers(self, address: str) -> list[Any]:
        return [item for item in self.interventions() if item.kind == "steer" and item.address == address]

    def remove_steers(self, address: str) -> list[str]:
        removed = self.active_steers(address)
        for item in removed:
            self.garage.toggle(item)
        return [item.describe() for item in removed]

    def toggle(self, item: Any) -> bool:
        return bool(self.garage.toggle(item))

    def toggle_feature(self, address: str, feature: int) -> tuple[str, bool]:
        """Toggle ablating ``feature`` of the coder read at ``address``; ``(description, now active)``."""
        from engine.features.attach import FeatureEdit, splice

        name, coder = self.coders[address]
        item = splice(coder, address, edits=[FeatureEdit("ablate", [feature])], part=name)
        return item.describe(), self.garage.toggle(item)

    def clear_edits(self) -> None:
        self.garage.interventions.clear()

    def apply_session(self, session: Any) -> None:
        """Prompt and selection of a restored session (its edits are rebuilt in a worker)."""
        self.garage.prompt = session.prompt
        self.garage.selected = session.selected if session.selected in self.loaded.anatomy.by_address else "model"
        self.garage.interventions = []
        self.search = dict(session.search) if session.search else None

    def set_edits(self, interventions: list[Any]) -> None:
        self.garage.interventions = list(interventions)

    def current_session(self, prompt: str, *, pane: str, theme: str, recipe: dict[str, Any] | None,
                        title: str = "", notes: list[str] | None = None,
                        expanded: list[str] | None = None) -> Any:
        """The workbench as a session document (title and notes kept from the one it came from)."""
        from engine.sessions import session_from_garage

        self.garage.prompt = prompt
        session = session_from_garage(self.garage, view=pane, theme=theme, recipe=recipe, title=title)
        session.notes = list(notes or [])
        session.search = dict(self.search) if self.search else None
        return session

    def structure_first(self, spec: str) -> bool:
        """Big checkpoints show their tree from config.json first, then load weights."""
        path = Path(spec).expanduser()
        try:
            files = [path] if path.is_file() else list(path.glob("*.safetensors")) if path.is_dir() else []
            size = sum(f.stat().st_size for f in files)
        except OSError:
            return False
        return size > self.settings.structure_first_gb * 1e9

    def spec_of_active(self) -> str:
        from engine.sessions import spec_of as _spec_of

        return _spec_of(self.loaded)

    # ---- engine calls (worker threads) ---------------------------------------------------------
    def parts_bin(self) -> Any:
        """The parts bin; the factory may hand a zero-argument maker to keep torch lazy."""
        with self._parts_bin_lock:
            source = self._parts_bin
            if callable(source) and not hasattr(source, "list"):
                self._parts_bin = source()
            return self._parts_bin

    def open_model(self, spec: str, device: str, ctx: JobContext, on_structure: Callable[[Any], Any]) -> Any:
        """Open ``spec``; big checkpoints hand their structure to ``on_structure`` first."""
        from engine.loading import open_model

        if self.structure_first(spec):
            on_structure(open_model(spec, device=device, structure_only=True))
        return open_model(spec, device=device, progress=ctx.progress, cancel=ctx.cancel)

    def compute_plan(self, loaded: Any, seq: int = PLAN_SEQ) -> Any:
        """The fit plan of ``loaded`` from its config (no tensor is read), or the one line saying why not.

        Takes seconds on a big config (a meta-device model and one traced layer), so it runs in its
        own worker beside the open and the first run rather than delaying either.
        """
        from engine.fit_plan import plan_for_loaded

        try:
            return plan_for_loaded(loaded, seq=max(1, seq))
        except Exception as exc:  # the card only shows the plan: a config it cannot size must not fail the app
            return f"no plan: {error_line(exc)}"

    def compute_run(self, loaded: Any, prompt: str, selected: str | None, interventions: list[Any],
                    ctx: JobContext) -> RunReport | None:
        """Every number the panes draw for one prompt: one engine pass (two with edits); None when cancelled."""
        from engine.prompt_report import prompt_report

        result = prompt_report(loaded, prompt, interventions, selected, top_k=5, cancel=ctx.cancel,
                               progress=ctx.progress)
        if ctx.cancel.is_set():
            return None
        now, before = result.now, result.before
        return RunReport(
            prompt, loaded.name, selected, list(result.interventions),
            guesses=[Guess(g.text, g.prob, g.prob_before) for g in result.guesses], tokens=len(result.token_ids),
            norms=list(now.norms), baseline_norms=list(before.norms) if before is not None else None,
            point=result.point, stats=now.stats.to_dict() if now.stats is not None else None,
            baseline_stats=before.stats.to_dict() if before is not None and before.stats is not None else None,
            lens=result.lens.to_dict() if result.lens is not None else None, forward_passes=result.forward_passes)

    def compute_steer(self, loaded: Any, address: str, request: Any) -> Any:
        from engine.analyzers.steering import steer_from_prompts

        return steer_from_prompts(loaded, address, request.positive, request.negative, request.strength)

    def rebuild_edits(self, loaded: Any, documents: list[dict[str, Any]],
                      ctx: JobContext) -> tuple[list[Any], list[str]] | None:
        """A session's edits rebuilt on ``loaded`` (steers recompute their vectors), and the refused ones."""
        from engine.errors import GarageError
        from engine.sessions import intervention_from_dict

        rebuilt, problems = [], []
        for document in documents:
            if ctx.cancel.is_set():
                return None
            try:
                rebuilt.append(intervention_from_dict(document, loaded))
            except (GarageError, KeyError, TypeError, ValueError) as exc:
                problems.append(error_line(exc))
        return rebuilt, problems

    def compute_attention(self, loaded: Any, prompt: str, selected: str | None, interventions: list[Any],
                          ctx: JobContext) -> AttentionReport | None:
        from engine.analyzers.attention import attention_report

        now = attention_report(loaded, prompt, interventions)
        before = attention_report(loaded, prompt) if interventions and not ctx.cancel.is_set() else None
        if ctx.cancel.is_set():
            return None
        layer, head = layer_of(selected) or 0, head_of(selected) or 0
        report = AttentionReport(layer, head, list(now.tokens), list(now.entropy_grid()[layer]),
                                 now.pattern(layer, head).tolist(),
                                 {h.address: h.role for h in now.heads if h.layer == layer and h.role})
        if before is not None:
            report.entropy_before = list(before.entropy_grid()[layer])
        return report

    def compute_importance(self, loaded: Any, layer: int, ctx: JobContext) -> ImportanceReport | None:
        from engine.analyzers.importance import head_importance

        result = head_importance(loaded, layers=[layer], progress=ctx.progress, cancel=ctx.cancel)
        if ctx.cancel.is_set():
            return None
        document = result.to_dict()
        rows = [ImportanceRow(e["address"], float(e["delta"]), float(e["loss"]))
                for e in document["heads"] + document["blocks"]]
        return ImportanceReport(layer, str(document["mode"]), float(document["clean_loss"]), rows)

    def read_parts(self, text: str = "") -> list[dict[str, Any]]:
        """Every catalogued part as its record (the pane filters as the user types)."""
        del text  # the pane filters every column itself, so the whole catalog is read
        return [record.to_dict() for record in self.parts_bin().list()]

    def change_part(self, verb: str, name: str, value: str = "") -> str:
        """Tag, note, remove or verify one part; returns what happened in one line."""
        bin_ = self.parts_bin()
        if verb == "tag":
            bin_.tag(name, value)
            return f"tagged {name} with {value}"
        if verb == "note":
            bin_.note(name, value)
            return f"noted {name}"
        if verb == "remove":
            bin_.remove(name)
            return f"removed {name} (file deleted)"
        results = bin_.verify(name)
        return "; ".join(f"{r.name}: {r.status}" for r in results)

    def extract(self, loaded: Any, address: str) -> str:
        record = self.parts_bin().add_from_model(loaded, address)
        return f"extracted {address} as {record.name}"

    def fitting_parts(self, loaded: Any, slot: str) -> list[str]:
        return [record.name for record in self.parts_bin().fits(loaded, slot)]

    def read_part_names(self, kind: str) -> list[str]:
        """The bin's parts of ``kind`` by name (directions for a bake step, blades for a blade step);
        a corrupt catalog raises."""
        return [record.name for record in self.parts_bin().list(kind=kind)]

    def check_recipe(self, recipe: dict[str, Any]) -> RecipeCheck:
        """Validate a recipe document (configs and headers only, no weights)."""
        from engine.build import load_recipe, validate_recipe
        from engine.errors import GarageError

        try:
            document = validate_recipe(load_recipe(recipe)).to_dict()
        except (GarageError, KeyError, TypeError, ValueError, OSError) as exc:
            return RecipeCheck(False, [f"recipe: {error_line(exc)}"], [])
        return RecipeCheck(bool(document.get("ok")), [_problem_line(p) for p in document["problems"]],
                           [_problem_line(w) for w in document["warnings"]], document.get("layers"),
                           int(document.get("parameters") or 0))

    def build_and_evaluate(self, recipe: dict[str, Any], out_dir: str, ctx: JobContext) -> BuildReport:
        from engine.build import build, load_recipe
        from engine.build.evaluate import evaluate
        from engine.sessions import spec_of as _spec_of

        result = build(load_recipe(recipe), out_dir, ctx.progress, ctx.cancel)
        # sources already open in the garage are scored as they are, not reopened
        open_models = {_spec_of(m): m for m in (self.garage.models.values() if self.garage else [])}
        specs = list(dict.fromkeys((recipe.get("sources") or {}).values()))
        sources = [open_models.get(spec, spec) for spec in specs]
        evaluation = evaluate(str(result.out_dir), sources, ctx.progress, ctx.cancel)
        return BuildReport(out_dir, evaluation.to_dict())

    def make_attributor(self, loaded: Any, task: str, pairs: int) -> Any:
        """An attribution job over the first ``pairs`` pairs of a shipped task (built in the worker)."""
        from engine.attribution import attributor_for, load_task
        from engine.errors import GarageError

        if loaded.structure_only:
            raise GarageError(f"'{loaded.name}' is open structure-only (no weights); open it with weights to "
                              "attribute")
        return attributor_for(loaded, load_task(task, pairs), task)

    def coder_for(self, loaded: Any, address: str) -> str:
        """The name of an SAE part in the bin reading ``address`` (or a point inside it) made for ``loaded``.

        A part without ``fold`` provenance comes first: the workbench splices exactly, which refuses a
        folded part, so a fold is picked only when nothing else reads there."""
        from engine.errors import GarageError

        folded: str | None = None
        for record in self.parts_bin().list(kind="sae"):
            reads = str(record.address)
            inside = reads == address or reads.startswith(f"{address}.")
            if inside and record.source.get("config_hash") == loaded.config_hash:
                if "fold" not in record.config:
                    return str(record.name)
                folded = folded or str(record.name)
        if folded is not None:
            return folded
        raise GarageError(f"no SAE part in the parts bin reads {address} of '{loaded.name}'; train or import one "
                          "(`garage sae train` / `garage sae import`) or select the layer it reads")

    def compute_features(self, loaded: Any, address: str, prompt: str, cancel: threading.Event) -> Any:
        """The top features of the bin's SAE at ``address`` for ``prompt`` (``FeaturesOverview``)."""
        from engine.features import corpus, parts, reading

        name = self.coder_for(loaded, address)
        part = parts.load_coder(self.parts_bin(), name, loaded)
        overview = reading.features_overview(loaded, part.coder, part.address, prompt, corpus.read_texts(["sample"]),
                                             max_tokens=512, cancel=cancel)
        self.coders[part.address] = (name, part.coder)
        return overview
