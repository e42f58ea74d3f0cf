"""``garage recipe check``: validate a hybrid recipe without reading any weight."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("recipe", help="work with hybrid recipes (see recipes/)")
    verbs = parser.add_subparsers(dest="recipe_verb", metavar="ACTION", required=True)
    check = verbs.add_parser("check", help="validate a recipe from configs and headers only; list every problem")
    check.add_argument("recipe", help="recipe file (.yaml or .json)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=run_check)


def print_report(report, out) -> None:
    """Problems, warnings and the plan summary of a ``ValidationReport``, as rich text."""
    from rich.markup import escape

    for problem in report.problems:
        out.print(f"[red]problem[/] {escape(problem.where)}: {escape(problem.message)}", highlight=False)
    for warning in report.warnings:
        out.print(f"[yellow]warning[/] {escape(warning.where)}: {escape(warning.message)}", highlight=False)
    style = "green" if report.ok else "red"
    out.print(f"[{style}]{report.summary()}[/]", highlight=False)
    if report.ok:
        plan = report.plan
        origins = plan.layer_origins
        shown = ", ".join(f"L{i}←{o}" for i, o in enumerate(origins))
        out.print(f"layers: {escape(shown)}", highlight=False)
        out.print(f"{plan.total_bytes / 1e6:.1f} MB to write; largest tensor {plan.largest_tensor_bytes / 1e6:.1f} MB; "
                  f"tied embeddings: {'yes' if plan.tied else 'no'}", highlight=False)
        if report.recipe.finish:
            steps = "; ".join(", ".join(f"{k}: {v}" for k, v in step.to_dict().items())
                              for step in report.recipe.finish)
            out.print(f"then whole-model ops: {escape(steps)} (sizes above are the assembled layers')", highlight=False)


def run_check(args: argparse.Namespace) -> int:
    from engine.build import load_recipe, validate_recipe

    report = validate_recipe(load_recipe(args.recipe), light=True)  # configs and headers: no torch import
    if args.json:
        print_json(report.to_dict())
    else:
        print_report(report, console())
    return 0 if report.ok else 2
