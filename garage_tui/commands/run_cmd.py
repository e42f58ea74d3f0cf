"""``garage run``: next-token prediction under interventions."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="predict the next token, optionally under interventions")
    add_model_options(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--ablate", action="append", default=[], metavar="ADDR",
                        help="zero-ablate a part (head, attn, mlp, layer); ADDR:mean for mean-ablation")
    parser.add_argument("--scale", action="append", default=[], metavar="ADDR=FACTOR")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--logits-out", metavar="FILE.safetensors", help="save last-position logits (tensor 'logits')")
    parser.set_defaults(handler=run)


def parse_interventions(ablations: list[str], scalings: list[str]) -> list:
    from engine.errors import GarageError
    from engine.interventions import ablate, scale

    interventions = []
    for text in ablations:
        address, _, mode = text.partition(":")
        interventions.append(ablate(address, mode or "zero"))
    for text in scalings:
        address, sep, factor = text.rpartition("=")
        try:
            interventions.append(scale(address, float(factor)))
        except ValueError:
            sep = ""
        if not sep or not address:
            raise GarageError(f"--scale wants ADDR=FACTOR (e.g. L10.attn.h3=0.5), got '{text}'")
    return interventions


def run(args: argparse.Namespace) -> int:
    from engine.runner import predict
    from engine.snapshots import save_tensors

    interventions = parse_interventions(args.ablate, args.scale)
    loaded = open_from_args(args)
    result = predict(loaded, args.prompt, interventions=interventions, top_k=args.top_k)
    if args.logits_out:
        save_tensors(args.logits_out, {"logits": result.logits}, {
            "model": loaded.name, "prompt": args.prompt, "token_ids": result.token_ids,
            "interventions": [i.to_dict() for i in interventions],
        })
    if args.json:
        document = {
            "model": loaded.name, "prompt": args.prompt, "token_ids": result.token_ids,
            "interventions": [i.to_dict() for i in interventions],
            "top": [{"token_id": g.token_id, "token": g.text, "prob": g.prob, "logit": g.logit} for g in result.top],
        }
        if loaded.standing:  # parts the model's folder carries (a blade baked into a hybrid)
            document["carried"] = [i.to_dict() for i in loaded.standing]
        print_json(document)
        return 0
    from rich.table import Table

    shown = [*loaded.standing, *interventions]
    table = Table(title=f"next token after {args.prompt!r}" + (
        f" · {', '.join(i.describe() for i in shown)}" if shown else ""))
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("prob", justify="right")
    table.add_column("logit", justify="right")
    for rank, guess in enumerate(result.top, 1):
        table.add_row(str(rank), repr(guess.text), f"{guess.prob:.4f}", f"{guess.logit:.3f}")
    console().print(table)
    return 0
