"""``garage steer``: build a steering vector from two prompt sets and show its effect on generation."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "steer", help="steer generation with the mean residual difference of two prompt sets")
    add_model_options(parser)
    parser.add_argument("--layer", type=int, required=True, help="layer whose output is steered")
    parser.add_argument("--positive", action="append", required=True, metavar="TEXT",
                        help="prompt to steer toward (repeatable)")
    parser.add_argument("--negative", action="append", required=True, metavar="TEXT",
                        help="prompt to steer away from (repeatable)")
    parser.add_argument("--prompt", required=True, help="prompt to continue")
    parser.add_argument("--strength", type=float, action="append", metavar="S",
                        help="steering strength (repeatable; default 0 and 4)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.analyzers.steering import compare_steering, steering_vector

    loaded = open_from_args(args)
    vector = steering_vector(loaded, args.layer, args.positive, args.negative)
    comparison = compare_steering(loaded, vector, args.prompt, args.strength or [0.0, 4.0], args.max_new_tokens)
    if args.json:
        print_json(comparison.to_dict())
        return 0
    out = console()
    out.print(f"steering vector at L{args.layer} (norm {vector.norm:.3f})")
    for strength, generation in comparison.generations.items():
        out.print(f"[bold]strength {strength:g}[/]: {args.prompt}[cyan]{generation.text}[/]", highlight=False)
    return 0
