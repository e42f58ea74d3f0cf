"""``garage snapshot``: one run's captured states, with metadata, in a .safetensors file."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser("snapshot", help="save one run's states (with metadata) to a .safetensors file")
    add_model_options(parser)
    parser.add_argument("--prompt", required=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--at", action="append", metavar="ADDR", help="capture point (repeatable)")
    where.add_argument("--all", action="store_true",
                       help="embedding plus every layer's attn.out, mlp.out and out (the default)")
    parser.add_argument("--ablate", action="append", default=[], metavar="ADDR",
                        help="zero-ablate a part during the run; ADDR:mean for mean-ablation")
    parser.add_argument("--scale", action="append", default=[], metavar="ADDR=FACTOR")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="capture in motion: generate N tokens greedily and keep every step's states")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.snapshots import save_snapshot, take_snapshot
    from garage_tui.commands.run_cmd import parse_interventions

    interventions = parse_interventions(args.ablate, args.scale)
    addresses = None if args.all else args.at
    with progress_bar(args, f"opening {args.model}") as progress:
        loaded = open_from_args(args, progress=progress)
        if args.generate is not None:
            from engine.motion import take_motion_snapshot

            snapshot = take_motion_snapshot(loaded, args.prompt, addresses, interventions,
                                            max_new_tokens=args.generate, progress=progress)
        else:
            snapshot = take_snapshot(loaded, args.prompt, addresses, interventions)
    save_snapshot(args.out, snapshot)
    if args.json:
        print_json({"out": args.out, **snapshot.to_dict()})
        return 0
    motion = snapshot.metadata.get("motion")
    generated = f", {len(motion['generated_ids'])} generated: {motion['generated_text']!r}" if motion else ""
    console().print(f"saved {len(snapshot.tensors)} states of {loaded.name} "
                    f"({len(snapshot.metadata['token_ids'])} tokens{generated}) to {args.out}")
    return 0
