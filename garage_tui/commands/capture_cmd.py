"""``garage capture``: save activations at addresses to a safetensors file."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("capture", help="capture activations at addresses into a .safetensors file")
    add_model_options(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--at", action="append", required=True, metavar="ADDR", help="capture point (repeatable)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.capture import capture_prompt
    from engine.snapshots import save_tensors

    loaded = open_from_args(args)
    captured, token_ids = capture_prompt(loaded, args.prompt, args.at)
    save_tensors(args.out, captured, {"model": loaded.name, "prompt": args.prompt, "token_ids": token_ids,
                                      "addresses": list(captured), "config_hash": loaded.config_hash})
    summary = {address: list(tensor.shape) for address, tensor in captured.items()}
    if args.json:
        print_json({"out": args.out, "tensors": summary, "token_ids": token_ids})
    else:
        for address, shape in summary.items():
            console().print(f"[bold]{address}[/] {'×'.join(map(str, shape))}")
        console().print(f"saved {len(summary)} tensors to {args.out}")
    return 0
