"""The build plan: for every output tensor, which source tensors feed it and how.

A plan is made from configs and safetensors headers only. Output tensor names come from
the output config instantiated on the meta device, so the built folder has exactly the keys
plain ``transformers`` expects; each is traced back through the family table to the recipe
entry that decides it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from engine.build.head_moves import head_transplants
from engine.build.headers import DTYPE_BYTES, DTYPE_NAMES, ModelLayout, config_layout
from engine.build.recipe import LayerSpec, Mix, Problem, Recipe
from engine.build.sources import Source, source_state_names
from engine.build.transplant import Transplant
from engine.families import FamilyTable, family_for
from engine.module_paths import join_path as _join


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code of the written tensor
    op: str  # copy | linear | slerp
    inputs: list[tuple[str, str]]  # (alias, source tensor name)
    params: dict[str, Any] = field(default_factory=dict)
    transplants: list[Transplant] = field(default_factory=list)
    part: str = ""  # output address the tensor belongs to (embed, L3.attn, ...)

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * DTYPE_BYTES[self.dtype]

    def provenance(self) -> dict[str, Any]:
        alias, tensor = self.inputs[0]
        row: dict[str, Any] = {"tensor": self.name, "part": self.part, "op": self.op, "source": alias,
                               "source_tensor": tensor, "params": dict(self.params)}
        if len(self.inputs) > 1:
            row["inputs"] = [{"source": a, "source_tensor": t} for a, t in self.inputs]
        if self.transplants:
            row["op"] = f"{self.op}+transplant"
            row["transplants"] = [t.to_dict() for t in self.transplants]
        return row


@dataclass
class Plan:
    config: Any  # the output transformers config
    model_class: str
    table: FamilyTable
    tensors: list[TensorPlan]
    tied: bool
    param_count: int
    layer_origins: list[str]  # per output layer, e.g. "smol.L8" or "blend(a.L3, b.L3)"
    recomputed: list[str] = field(default_factory=list)  # per-layer config keys remapped

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors), default=0)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


TOP = "^"  # marks a tensor name relative to the top-level module, not the base model


def meta_model(config: Any):
    """``config``'s model class instantiated on the meta device (no memory, no weights)."""
    import torch

    from engine.build.headers import ConfigView
    from engine.loading import model_class as _model_class

    if isinstance(config, ConfigView):  # a light plan whose recipe overrides the config: transformers reads it
        from transformers import AutoConfig

        doc = config.to_dict()
        config = AutoConfig.for_model(doc.pop("model_type"), **doc)
    with torch.device("meta"):
        return _model_class(config).from_config(copy.deepcopy(config))


def meta_layout(model: Any) -> ModelLayout:
    """The layout of a ``meta_model``."""
    from engine.anatomy import build_anatomy
    from engine.build.sources import DTYPE_CODES

    anatomy = build_anatomy(model, model.config)
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else {}
    tensors = [(name, tuple(t.shape), DTYPE_CODES.get(t.dtype, "F32"), t.is_floating_point())
               for name, t in model.state_dict().items()]
    params = sum(p.numel() for _, p in model.named_parameters())
    return ModelLayout(type(model).__name__, anatomy.base_path, anatomy.family, tensors, tied, params)


@dataclass
class SourceLayout:
    """A source's model-side key layout: base prefix, checkpoint name map, tied keys."""

    base_path: str
    names: dict[str, str]  # model key → checkpoint key
    tied: dict[str, str]  # model key → the model key it is tied to


def source_layout(source: Source, light: bool = False) -> SourceLayout:
    layout = config_layout(source.config) if light else None
    if layout is not None:  # no key renames in the families headers.py knows
        names = source_state_names(source, [name for name, *_ in layout.tensors], layout.base_path)
        return SourceLayout(layout.base_path, names, dict(layout.tied))
    from engine.anatomy import build_anatomy
    from engine.build.sources import checkpoint_renames

    model = meta_model(source.config)
    anatomy = build_anatomy(model, model.config)
    keys = list(model.state_dict().keys())
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    if not getattr(source.config, "tie_word_embeddings", False):
        tied = {}
    names = source_state_names(source, keys, anatomy.base_path, checkpoint_renames(model))
    return SourceLayout(anatomy.base_path, names, tied)


def component_of(table: FamilyTable, rel: str) -> str:
    """Which recipe component (attn, mlp, norms, other) a block-relative tensor name is in."""
    def under(path: str | None) -> bool:
        return path is not None and (rel == path or rel.startswith(path + "."))

    if any(under(path) for path in table.norms.values()):
        return "norms"
    mlp = table.mlp
    if any(under(path) for path in (mlp.module, mlp.up, mlp.gate, mlp.gate_up, mlp.down)):
        return "mlp"
    if under(table.attention.module):
        return "attn"
    return "other"


def output_config(recipe: Recipe, sources: dict[str, Source]) -> tuple[Any, list[str]]:
    """The base source's config with the new layer count, per-layer arrays remapped, tying
    decided and the recipe's explicit overrides applied."""
    base = sources[recipe.base_alias]
    config = copy.deepcopy(base.config)
    n_out = len(recipe.layers)
    recomputed = []
    n_base = base.config.num_hidden_layers
    for key, value in base.config.to_dict().items():
        if isinstance(value, list) and n_base >= 2 and len(value) == n_base and key not in recipe.config:
            remapped = []
            for spec in recipe.layers:
                ref = spec.base.refs[0]
                per_layer = getattr(sources[ref.alias].config, key, None) or value
                remapped.append(per_layer[ref.layer] if ref.layer < len(per_layer) else per_layer[-1])
            setattr(config, key, remapped)
            recomputed.append(key)
    config.num_hidden_layers = n_out
    for key, value in recipe.config.items():
        setattr(config, key, value)
    if recipe.dtype:
        config.dtype = recipe.dtype
    return config, recomputed


def untie_needed(recipe: Recipe, sources: dict[str, Source]) -> bool:
    """True when the base ties lm_head to the embeddings but the recipe takes them apart."""
    base_tied = bool(getattr(sources[recipe.base_alias].config, "tie_word_embeddings", False))
    if not base_tied or "tie_word_embeddings" in recipe.config:
        return False
    lm_source = sources.get(recipe.lm_head or "")
    lm_tied = bool(getattr(lm_source.config, "tie_word_embeddings", False)) if lm_source else True
    return recipe.lm_head != recipe.embed or not lm_tied


class Planner:
    """Makes the plan, collecting problems instead of stopping at the first."""

    def __init__(self, recipe: Recipe, sources: dict[str, Source], light: bool = False) -> None:
        self.recipe = recipe
        self.sources = sources
        self.light = light  # shapes from configs where headers.py knows the family (no torch)
        self.problems: list[Problem] = []
        self.layouts: dict[str, SourceLayout] = {}
        self.shape_reported: set[tuple[str, str]] = set()

    def layout(self, alias: str) -> SourceLayout:
        if alias not in self.layouts:
            self.layouts[alias] = source_layout(self.sources[alias], self.light)
        return self.layouts[alias]

    def fail(self, path: str, message: str) -> None:
        self.problems.append(self.recipe.problem(path, message))

    def source_key(self, alias: str, rel_to_base: str, path: str, out_name: str) -> str | None:
        """The checkpoint tensor of ``alias`` holding base-relative ``rel_to_base``."""
        layout = self.layout(alias)
        if rel_to_base.startswith(TOP):
            model_key = rel_to_base[len(TOP):]
        else:
            model_key = _join(layout.base_path, rel_to_base)
        if model_key in layout.names:
            return layout.names[model_key]
        tied_to = layout.tied.get(model_key)
        if tied_to is not None and tied_to in layout.names:
            return layout.names[tied_to]
        self.fail(path, f"source '{alias}' has no tensor for {out_name} (looked for {model_key}); "
                        "check the source is a complete checkpoint of this architecture")
        return None

    def plan(self) -> Plan | None:
        recipe = self.recipe
        config, recomputed = output_config(recipe, self.sources)
        if untie_needed(recipe, self.sources):
            config.tie_word_embeddings = False
        from engine.limits import LimitError, check_config_sizes

        try:  # config overrides are read from the recipe: sizes are limited before even a meta model
            check_config_sizes(config, "the output config")
        except LimitError as exc:
            self.fail("config", str(exc))
            return None
        layout = config_layout(config) if self.light and not recipe.config else None  # overrides: meta
        if layout is None:
            from huggingface_hub.errors import StrictDataclassError

            try:
                model = meta_model(config)
            except (ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError, AssertionError,
                    ArithmeticError, StrictDataclassError) as exc:
                # what transformers raises for a config its model class cannot build
                self.fail("config", f"the output config does not instantiate under the installed transformers: "
                                    f"{str(exc).splitlines()[0]}; fix the config overrides or the layer list")
                return None
            layout = meta_layout(model)
        table = layout.table
        if table is None:
            self.fail("sources", "the output model has no family table; compose models of a supported family")
            return None
        blocks_prefix = _join(layout.base_path, table.blocks) + "."
        base_prefix = f"{layout.base_path}." if layout.base_path else ""
        embed_paths = [table.embed, *table.extra_embeds.values()]
        tensors: list[TensorPlan] = []
        for name, shape, dtype, floating in layout.tensors:
            if name in layout.tied:
                continue
            if name.startswith(blocks_prefix):
                index_text, rel = name[len(blocks_prefix):].split(".", 1)
                entry = self.layer_tensor(int(index_text), rel, name, shape)
            else:
                rel = name[len(base_prefix):] if name.startswith(base_prefix) else f"{TOP}{name}"
                entry = self.global_tensor(table, rel, name, embed_paths, shape)
            if entry is not None:
                entry.shape = shape
                if recipe.dtype is None:
                    entry.dtype = self.sources[entry.inputs[0][0]].tensors[entry.inputs[0][1]].dtype
                else:
                    entry.dtype = DTYPE_NAMES[recipe.dtype] if floating else dtype
                tensors.append(entry)
        origins = [self.origin(spec) for spec in recipe.layers]
        if self.problems:
            return None
        return Plan(config, layout.model_class, table, tensors, bool(layout.tied), layout.param_count, origins,
                    recomputed)

    @staticmethod
    def origin(spec: LayerSpec) -> str:
        refs = ", ".join(map(str, spec.base.refs))
        text = str(spec.base.refs[0]) if spec.base.is_copy else f"{spec.base.method}({refs})"
        extras = [f"{name}←{mix.to_dict() if mix.is_copy else mix.method}" for name, mix in spec.overrides.items()]
        if spec.heads:
            extras.append(f"heads {','.join(str(m.head) for m in spec.heads)}")
        return text + (f" [{'; '.join(extras)}]" if extras else "")

    def check_shape(self, alias: str, source_name: str, shape: tuple[int, ...], path: str, name: str) -> None:
        got = self.sources[alias].tensors[source_name].shape
        if tuple(got) != tuple(shape) and (path, alias) not in self.shape_reported:
            self.shape_reported.add((path, alias))
            self.fail(path, f"'{alias}' gives {source_name} with shape {list(got)} but the output model needs "
                            f"{list(shape)} for {name}; take this part from a source with matching sizes")

    def global_tensor(self, table: FamilyTable, rel: str, name: str, embed_paths: list[str],
                      shape: tuple[int, ...]) -> TensorPlan | None:
        recipe = self.recipe

        def under(path: str | None) -> bool:
            return path is not None and (rel == path or rel.startswith(path + "."))

        if any(under(path) for path in embed_paths):
            key, part = "embed", "embed"
        elif under(table.final_norm):
            key, part = "final_norm", "final_norm"
        elif table.lm_head and (rel.startswith(f"{TOP}{table.lm_head}.")):
            key, part = "lm_head", "lm_head"
        else:
            key, part = "base", "model"
        alias = getattr(recipe, key) if key != "base" else recipe.base_alias
        if alias is None:
            self.fail(key, f"the recipe does not say where '{key}' comes from; add `{key}: ALIAS`")
            return None
        if alias not in self.sources:
            return None  # reported by the source checks
        source_name = self.source_key(alias, rel, key, name)
        if source_name is None:
            return None
        self.check_shape(alias, source_name, shape, key, name)
        return TensorPlan(name, shape, "F32", "copy", [(alias, source_name)], part=part)

    def layer_tensor(self, index: int, rel: str, name: str, shape: tuple[int, ...]) -> TensorPlan | None:
        spec = self.recipe.layers[index]
        table = family_for(getattr(self.sources[self.recipe.base_alias].config, "model_type", None))
        assert table is not None  # validation refused sources without a family table
        component = component_of(table, rel)
        mix: Mix = spec.overrides.get(component, spec.base)
        inputs = []
        for ref in mix.refs:
            if ref.alias not in self.sources:
                return None
            key = self.source_key(ref.alias, _join(table.blocks, str(ref.layer), rel), mix.path, name)
            if key is None:
                return None
            self.check_shape(ref.alias, key, shape, mix.path, name)
            inputs.append((ref.alias, key))
        part = f"L{index}" + (f".{component}" if component != "other" else "")
        entry = TensorPlan(name, shape, "F32", mix.method, inputs, mix.params(), part=part)
        if component == "attn" and spec.heads:
            entry.transplants = head_transplants(self, index, spec, rel, table, shape)
        return entry
