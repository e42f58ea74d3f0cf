"""Reading recipe documents: YAML or JSON text (or a dict) into a ``Recipe``.

Parsing checks only the document's own shape (keys, types, references like ``a.L3`` or
``a.L8-15``) and remembers the line of every key, so each problem can name it; whether the
sources agree with each other is ``validate.py``'s job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from engine.build.ops import OPS, OpFieldError, blend_methods
from engine.build.recipe import (
    COMPONENTS,
    RECIPE_VERSION,
    FinishStep,
    HeadMove,
    LayerRef,
    LayerSpec,
    Mix,
    Recipe,
    RecipeError,
)

_LAYER_REF = re.compile(r"^(?P<alias>[A-Za-z_][\w\-]*)\.L(?P<start>\d+)(?:-(?P<stop>\d+))?$")
_HEAD_REF = re.compile(r"^(?P<alias>[A-Za-z_][\w\-]*)\.L(?P<layer>\d+)\.(?:attn\.)?h(?P<head>\d+)$")
TOP_KEYS = {"recipe_version", "name", "description", "sources", "base", "embed", "final_norm", "lm_head",
            "layers", "config", "dtype", "finish"}
LAYER_KEYS = {"take", "blend", "method", "weights", "t", "attn", "mlp", "norms", "heads"}


# ---- YAML with line numbers -------------------------------------------------------------

def _line_map(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            lines[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, f"{path}[{index}]", lines)


def _read_document(path_or_text: str | Path) -> tuple[Any, dict[str, int], str]:
    origin = "<text>"
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or ("\n" not in text and text.endswith((".yaml", ".yml", ".json"))):
        file = Path(path_or_text).expanduser()
        if not file.is_file():
            raise RecipeError(f"no such recipe file: {file}; pass a .yaml or .json recipe")
        origin = str(file)
    from engine.limits import MAX_RECIPE_BYTES
    from engine.safe_parse import BadDocumentError, loads_document, read_text_limited

    try:
        if origin != "<text>":
            text = read_text_limited(Path(origin), "recipe", MAX_RECIPE_BYTES)  # size and UTF-8 first
        elif len(text) > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe text is larger than the limit of {MAX_RECIPE_BYTES:,} bytes")
        # depth, alias expansion, cycles and non-finite numbers are refused before use
        document, node = loads_document(text, f"recipe {origin}")
    except BadDocumentError as exc:
        raise RecipeError(str(exc)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{Path(origin).name} is not valid YAML/JSON{at}: {getattr(exc, 'problem', exc)}") from exc
    lines: dict[str, int] = {}
    if node is not None:
        _line_map(node, "", lines)
    return document, lines, origin


# ---- parsing ------------------------------------------------------------------------------

def _layer_range(text: Any) -> tuple[str, int, int] | None:
    match = _LAYER_REF.match(str(text).strip()) if isinstance(text, str) else None
    if not match:
        return None
    start = int(match["start"])
    stop = int(match["stop"]) if match["stop"] is not None else start
    return match["alias"], start, stop


def _single_ref(recipe: Recipe, value: Any, path: str) -> LayerRef | None:
    parsed = _layer_range(value)
    if parsed is None or parsed[1] != parsed[2]:
        recipe.problems.append(recipe.problem(path, f"expected one layer like 'a.L3', got {value!r}"))
        return None
    return LayerRef(parsed[0], parsed[1])


def _blend(recipe: Recipe, entry: dict[str, Any], path: str) -> Mix | None:
    refs_raw = entry.get("blend")
    if not isinstance(refs_raw, list) or len(refs_raw) < 2:
        recipe.problems.append(recipe.problem(f"{path}.blend", "blend wants a list of two or more layers, e.g. "
                                                               "[a.L3, b.L3]"))
        return None
    refs = [_single_ref(recipe, value, f"{path}.blend[{i}]") for i, value in enumerate(refs_raw)]
    if any(ref is None for ref in refs):
        return None
    method = entry.get("method", "linear")
    if not isinstance(method, str) or method not in blend_methods():
        recipe.problems.append(recipe.problem(f"{path}.method", f"unknown blend method {method!r}; use "
                                                                f"{' or '.join(blend_methods())}"))
        return None
    try:
        options = OPS.get(method).parse(entry, len(refs))
    except OpFieldError as exc:
        recipe.problems.append(recipe.problem(f"{path}.{exc.field}", str(exc)))
        return None
    mix = Mix(refs, method, options=options, path=path)  # type: ignore[arg-type]
    return mix


def _component(recipe: Recipe, value: Any, path: str) -> Mix | None:
    if isinstance(value, dict):
        return _blend(recipe, value, path)
    ref = _single_ref(recipe, value, path)
    return Mix([ref], path=path) if ref else None


def _heads(recipe: Recipe, value: Any, path: str) -> list[HeadMove]:
    if not isinstance(value, list):
        recipe.problems.append(recipe.problem(path, "heads wants a list like [{head: 3, from: b.L10.h3}]"))
        return []
    moves = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("head"), int):
            recipe.problems.append(recipe.problem(item_path, "each head move needs an integer 'head' and 'from: "
                                                             "a.L10.h3' or 'part: NAME'"))
            continue
        kv = item.get("kv", "auto")
        if kv not in ("auto", "keep"):
            recipe.problems.append(recipe.problem(f"{item_path}.kv", f"kv must be 'auto' or 'keep', got {kv!r}"))
            continue
        if "part" in item:
            moves.append(HeadMove(item["head"], part=str(item["part"]), kv=kv, path=item_path))
            continue
        match = _HEAD_REF.match(str(item.get("from", "")))
        if not match:
            recipe.problems.append(recipe.problem(f"{item_path}.from", "expected a head like 'b.L10.h3', got "
                                                                       f"{item.get('from')!r}"))
            continue
        moves.append(HeadMove(item["head"], LayerRef(match["alias"], int(match["layer"])), int(match["head"]),
                              kv=kv, path=item_path))
    return moves


def _layers(recipe: Recipe, entries: Any) -> list[LayerSpec]:
    if not isinstance(entries, list) or not entries:
        recipe.problems.append(recipe.problem("layers", "layers wants a non-empty list of {take: a.L3} / "
                                                        "{blend: [...]} entries"))
        return []
    from engine.limits import MAX_RECIPE_LAYERS

    if len(entries) > MAX_RECIPE_LAYERS:
        recipe.problems.append(recipe.problem("layers", f"{len(entries):,} layer entries, over the garage's limit "
                                                        f"of {MAX_RECIPE_LAYERS:,} layers"))
        return []
    specs: list[LayerSpec] = []
    for index, entry in enumerate(entries):
        path = f"layers[{index}]"
        if isinstance(entry, str):
            entry = {"take": entry}
        if not isinstance(entry, dict):
            recipe.problems.append(recipe.problem(path, "each layer entry is a mapping such as {take: a.L3}"))
            continue
        unknown = sorted(set(entry) - LAYER_KEYS)
        if unknown:
            recipe.problems.append(recipe.problem(path, f"unknown key(s) {', '.join(unknown)}; use "
                                                        f"{', '.join(sorted(LAYER_KEYS))}"))
        if ("take" in entry) == ("blend" in entry):
            recipe.problems.append(recipe.problem(path, "each layer entry needs exactly one of 'take' or 'blend'"))
            continue
        overrides_given = [key for key in (*COMPONENTS, "heads") if key in entry]
        if "take" in entry:
            parsed = _layer_range(entry["take"])
            if parsed is None:
                recipe.problems.append(recipe.problem(f"{path}.take", "expected 'alias.L3' or a range "
                                                                      f"'alias.L8-15', got {entry['take']!r}"))
                continue
            alias, start, stop = parsed
            if stop < start:
                recipe.problems.append(recipe.problem(f"{path}.take", f"range {entry['take']} runs backwards; "
                                                                      f"write {alias}.L{stop}-{start}"))
                continue
            if stop - start + 1 + len(specs) > MAX_RECIPE_LAYERS:
                recipe.problems.append(recipe.problem(f"{path}.take", f"{entry['take']} makes the recipe longer "
                                                                      f"than the garage's limit of "
                                                                      f"{MAX_RECIPE_LAYERS:,} layers"))
                continue
            if stop > start and overrides_given:
                recipe.problems.append(recipe.problem(path, "overrides (attn, mlp, norms, heads) need a single "
                                                            "layer, not a range"))
                continue
            bases = [Mix([LayerRef(alias, k)], path=f"{path}.take") for k in range(start, stop + 1)]
        else:
            mix = _blend(recipe, entry, path)
            if mix is None:
                continue
            bases = [mix]
        for base in bases:
            spec = LayerSpec(base, path=path)
            for name in COMPONENTS:
                if name in entry:
                    mix = _component(recipe, entry[name], f"{path}.{name}")
                    if mix is not None:
                        spec.overrides[name] = mix
            if "heads" in entry:
                spec.heads = _heads(recipe, entry["heads"], f"{path}.heads")
            specs.append(spec)
    return specs


def _finish(recipe: Recipe, entries: Any) -> list[FinishStep]:
    """The ``finish:`` list of whole-model ops; a bad entry is one problem naming its field."""
    from engine.build.model_ops import MAX_FINISH_STEPS, parse_step

    if entries is None:
        return []
    if not isinstance(entries, list):
        recipe.problems.append(recipe.problem("finish", "finish wants a list of whole-model ops, e.g. "
                                                        "[{op: widen, width: 960, seed: 0}]"))
        return []
    if len(entries) > MAX_FINISH_STEPS:
        recipe.problems.append(recipe.problem("finish", f"{len(entries):,} finish ops, over the garage's limit of "
                                                        f"{MAX_FINISH_STEPS}"))
        return []
    steps = []
    for index, entry in enumerate(entries):
        path = f"finish[{index}]"
        try:
            step = parse_step(entry)
        except OpFieldError as exc:
            recipe.problems.append(recipe.problem(f"{path}.{exc.field}" if exc.field else path, str(exc)))
            continue
        step.path = path
        steps.append(step)
    return steps


def _relative_to_recipe(spec: str, origin: str) -> str:
    """A relative source path that exists beside the recipe file (and not in the working
    folder) is read relative to the recipe, so recipes can travel with their models."""
    if origin.startswith("<") or Path(spec).is_absolute() or Path(spec).expanduser().exists():
        return spec
    beside = Path(origin).parent / spec
    return str(beside.resolve()) if beside.is_dir() else spec


def load_recipe(path_or_text: str | Path | dict) -> Recipe:
    """Parse a recipe from a file path, YAML/JSON text or a dict; shape problems are kept on
    ``recipe.problems`` (``validate_recipe`` reports them with the rest), unreadable files raise."""
    if isinstance(path_or_text, dict):
        document, lines, origin = path_or_text, dict[str, int](), "<dict>"
    else:
        document, lines, origin = _read_document(path_or_text)
    if not isinstance(document, dict):
        raise RecipeError(f"{Path(origin).name} is not a recipe: expected a mapping with recipe_version, "
                          "sources and layers")
    raw_version = document.get("recipe_version")
    recipe = Recipe(
        version=raw_version if isinstance(raw_version, int) else 0, name=str(document.get("name") or Path(origin).stem),
        sources={}, embed=None, final_norm=None, lm_head=None, layers=[], origin=origin, lines=lines,
        description=str(document.get("description") or ""),
    )
    if raw_version != RECIPE_VERSION:
        recipe.problems.append(recipe.problem("recipe_version", f"recipe_version must be {RECIPE_VERSION}, got "
                                                                f"{raw_version!r}"))
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        recipe.problems.append(recipe.problem(unknown[0], f"unknown top-level key(s) {', '.join(unknown)}; use "
                                                          f"{', '.join(sorted(TOP_KEYS))}"))
    sources = document.get("sources")
    if not isinstance(sources, dict) or not sources:
        recipe.problems.append(recipe.problem("sources", "sources wants a mapping alias: model (bundled name, "
                                                         "local path or hub id)"))
    else:
        for alias, spec in sources.items():
            if isinstance(spec, dict):
                spec = spec.get("model") or spec.get("path") or spec.get("hub")
            if not isinstance(spec, str) or not spec:
                recipe.problems.append(recipe.problem(f"sources.{alias}", "each source is a bundled name, local "
                                                                          "path or hub id"))
                continue
            recipe.sources[str(alias)] = _relative_to_recipe(spec, origin)
    for key in ("base", "embed", "final_norm", "lm_head"):
        value = document.get(key)
        if value is not None and not isinstance(value, str):
            recipe.problems.append(recipe.problem(key, f"{key} names one source alias, got {value!r}"))
            continue
        setattr(recipe, key, value)
    config = document.get("config") or {}
    if not isinstance(config, dict):
        recipe.problems.append(recipe.problem("config", "config overrides are a mapping, e.g. {rope_theta: 10000}"))
    else:
        recipe.config = config
    dtype = document.get("dtype")
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        recipe.problems.append(recipe.problem("dtype", f"dtype must be float32, bfloat16 or float16, got {dtype!r}"))
    else:
        recipe.dtype = dtype
    recipe.layers = _layers(recipe, document.get("layers"))
    recipe.finish = _finish(recipe, document.get("finish"))
    return recipe


def dump_recipe(document: dict[str, Any]) -> str:
    """YAML text for a recipe document, keys in the order given."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)
