"""Run a hybrid in memory without writing it: the TUI bench's live preview.

The output model is the base source's model with its block list replaced by deep copies of
the source layers; each copy's ``layer_idx`` is set to its new position, so the KV cache
keeps one slot per output layer even when a layer is repeated. Layers with blends, overrides
or head moves get the same tensors the builder would write (``materialize``).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from torch import Tensor, nn

from engine.build.builder import materialize
from engine.build.plan import SourceLayout, source_layout
from engine.build.recipe import Recipe
from engine.build.validate import require_valid
from engine.loading import LoadedModel, open_model
from engine.progress import Progress, check_cancel, notify


def set_layer_index(layer: nn.Module, index: int) -> None:
    """Point every ``layer_idx`` inside a copied block at its new position."""
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            setattr(module, "layer_idx", index)  # noqa: B010 - plain attribute on any block type


def _memory_fetch(loaded: dict[str, LoadedModel], layouts: dict[str, SourceLayout]):
    states = {alias: model.model.state_dict() for alias, model in loaded.items()}
    by_checkpoint = {alias: {ckpt: key for key, ckpt in layout.names.items()} for alias, layout in layouts.items()}

    from engine.build.parts_heads import PART_ALIAS, PartTensors

    parts = PartTensors()

    def fetch(alias: str, name: str) -> Tensor:
        if alias.startswith(PART_ALIAS):
            return parts.get(alias, name)
        return states[alias][by_checkpoint[alias][name]]

    return fetch


def _assign(module: nn.Module, name: str, value: Tensor) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    current = getattr(owner, leaf)
    with torch.no_grad():
        current.copy_(value.to(dtype=current.dtype, device=current.device))


def preview(
    recipe: Recipe | str,
    models: dict[str, LoadedModel] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> LoadedModel:
    """The hybrid ``recipe`` describes, as an in-memory ``LoadedModel`` (nothing written).

    ``models`` maps source aliases to models already open (e.g. the garage's); others are
    opened from their folders.
    """
    from engine.anatomy import build_anatomy

    report = require_valid(recipe)
    recipe, plan, sources = report.recipe, report.plan, report.sources
    assert plan is not None and recipe.base_alias is not None and recipe.embed is not None
    loaded: dict[str, LoadedModel] = {}
    for alias, source in sources.items():
        check_cancel(cancel, "the preview")
        notify(progress, f"opening {alias}", len(loaded) / (len(sources) + 1))
        given = (models or {}).get(alias)
        # a source gives only its weights (the builder copies no carried part): a blade's model A stays shut
        loaded[alias] = given if given is not None else open_model(str(source.folder), attach=False)
    layouts = {alias: source_layout(source) for alias, source in sources.items()}
    fetch = _memory_fetch(loaded, layouts)
    base = loaded[recipe.base_alias]
    base_path = base.anatomy.base_path
    blocks_path = ".".join(p for p in (base_path, plan.table.blocks) if p)
    parent_path, _, attr = blocks_path.rpartition(".")
    parent = base.model.get_submodule(parent_path) if parent_path else base.model
    original_blocks = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        hybrid: Any = copy.deepcopy(base.model)
    finally:
        setattr(parent, attr, original_blocks)
    layers = nn.ModuleList()
    for index, spec in enumerate(recipe.layers):
        ref = spec.base.refs[0]
        source_model = loaded[ref.alias]
        source_blocks: Any = source_model.model.get_submodule(
            ".".join(p for p in (source_model.anatomy.base_path, plan.table.blocks) if p))
        layer = copy.deepcopy(source_blocks[ref.layer])
        set_layer_index(layer, index)
        layers.append(layer)
    new_parent = hybrid.get_submodule(parent_path) if parent_path else hybrid
    setattr(new_parent, attr, layers)
    config = copy.deepcopy(plan.config)
    base_config: Any = base.model.config
    config._attn_implementation = base_config._attn_implementation
    copied_config = hybrid.config
    for module in hybrid.modules():
        if getattr(module, "config", None) is copied_config:
            module.config = config
    if not plan.tied and getattr(base.model.config, "tie_word_embeddings", False):
        head = hybrid.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())
    prefix = blocks_path + "."
    for entry in plan.tensors:
        if entry.name.startswith(prefix):
            index_text, rel = entry.name[len(prefix):].split(".", 1)
            if recipe.layers[int(index_text)].is_plain_take:
                continue  # the deep copy already holds exactly these tensors
            _assign(layers[int(index_text)], rel, materialize(entry, fetch))
        elif entry.inputs[0][0] != recipe.base_alias or entry.op != "copy" or entry.transplants:
            _assign(hybrid, entry.name, materialize(entry, fetch))
    extra: dict[str, Any] = {"recipe": recipe.to_dict(), "layer_origins": plan.layer_origins}
    if recipe.finish:
        from engine.build.model_ops import apply_steps

        # the same whole-model ops the builder applies to the written folder, here in memory
        hybrid, extra["finish"] = apply_steps(hybrid, recipe.finish, progress, cancel)
        config = hybrid.config
    hybrid.eval()
    notify(progress, "ready", 1.0)
    embed = loaded[recipe.embed]
    made = LoadedModel(
        name=f"{recipe.name} (preview)", source="preview", source_kind="preview", model=hybrid, config=config,
        tokenizer=embed.tokenizer, anatomy=build_anatomy(hybrid, config), device=base.device, dtype=base.dtype,
        structure_only=False, extra=extra,
    )
    if recipe.finish:
        from engine.build.model_ops import attach_steps

        attach_steps(made, recipe.finish, extra["finish"])  # a blade: what opening the built folder attaches
    return made
