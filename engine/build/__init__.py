"""The build bench: hybrid recipes validated before any weight is read, built tensor by
tensor into an HF folder with per-tensor provenance, evaluated, and previewed in memory.

Public API (stable; the TUI codes against it):
``load_recipe``, ``Recipe``, ``validate_recipe``, ``ValidationReport``, ``build``,
``BuildResult``, ``EvalReport``; ``engine.build.evaluate.evaluate`` and
``engine.build.preview.preview`` (functions named like their modules, so imported from them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.build.builder import BuildResult, build
    from engine.build.evaluate import EvalReport
    from engine.build.recipe import Problem, Recipe, RecipeError
    from engine.build.recipe_parse import load_recipe
    from engine.build.validate import ValidationReport, validate_recipe

# Loaded on first use (PEP 562): ``recipe check`` imports this package without paying for torch.
_HOMES = {
    "BuildResult": "builder", "build": "builder", "EvalReport": "evaluate", "Problem": "recipe",
    "Recipe": "recipe", "RecipeError": "recipe", "load_recipe": "recipe_parse",
    "ValidationReport": "validate", "validate_recipe": "validate",
}

__all__ = [
    "BuildResult", "EvalReport", "Problem", "Recipe", "RecipeError", "ValidationReport",
    "build", "load_recipe", "validate_recipe",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"engine.build.{home}"), name)
    globals()[name] = value
    return value
