"""Search specs: a base recipe, the knobs to turn, the objective(s), the optimiser, budget and seed.

A spec is read with the project's safe loader and validated whole before any weight is read:
every knob must point at a plain ``take`` layer of the base recipe, and a sample trial recipe
(every knob at its midpoint) must pass ``validate_recipe`` (configs and headers only).

    search_version: 1
    name: drop-four
    recipe: recipes/smollm2-identity.yaml      # a path (relative to the spec) or an inline mapping
    parameters:
      - {drop: [0, 29], count: 4}              # drop `count` of the output layers in [first, last]
      - {blend: 12, with: smol.L13, method: slerp}   # output layer 12 blended with smol.L13, t searched
      - {heads: 10, from: smol.L11, which: [3, 4, 5]} # transplant on/off
    objectives: [perplexity]                   # or bits_per_byte; two give a Pareto front
    optimiser: tpe                             # tpe | nsga2 | cmaes
    budget: 20
    seed: 0
    max_tokens: 512                            # score the first N tokens of the bundled text
    warm_start: block-influence                # optional: drop knobs start from ShortGPT's Block Influence
                                               # (one forward pass, counted as one evaluation of the budget)
                                               # or screen: that pass, then the single drop of each of the
                                               # screen_layers (default 12) lowest-BI candidates, one
                                               # evaluation each; the best single drops seed the optimiser
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import GarageError
from engine.search.warm import SCREEN_LAYERS, WARM_COST, WARM_STARTS

SEARCH_VERSION = 1
OBJECTIVES = ("perplexity", "bits_per_byte")
OPTIMISERS = ("tpe", "nsga2", "cmaes")
TOP_KEYS = {"search_version", "name", "recipe", "parameters", "objectives", "optimiser", "budget", "seed",
            "max_tokens", "warm_start", "screen_layers"}


class SearchSpecError(GarageError):
    """A search spec that cannot be read or fails validation."""


@dataclass(frozen=True)
class Knob:
    """One searched parameter; ``size`` floats in [0, 1] of the trial vector belong to it."""

    kind: str  # drop | blend | heads
    layer: int = -1  # blend/heads: the output layer it edits
    first: int = 0  # drop: candidate range
    last: int = 0
    count: int = 0
    other: str = ""  # blend: the layer blended in; heads: the donor layer
    method: str = "linear"
    heads: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return self.last - self.first + 1 if self.kind == "drop" else 1

    def names(self) -> list[str]:
        if self.kind == "drop":
            return [f"drop.L{i}" for i in range(self.first, self.last + 1)]
        return [f"{self.kind}.L{self.layer}"]


@dataclass
class SearchSpec:
    """A validated search spec; ``base`` is the base recipe as a plain document, one entry per layer."""

    name: str
    base: dict[str, Any]
    knobs: list[Knob]
    objectives: list[str]
    optimiser: str
    budget: int
    seed: int
    max_tokens: int
    origin: str = "<dict>"
    names: list[str] = field(default_factory=list)
    warm_start: str | None = None
    screen_layers: int = 0  # single drops a ``screen`` warm start evaluates (0 without one)

    @property
    def warm_cost(self) -> int:
        """Evaluations of the budget the warm start takes before the optimiser's first trial."""
        return (WARM_COST if self.warm_start else 0) + self.screen_layers

    @property
    def dimension(self) -> int:
        return sum(knob.size for knob in self.knobs)

    def fingerprint(self) -> str:
        """Changes whenever anything that decides the trials changes (a journal must match it)."""
        doc = {"base": self.base, "knobs": [knob.__dict__ for knob in self.knobs], "objectives": self.objectives,
               "optimiser": self.optimiser, "seed": self.seed, "max_tokens": self.max_tokens}
        if self.warm_start:  # only when set, so journals of searches without one keep their fingerprint
            doc["warm_start"] = self.warm_start
        if self.screen_layers:
            doc["screen_layers"] = self.screen_layers
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _fail(origin: str, message: str) -> SearchSpecError:
    return SearchSpecError(f"{Path(origin).name}: {message}")


def _int(doc: dict[str, Any], key: str, default: int, origin: str, low: int = 0) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _fail(origin, f"{key} must be an integer ≥ {low}, got {value!r}")
    return value


def _knob(entry: Any, index: int, layers: list[Any], origin: str) -> Knob:
    where = f"parameters[{index}]"
    if not isinstance(entry, dict):
        raise _fail(origin, f"{where} must be a mapping with one of drop, blend or heads")
    kinds = [k for k in ("drop", "blend", "heads") if k in entry]
    if len(kinds) != 1:
        raise _fail(origin, f"{where} needs exactly one of drop, blend or heads, got {sorted(entry)}")
    kind = kinds[0]
    n = len(layers)

    def plain_take(layer: Any) -> str:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise _fail(origin, f"{where}.{kind} must be an output layer index 0-{n - 1} of the base recipe, "
                                f"got {layer!r}")
        taken = layers[layer]
        if set(taken) != {"take"}:
            raise _fail(origin, f"{where}: output layer {layer} of the base recipe is not a plain take; "
                                "search knobs edit plain layers only")
        return str(taken["take"])

    if kind == "drop":
        bounds = entry["drop"]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
                and 0 <= bounds[0] < bounds[1] < n):
            raise _fail(origin, f"{where}.drop is [first, last] output layers with 0 ≤ first < last < {n}, "
                                f"got {bounds!r}")
        count = entry.get("count")
        span = bounds[1] - bounds[0] + 1
        if not isinstance(count, int) or not 1 <= count < span:
            raise _fail(origin, f"{where}.count is how many of the {span} candidates to drop (1-{span - 1}), "
                                f"got {count!r}")
        return Knob("drop", first=bounds[0], last=bounds[1], count=count)
    if kind == "blend":
        layer = entry["blend"]
        plain_take(layer)
        other, method = entry.get("with"), entry.get("method", "linear")
        if not isinstance(other, str) or ".L" not in other:
            raise _fail(origin, f"{where}.with names the layer blended in, e.g. smol.L13, got {other!r}")
        if method not in ("linear", "slerp"):
            raise _fail(origin, f"{where}.method must be linear or slerp, got {method!r}")
        return Knob("blend", layer=layer, other=other, method=method)
    layer = entry["heads"]
    plain_take(layer)
    donor, which = entry.get("from"), entry.get("which")
    if not isinstance(donor, str) or ".L" not in donor:
        raise _fail(origin, f"{where}.from names the donor layer, e.g. smol.L11, got {donor!r}")
    if not (isinstance(which, list) and which and all(isinstance(h, int) and h >= 0 for h in which)):
        raise _fail(origin, f"{where}.which lists the query heads to transplant, e.g. [3, 4, 5], got {which!r}")
    return Knob("heads", layer=layer, other=donor, heads=tuple(which))


def _warm_start(doc: dict[str, Any], knobs: list[Knob], origin: str) -> str | None:
    value = doc.get("warm_start")
    if value is None:
        return None
    if value not in WARM_STARTS:
        raise _fail(origin, f"warm_start must be one of {', '.join(WARM_STARTS)} (or left out), got {value!r}")
    if not any(knob.kind == "drop" for knob in knobs):
        raise _fail(origin, f"warm_start {value} ranks layers to drop; add a {{drop: [first, last], count: N}} "
                            "parameter or leave warm_start out")
    return str(value)


def _screen_layers(doc: dict[str, Any], warm_start: str | None, knobs: list[Knob], origin: str) -> int:
    candidates = len({knob.first + i for knob in knobs if knob.kind == "drop" for i in range(knob.size)})
    if warm_start != "screen":
        if "screen_layers" in doc:
            raise _fail(origin, "screen_layers sets how many single drops warm_start screen evaluates; "
                                "add warm_start: screen or leave screen_layers out")
        return 0
    count = max(knob.count for knob in knobs if knob.kind == "drop")
    value = doc.get("screen_layers", min(SCREEN_LAYERS, candidates))
    if not isinstance(value, int) or isinstance(value, bool) or not count <= value <= candidates:
        raise _fail(origin, f"screen_layers must be an integer from {count} (the drop count) to {candidates} "
                            f"(the drop candidates), got {value!r}")
    return value


def load_search_spec(path_or_doc: str | Path | dict[str, Any]) -> SearchSpec:
    """Read and validate a search spec (file or mapping); every problem raises ``SearchSpecError``."""
    from engine.build import load_recipe, validate_recipe
    from engine.safe_parse import load_yaml

    if isinstance(path_or_doc, dict):
        doc, origin = path_or_doc, "<dict>"
    else:
        origin = str(path_or_doc)
        doc = load_yaml(Path(path_or_doc), "search spec")
    if not isinstance(doc, dict):
        raise _fail(origin, "a search spec is a mapping with search_version, recipe, parameters and objectives")
    if doc.get("search_version") != SEARCH_VERSION:
        raise _fail(origin, f"search_version must be {SEARCH_VERSION}, got {doc.get('search_version')!r}")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise _fail(origin, f"unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(TOP_KEYS))}")
    raw_recipe = doc.get("recipe")
    if isinstance(raw_recipe, str):
        recipe_path = Path(raw_recipe)
        if not recipe_path.is_absolute() and not origin.startswith("<"):
            beside = Path(origin).parent / recipe_path
            recipe_path = beside if beside.exists() else recipe_path
        recipe = load_recipe(recipe_path)
    elif isinstance(raw_recipe, dict):
        recipe = load_recipe(raw_recipe)
    else:
        raise _fail(origin, "recipe is the base recipe: a path to a recipe file or an inline recipe mapping")
    if recipe.problems:
        raise _fail(origin, f"the base recipe has problems: {recipe.problems[0]}")
    base = recipe.to_dict()
    params = doc.get("parameters")
    if not isinstance(params, list) or not params:
        raise _fail(origin, "parameters lists at least one knob: {drop: [first, last], count: N}, "
                            "{blend: LAYER, with: alias.Lk}, or {heads: LAYER, from: alias.Lk, which: [...]}")
    knobs = [_knob(entry, i, base["layers"], origin) for i, entry in enumerate(params)]
    objectives = doc.get("objectives", ["perplexity"])
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, list) or not objectives or any(o not in OBJECTIVES for o in objectives) \
            or len(set(objectives)) != len(objectives):
        raise _fail(origin, f"objectives lists distinct ones of {', '.join(OBJECTIVES)}, got {objectives!r}")
    optimiser = doc.get("optimiser", "tpe" if len(objectives) == 1 else "nsga2")
    if optimiser not in OPTIMISERS:
        raise _fail(origin, f"optimiser must be one of {', '.join(OPTIMISERS)}, got {optimiser!r}")
    if len(objectives) > 1 and optimiser != "nsga2":
        raise _fail(origin, f"{len(objectives)} objectives need optimiser nsga2 (a Pareto front); "
                            f"{optimiser} optimises one")
    warm_start = _warm_start(doc, knobs, origin)
    screen = _screen_layers(doc, warm_start, knobs, origin)
    budget = _int(doc, "budget", 20, origin, 1)
    if warm_start and budget <= WARM_COST + screen:
        spent = f"its pass counts as {WARM_COST} evaluation" if not screen else \
            f"its pass and {screen} single drops count as {WARM_COST + screen} evaluations"
        raise _fail(origin, f"budget must be at least {WARM_COST + screen + 1} with warm_start {warm_start}: "
                            f"{spent}, got {budget}")
    spec = SearchSpec(name=str(doc.get("name") or Path(origin).stem), base=base, knobs=knobs,
                      objectives=list(objectives), optimiser=optimiser, budget=budget,
                      seed=_int(doc, "seed", 0, origin), max_tokens=_int(doc, "max_tokens", 512, origin, 2),
                      origin=origin, warm_start=warm_start, screen_layers=screen)
    if optimiser == "cmaes" and sum(knob.size for knob in knobs) < 2:
        raise _fail(origin, "cmaes needs at least 2 searched coordinates; use optimiser tpe for one knob")
    spec.names = [name for knob in knobs for name in knob.names()]
    from engine.search.space import trial_recipe

    sample = trial_recipe(spec, [0.5] * spec.dimension)
    report = validate_recipe(load_recipe(sample))
    if not report.ok:
        raise _fail(origin, f"a trial recipe (every knob at its midpoint) fails validation: {report.problems[0]}")
    return spec
