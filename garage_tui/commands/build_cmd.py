"""``garage build``: validate a recipe, then build the hybrid into an HF model folder."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build a hybrid model from a recipe (atomic, with provenance)")
    parser.add_argument("recipe", help="recipe file (.yaml or .json); see recipes/")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (appears only when complete)")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the plan; write nothing")
    parser.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.build import build, load_recipe, validate_recipe
    from garage_tui.commands.recipe_cmd import print_report

    recipe = load_recipe(args.recipe)
    if args.dry_run:
        report = validate_recipe(recipe)
        if args.json:
            print_json({**report.to_dict(), "dry_run": True, "out": args.out})
        else:
            print_report(report, console())
            if report.ok:
                console().print(f"dry run: nothing written (would build {args.out})")
        return 0 if report.ok else 2
    with progress_bar(args, "validating") as progress:
        result = build(recipe, args.out, progress=progress, overwrite=args.force)
    if args.json:
        print_json(result.to_dict())
        return 0
    from rich.markup import escape

    out = console()
    for warning in result.report.warnings:
        out.print(f"[yellow]warning[/] {escape(warning.where)}: {escape(warning.message)}", highlight=False)
    plan = result.report.plan  # a build that returned was planned; None only on refused recipes
    params = f"{plan.param_count:,}" if plan is not None else "?"
    out.print(f"[green]built[/] {result.out_dir}: {len(recipe.layers)} layers, {params} "
              f"parameters, {result.tensors} tensors in {len(result.shards)} shard(s), {result.seconds:.1f}s "
              "(provenance.json and recipe.yaml inside)", highlight=False)
    return 0
