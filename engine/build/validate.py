"""Validation before any weight is read: configs, safetensors headers and the recipe itself.

Every problem is collected (not just the first), each naming the recipe line and what to
change; warnings are things shapes cannot catch (a different ``rope_theta``, an untied head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.build.head_moves import kv_moves
from engine.build.plan import Plan, Planner
from engine.build.recipe import LayerRef, Problem, Recipe
from engine.build.recipe_parse import load_recipe
from engine.build.sources import Source, resolve_source
from engine.errors import GarageError
from engine.families import family_for, head_geometry


@dataclass
class ValidationReport:
    """What validation found; ``plan`` and ``sources`` are set when the recipe can be built."""

    recipe: Recipe
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.plan is not None

    def summary(self) -> str:
        if self.ok and self.plan is not None:
            return (f"recipe '{self.recipe.name}' is valid: {len(self.recipe.layers)} layers, "
                    f"{self.plan.param_count:,} parameters, {len(self.plan.tensors)} tensors")
        return f"recipe '{self.recipe.name}' has {len(self.problems)} problem(s)"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "recipe": self.recipe.name, "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "sources": {alias: source.describe() for alias, source in self.sources.items()},
        }
        if self.plan is not None:
            doc.update({
                "layers": len(self.recipe.layers), "layer_origins": self.plan.layer_origins,
                "parameters": self.plan.param_count, "tensors": len(self.plan.tensors),
                "bytes": self.plan.total_bytes, "largest_tensor_bytes": self.plan.largest_tensor_bytes,
                "model_class": self.plan.model_class, "tied_embeddings": self.plan.tied,
                "recomputed_config": self.plan.recomputed,
            })
        if self.recipe.finish:
            doc["finish"] = [step.to_dict() for step in self.recipe.finish]
        return doc


def _eps(config: Any) -> float | None:
    for key in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"):
        value = getattr(config, key, None)
        if value is not None:
            return float(value)
    return None


def _rope(config: Any) -> dict[str, Any]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _without_theta(rope: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in rope.items() if key != "rope_theta"}


def _uses(recipe: Recipe) -> dict[str, list[tuple[str, str]]]:
    """alias → [(recipe path, role)] for every place the recipe names it."""
    uses: dict[str, list[tuple[str, str]]] = {}
    for key in ("embed", "final_norm", "lm_head"):
        alias = getattr(recipe, key)
        if alias is not None:
            uses.setdefault(alias, []).append((key, key))
    if recipe.base:
        uses.setdefault(recipe.base, []).append(("base", "base"))
    for spec in recipe.layers:
        for mix in (spec.base, *spec.overrides.values()):
            for ref in mix.refs:
                uses.setdefault(ref.alias, []).append((mix.path, "layer"))
        for move in spec.heads:
            if move.source is not None:
                uses.setdefault(move.source.alias, []).append((f"{move.path}.from", "head"))
    return uses


class Validator:
    def __init__(self, recipe: Recipe, light: bool = False) -> None:
        self.recipe = recipe
        self.light = light  # no torch where engine.build.headers can (plan.config is then a ConfigView)
        self.report = ValidationReport(recipe, problems=list(recipe.problems))

    def fail(self, path: str, message: str) -> None:
        self.report.problems.append(self.recipe.problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.report.warnings.append(self.recipe.problem(path, message))

    def run(self) -> ValidationReport:
        recipe = self.recipe
        for alias, spec in recipe.sources.items():
            try:
                self.report.sources[alias] = resolve_source(alias, spec, self.light)
            except GarageError as exc:
                self.fail(f"sources.{alias}", f"source '{alias}' ({spec}) cannot be used: {exc}")
        uses = _uses(recipe)
        for alias, places in uses.items():
            if alias not in recipe.sources:
                for path, _ in places:
                    self.fail(path, f"'{alias}' is not a source of this recipe; add it under sources: "
                                    f"or use one of {', '.join(recipe.sources) or '(none)'}")
        self.note_carried(uses)
        for key in ("embed", "final_norm", "lm_head"):
            if getattr(recipe, key) is None:
                self.fail(key, f"the recipe must name the source of '{key}' explicitly, e.g. `{key}: "
                               f"{recipe.base_alias}`")
        base = self.report.sources.get(recipe.base_alias or "")
        if base is not None:
            self.check_family(base, uses)
            self.check_indices()
            if not self.report.problems:
                self.check_tokens(base)
        if not self.report.problems and base is not None and recipe.layers:
            planner = Planner(recipe, self.report.sources, self.light)
            try:
                plan = planner.plan()
            except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
                # transformers can refuse a source's own config when it is instantiated
                self.fail("sources", f"the recipe could not be planned: {str(exc).splitlines()[0]}; "
                                     "check that every source is a complete model of a supported family")
                plan = None
            self.report.problems.extend(planner.problems)
            if plan is not None and not self.report.problems and recipe.finish:
                from engine.build.model_ops import check_steps

                self.report.problems.extend(check_steps(recipe, plan.config.to_dict()))
            if plan is not None and not self.report.problems:
                self.report.plan = plan
                self.note_plan(plan)
        return self.report

    def note_carried(self, uses: dict[str, list[tuple[str, str]]]) -> None:
        """A source folder that carries parts (a blade beside its weights) gives the build its weights alone:
        say so, naming the op that would carry each part on. Read from the manifest; model A is never opened."""
        from engine.attached import ATTACHED_MANIFEST, read_manifest
        from engine.safe_text import shown

        carried_on = [str(step.params.get("part")) for step in self.recipe.finish if step.op == "blade"]
        for alias, source in self.report.sources.items():
            if alias not in uses:
                continue
            try:
                entries = read_manifest(source.folder)
            except GarageError:
                self.warn(f"sources.{alias}", f"source '{alias}' has a damaged {ATTACHED_MANIFEST}, so the parts it "
                                              "carries are unknown; the hybrid takes its weights only (blade-NN "
                                              "files left out)")
                continue
            for entry in entries:
                part = str(entry.get("part") or entry.get("file") or "?")
                sha256 = str(entry.get("sha256") or "")
                if any(ref == part or (len(ref) >= 8 and sha256.startswith(ref)) for ref in carried_on):
                    continue  # the recipe carries this one on itself
                made_for = entry.get("model_a")
                reads = f" (reads model A '{shown(made_for.get('name'))}')" if isinstance(made_for, dict) else ""
                kind = shown(entry.get("kind"))
                self.warn(f"sources.{alias}", f"source '{alias}' carries {kind} '{shown(part)}'{reads}; the hybrid "
                                              f"takes its weights only; add `- op: {kind}, part: {shown(part)}` under "
                                              f"finish: to carry the {kind}")

    def check_family(self, base: Source, uses: dict[str, list[tuple[str, str]]]) -> None:
        """Every used source shares the base's architecture and sizes (shapes at each seam)."""
        base_type = base.config_doc.get("model_type")
        base_table = family_for(base_type)
        if base_table is None:
            self.fail(f"sources.{base.alias}", f"'{base.alias}' is a '{base_type}' model, which has no family "
                                               "table; the build bench composes llama, mistral, qwen2, gemma, "
                                               "gpt2, gpt_neox, phi, phi3 and bert models")
            return
        base_geometry = head_geometry(base.config)
        for alias, places in uses.items():
            source = self.report.sources.get(alias)
            if source is None or alias == base.alias:
                continue
            path = places[0][0]
            table = family_for(source.config_doc.get("model_type"))
            if table is None or table.name != base_table.name:
                kind = source.config_doc.get("model_type")
                self.fail(path, f"'{alias}' is a {kind} model but the base '{base.alias}' is {base_type}; parts of "
                                "different architectures cannot be mixed; take this part from a "
                                f"{base_table.name}-family source")
            cfg, ref = source.config, base.config
            if cfg.hidden_size != ref.hidden_size:
                self.fail(path, f"hidden size differs at this seam: '{alias}' has {cfg.hidden_size}, '{base.alias}' "
                                f"has {ref.hidden_size}; every part must share one residual width")
            geometry = head_geometry(cfg)
            roles = {role for _, role in places}
            if (roles & {"layer", "head"}) and geometry != base_geometry:
                self.fail(path, f"attention geometry differs: '{alias}' has {geometry.n_heads} heads, "
                                f"{geometry.n_kv_heads} KV heads of dim {geometry.head_dim}; '{base.alias}' has "
                                f"{base_geometry.n_heads}, {base_geometry.n_kv_heads}, {base_geometry.head_dim}")
            same_family = table is not None and table.name == base_table.name
            if "layer" in roles:
                if getattr(cfg, "intermediate_size", None) != getattr(ref, "intermediate_size", None):
                    self.fail(path, f"MLP width differs: '{alias}' has {getattr(cfg, 'intermediate_size', None)}, "
                                    f"'{base.alias}' has {getattr(ref, 'intermediate_size', None)}")
                act, ref_act = getattr(cfg, "hidden_act", None), getattr(ref, "hidden_act", None)
                if act != ref_act:
                    self.fail(path, f"MLP activation differs: '{alias}' uses {act}, '{base.alias}' uses {ref_act}; "
                                    "the output config has one activation")
                if same_family and _eps(cfg) != _eps(ref):
                    self.warn(path, f"norm epsilon differs ({_eps(cfg)} vs {_eps(ref)}); the output uses "
                                    f"'{base.alias}''s {_eps(ref)}")
                rope, ref_rope = _rope(cfg), _rope(ref)
                if not same_family:
                    continue
                if rope.get("rope_theta") != ref_rope.get("rope_theta"):
                    self.warn(path, f"rope_theta differs ({rope.get('rope_theta')} vs {ref_rope.get('rope_theta')}); "
                                    f"shapes cannot catch it and the output uses {ref_rope.get('rope_theta')}")
                elif _without_theta(rope) != _without_theta(ref_rope):
                    self.warn(path, f"rotary scaling differs ({rope} vs {ref_rope}); the output uses '{base.alias}''s")

    def check_indices(self) -> None:
        """Layer and head numbers exist in their sources; GQA groups move whole or keep k/v."""
        recipe = self.recipe
        out_heads = head_geometry(self.report.sources[recipe.base_alias].config)

        def check_ref(ref: LayerRef, path: str) -> bool:
            source = self.report.sources.get(ref.alias)
            if source is None:
                return False
            count = source.config.num_hidden_layers
            if ref.layer >= count:
                self.fail(path, f"'{ref.alias}' has layers L0-L{count - 1}; L{ref.layer} does not exist")
                return False
            return True

        seen_paths: set[tuple[str, str]] = set()
        for spec in recipe.layers:
            for mix in (spec.base, *spec.overrides.values()):
                for ref in mix.refs:
                    if (mix.path, str(ref)) not in seen_paths:
                        seen_paths.add((mix.path, str(ref)))
                        check_ref(ref, mix.path)
            for move in spec.heads:
                if not 0 <= move.head < out_heads.n_heads:
                    self.fail(f"{move.path}.head", f"head {move.head} does not exist: the output layers have heads "
                                                   f"h0-h{out_heads.n_heads - 1}")
                    continue
                if move.part is not None:
                    self.check_part_move(move)
                    continue
                if move.source is None or move.source_head is None or not check_ref(move.source, f"{move.path}.from"):
                    continue
                source_heads = head_geometry(self.report.sources[move.source.alias].config)
                if not 0 <= move.source_head < source_heads.n_heads:
                    self.fail(f"{move.path}.from", f"'{move.source.alias}' layers have heads "
                                                   f"h0-h{source_heads.n_heads - 1}; "
                                                   f"h{move.source_head} does not exist")
            self.check_groups(spec, out_heads)

    def check_groups(self, spec, geometry) -> None:
        valid = [m for m in spec.heads if 0 <= m.head < geometry.n_heads]
        moves_kv = kv_moves(valid, geometry)
        for move in valid:
            if move.part is not None:
                continue  # check_part_move has its own GQA rule
            if geometry.group_size > 1 and move.kv == "auto" and not moves_kv[move.head]:
                group = geometry.kv_group(move.head)
                first = group * geometry.group_size
                mates = [h for h in range(first, first + geometry.group_size) if h != move.head]
                self.fail(f"{move.path}", f"head {move.head} shares keys and values with heads "
                                          f"{', '.join(map(str, mates))} (GQA group {group}); move the whole group "
                                          "from one source group in order, or add `kv: keep` to keep this "
                                          "layer's keys and values")
        if any(m.kv == "keep" for m in valid) and geometry.group_size > 1:
            self.warn(spec.path, "kv: keep moves only query and output weights; the moved heads read this "
                                 "layer's keys and values")

    def check_part_move(self, move) -> None:
        from engine.build.parts_heads import check_part_move

        problem = check_part_move(self.recipe, self.report.sources[self.recipe.base_alias], move)
        if problem:
            self.report.problems.append(problem)

    def check_tokens(self, base: Source) -> None:
        recipe = self.recipe
        embed, lm_head = self.report.sources.get(recipe.embed or ""), self.report.sources.get(recipe.lm_head or "")
        if embed is None or lm_head is None or embed is lm_head:
            return
        if embed.config.vocab_size != lm_head.config.vocab_size:
            self.fail("lm_head", f"vocabulary differs: embeddings from '{embed.alias}' have {embed.config.vocab_size} "
                                 f"tokens, lm_head from '{lm_head.alias}' has {lm_head.config.vocab_size}")
        elif embed.tokenizer_digest != lm_head.tokenizer_digest:
            self.fail("lm_head", f"tokenizers differ between '{embed.alias}' (embed) and '{lm_head.alias}' (lm_head); "
                                 "take both from sources with the same tokenizer")
        if getattr(base.config, "tie_word_embeddings", False):
            self.warn("lm_head", f"lm_head comes from '{lm_head.alias}' and the embeddings from '{embed.alias}': "
                                 "the output unties them (tie_word_embeddings: false)")

    def note_plan(self, plan: Plan) -> None:
        base = self.report.sources[self.recipe.base_alias]
        moved = [i for i, spec in enumerate(self.recipe.layers) if spec.base.refs[0].layer != i]
        if moved and getattr(base.config, "scale_attn_by_inverse_layer_idx", False):
            self.warn("layers", f"'{base.alias}' scales attention by 1/(layer index + 1); output layers "
                                f"{', '.join(f'L{i}' for i in moved[:6])} sit at new positions and will be scaled "
                                "differently from their source")
        dtypes = {self.report.sources[t.inputs[0][0]].tensors[t.inputs[0][1]].dtype for t in plan.tensors}
        if len(dtypes) > 1 and not self.recipe.dtype:
            self.warn("dtype", f"sources store tensors as {', '.join(sorted(dtypes))}; set `dtype:` to write one dtype")


def validate_recipe(recipe: Recipe | str, light: bool = False) -> ValidationReport:
    """Check ``recipe`` against its sources' configs and headers; reads no weight.

    ``light``: the same checks, with configs read as JSON and output shapes derived from them
    where ``engine.build.headers`` knows the family, so no torch or transformers import (for
    ``garage recipe check``); the plan's config is then a ``ConfigView``, so builds use the default."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return Validator(recipe, light).run()


def require_valid(recipe: Recipe | str) -> ValidationReport:
    """``validate_recipe``, raising one ``RecipeError`` that lists every problem."""
    from engine.build.recipe import RecipeError

    report = validate_recipe(recipe)
    if not report.ok:
        listed = "; ".join(str(p) for p in report.problems) or "the recipe could not be planned"
        raise RecipeError(f"recipe '{report.recipe.name}' is refused ({len(report.problems)} problem(s)): {listed}")
    return report
