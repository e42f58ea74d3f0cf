"""``garage inspect``: the engine bay as a printed tree or JSON."""

from __future__ import annotations

import argparse

from engine.safe_text import shown
from garage_tui.commands.common import add_model_options, console, open_from_args, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="print a model's anatomy: every part with shapes and sizes")
    add_model_options(parser, optional_model=True)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    parser.add_argument("--depth", type=int, default=None, help="levels below the model to show")
    parser.add_argument("--structure-only", action="store_true",
                        help="build on the meta device from config.json only: no weights are read")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = open_from_args(args, structure_only=args.structure_only, attach=False)  # the anatomy is B's weights
    anatomy = loaded.anatomy
    if args.json:
        print_json({
            "model": loaded.name, "source": loaded.source, "config_hash": loaded.config_hash,
            "structure_only": loaded.structure_only, "note": anatomy.note,
            "not_attached": list(loaded.detached), "tree": anatomy.root.to_dict(args.depth),
        })
        return 0
    from rich.markup import escape

    from garage_tui.render import anatomy_tree

    out = console()
    out.print(anatomy_tree(loaded.name, anatomy, args.depth, loaded.structure_only))
    if anatomy.note:
        out.print(f"[yellow]note:[/] {anatomy.note}")
    if loaded.detached:
        out.print(f"[yellow]note:[/] {escape(detached_note(loaded.detached))}")
    return 0


def detached_note(detached: list[str]) -> str:
    """One line saying the tree is the weights alone: the folder carries parts this open left off."""
    return (f"the folder carries {', '.join(shown(name) for name in detached)}, not attached here: the tree is the "
            "weights alone (opening the folder to run it attaches them)")
