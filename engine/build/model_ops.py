"""Whole-model recipe ops: the recipe's ``finish:`` list, applied in order once the layers are assembled.

A blend op (``engine.build.ops``) makes one tensor from its inputs; a model op changes the whole
assembled model (widen the residual stream, bake an intervention into the weights). Each op
has three steps, so ``garage recipe check`` can validate it without torch and without weights:

* ``parse(entry)`` — the recipe entry's own fields → params; raises ``OpFieldError(field, ...)``;
* ``check(params, config)`` — against the output config as a plain dict (and the parts bin's
  catalog); updates ``config`` to what the op will make (a widen changes ``hidden_size``), so
  the next op is checked against the model it will really see; raises ``OpFieldError``;
* ``apply(model, params)`` — with torch: the model (a transformers ``PreTrainedModel``) →
  ``(model, record)``; the record goes into the build's provenance.

An op that adds a part the weights cannot hold (a blade reads a second model) also has:

* ``write(folder, params, record)`` — puts the part's files beside the built weights (listed in
  ``engine.attached``'s manifest, so opening the folder attaches it) and returns their names;
* ``attach(loaded, params, record)`` — attaches it to the in-memory preview instead.

Such ops must come after every op that changes the weights: they are checked against the final model.

A new model op is one module in ``engine.plugins`` calling ``register_model_op`` (plus its test).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.build.ops import OpFieldError
from engine.build.recipe import FinishStep, Problem, Recipe
from engine.registry import Registry

Progress = Callable[[str, float | None], None]
MAX_FINISH_STEPS = 64  # whole-model ops per recipe; each may copy the model once


@dataclass(frozen=True)
class ModelOp:
    """One whole-model recipe op (see the module docstring for its three steps)."""

    name: str
    fields: tuple[str, ...]  # recipe keys it reads besides ``op``; any other key is refused
    parse: Callable[[Mapping[str, Any]], dict[str, Any]]
    check: Callable[[Mapping[str, Any], dict[str, Any]], None]
    apply: Callable[[Any, Mapping[str, Any]], tuple[Any, dict[str, Any]]]
    write: Callable[[Path, Mapping[str, Any], dict[str, Any]], list[str]] | None = None
    attach: Callable[[Any, Mapping[str, Any], dict[str, Any]], None] | None = None

    @property
    def attaches(self) -> bool:
        """Whether the op adds a part beside the weights instead of changing them."""
        return self.write is not None


MODEL_OPS: Registry[ModelOp] = Registry("model op")


def register_model_op(op: ModelOp) -> ModelOp:
    """Make ``op`` usable as ``- op: NAME`` in a recipe's ``finish:`` list."""
    return MODEL_OPS.register(op.name, op)


def parse_step(entry: Any) -> FinishStep:
    """A ``finish:`` entry → ``FinishStep``; ``OpFieldError`` names the field at fault (torch-free)."""
    if not isinstance(entry, dict):
        raise OpFieldError("", "each finish entry is a mapping such as {op: widen, width: 960}")
    name = entry.get("op")
    names = MODEL_OPS.names()
    if not isinstance(name, str) or name not in names:
        raise OpFieldError("op", f"unknown model op {name!r}; use one of: {', '.join(names)}")
    op = MODEL_OPS.get(name)
    unknown = sorted(str(key) for key in entry if key != "op" and key not in op.fields)
    if unknown:
        raise OpFieldError(unknown[0], f"'{name}' has no field '{unknown[0]}'; it takes: "
                                       f"{', '.join(op.fields) or 'nothing'}")
    return FinishStep(name, op.parse(entry), dict(entry))


def check_steps(recipe: Recipe, config: dict[str, Any]) -> list[Problem]:
    """Problems of ``recipe.finish`` against the assembled output's config (a copy is updated step by step)."""
    problems = []
    state = dict(config)
    attached_by = None
    for step in recipe.finish:
        op = MODEL_OPS.get(step.op)
        if attached_by is not None and not op.attaches:
            problems.append(recipe.problem(f"{step.path}.op", f"'{step.op}' changes the weights after "
                                           f"'{attached_by}', which was checked against them; move it before"))
            break
        attached_by = step.op if op.attaches else attached_by
        try:
            op.check(step.params, state)
        except OpFieldError as exc:
            problems.append(recipe.problem(f"{step.path}.{exc.field}" if exc.field else step.path, str(exc)))
            break  # later steps would be checked against a model this one cannot make
    return problems


def apply_steps(model: Any, steps: list[FinishStep], progress: Progress | None = None,
                cancel: threading.Event | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Apply every step to ``model`` in order; returns the final model and one record per step."""
    from engine.progress import check_cancel, notify

    records = []
    for index, step in enumerate(steps):
        check_cancel(cancel, "the build")
        notify(progress, f"finish: {step.op}", index / max(1, len(steps)))
        model, record = MODEL_OPS.get(step.op).apply(model, step.params)
        records.append({"op": step.op, "params": step.to_dict(), **record})
    return model, records


def write_attached(folder: Path, steps: list[FinishStep], records: list[dict[str, Any]]) -> list[str]:
    """Let every op that attaches a part write its files into the built ``folder``; their names."""
    names: list[str] = []
    for step, record in zip(steps, records, strict=True):
        op = MODEL_OPS.get(step.op)
        if op.write is not None:
            names.extend(op.write(folder, step.params, record))
    return names


def attach_steps(loaded: Any, steps: list[FinishStep], records: list[dict[str, Any]]) -> None:
    """Attach the parts of ops that add them beside the weights to an in-memory model (the preview)."""
    for step, record in zip(steps, records, strict=True):
        op = MODEL_OPS.get(step.op)
        if op.attach is not None:
            op.attach(loaded, step.params, record)
