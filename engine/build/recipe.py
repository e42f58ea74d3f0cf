"""Hybrid recipes as plain values: sources, an ordered list of output layers, and where each
layer's parts come from. ``recipe_parse.py`` reads them from YAML/JSON; every value keeps
the key path it came from, and ``Recipe.where`` turns that into a file line for messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import GarageError

RECIPE_VERSION = 1
COMPONENTS = ("attn", "mlp", "norms")


class RecipeError(GarageError):
    """A recipe that cannot be parsed or that fails validation."""


@dataclass
class Problem:
    """One thing wrong with a recipe: where (file line and key path) and what to change."""

    where: str
    message: str
    line: int | None = None
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "message": self.message, "line": self.line, "path": self.path}

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class LayerRef:
    alias: str
    layer: int

    def __str__(self) -> str:
        return f"{self.alias}.L{self.layer}"


@dataclass
class Mix:
    """Where one part of an output layer comes from: one layer (copy) or a blend of several."""

    refs: list[LayerRef]
    method: str = "copy"  # a recipe op by name (engine.build.ops): copy, linear, slerp, …
    options: dict[str, Any] = field(default_factory=dict)  # the op's parsed params (weights, t, …)
    path: str = ""

    @property
    def is_copy(self) -> bool:
        return self.method == "copy"

    def params(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> Any:
        if self.is_copy:
            return str(self.refs[0])
        return {"blend": [str(r) for r in self.refs], "method": self.method, **self.params()}


@dataclass
class HeadMove:
    """Query head ``head`` of the output layer comes from ``source`` (a layer's head) or a part."""

    head: int
    source: LayerRef | None = None
    source_head: int | None = None
    part: str | None = None
    kv: str = "auto"  # auto: move k/v too when the whole GQA group moves; keep: leave them
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"head": self.head}
        if self.part is not None:
            doc["part"] = self.part
        else:
            doc["from"] = f"{self.source}.h{self.source_head}"
        if self.kv != "auto":
            doc["kv"] = self.kv
        return doc


@dataclass
class LayerSpec:
    """One output layer: its base mix plus optional attention/MLP/norm overrides and head moves."""

    base: Mix
    overrides: dict[str, Mix] = field(default_factory=dict)
    heads: list[HeadMove] = field(default_factory=list)
    path: str = ""

    @property
    def is_plain_take(self) -> bool:
        return self.base.is_copy and not self.overrides and not self.heads

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.base.is_copy:
            doc["take"] = str(self.base.refs[0])
        else:
            doc.update(self.base.to_dict())
        for name, mix in self.overrides.items():
            doc[name] = mix.to_dict()
        if self.heads:
            doc["heads"] = [move.to_dict() for move in self.heads]
        return doc


@dataclass
class FinishStep:
    """One ``finish:`` entry (a whole-model op, ``engine.build.model_ops``): name, params, entry as written."""

    op: str
    params: dict[str, Any]
    entry: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **{key: value for key, value in self.entry.items() if key != "op"}}


@dataclass
class Recipe:
    """A parsed recipe; ``lines`` maps key paths (``layers[3].take``) to file lines."""

    version: int
    name: str
    sources: dict[str, str]
    embed: str | None
    final_norm: str | None
    lm_head: str | None
    layers: list[LayerSpec]
    base: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    description: str = ""
    origin: str = "<text>"
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # shape problems found while parsing
    finish: list[FinishStep] = field(default_factory=list)  # whole-model ops applied after the layers

    @property
    def base_alias(self) -> str:
        """The source whose config the output starts from ('' when the recipe names none)."""
        return self.base or self.embed or (next(iter(self.sources)) if self.sources else "")

    def where(self, path: str) -> tuple[str, int | None]:
        """'recipe.yaml line 12 (layers[3].take)' for a key path, falling back to its parents."""
        probe = path
        while probe:
            if probe in self.lines:
                line = self.lines[probe]
                return f"{Path(self.origin).name} line {line} ({path})", line
            parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
            probe = "" if parent == probe else parent
        return f"{Path(self.origin).name} ({path or 'top level'})", None

    def problem(self, path: str, message: str) -> Problem:
        where, line = self.where(path)
        return Problem(where, message, line, path)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain document (ranges expanded, one entry per output layer)."""
        doc: dict[str, Any] = {"recipe_version": self.version, "name": self.name}
        if self.description:
            doc["description"] = self.description
        doc["sources"] = dict(self.sources)
        if self.base:
            doc["base"] = self.base
        doc.update({"embed": self.embed, "final_norm": self.final_norm, "lm_head": self.lm_head})
        if self.dtype:
            doc["dtype"] = self.dtype
        if self.config:
            doc["config"] = dict(self.config)
        doc["layers"] = [layer.to_dict() for layer in self.layers]
        if self.finish:
            doc["finish"] = [step.to_dict() for step in self.finish]
        return doc
