"""The build bench: hybrid recipes validated before any weight is read, built tensor by
tensor into an HF folder with per-tensor provenance, evaluated, and previewed in memory.

Public API (stable; the TUI codes against it):
``load_recipe``, ``Recipe``, ``validate_recipe``, ``ValidationReport``, ``build``,
``BuildResult``, ``preview``, ``evaluate``, ``EvalReport``.
"""

from __future__ import annotations

from engine.build.builder import BuildResult, build
from engine.build.evaluate import EvalReport, evaluate
from engine.build.preview import preview
from engine.build.recipe import Problem, Recipe, RecipeError
from engine.build.recipe_parse import load_recipe
from engine.build.validate import ValidationReport, validate_recipe

__all__ = [
    "BuildResult", "EvalReport", "Problem", "Recipe", "RecipeError", "ValidationReport",
    "build", "evaluate", "load_recipe", "preview", "validate_recipe",
]
