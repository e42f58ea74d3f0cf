"""``garage extract``: cut a part out of a model into the parts bin."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract", help="extract a part (head, attn, mlp, norm, layer, embed, lm_head) into the parts bin")
    add_model_options(parser)
    parser.add_argument("address", help="part address, e.g. L10.attn, L10.attn.h3, L10.mlp, L3, embed, lm_head")
    parser.add_argument("--name", help="part name in the bin (default: MODEL-ADDRESS)")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the part (repeatable)")
    parser.add_argument("--note", default="", help="a note stored with the part")
    parser.add_argument("--load", action="store_true",
                        help="open the whole model and extract from it (default: read only the part's tensors "
                             "from the safetensors checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the part's record as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.parts import PartsBin

    bin_ = PartsBin()
    if args.load:
        from garage_tui.commands.common import open_from_args

        record = bin_.add_from_model(open_from_args(args, attach=False), args.address, name=args.name, tags=args.tag,
                                     notes=args.note)
    else:
        record = bin_.add_from_checkpoint(args.model, args.address, name=args.name, tags=args.tag, notes=args.note)
    if args.json:
        print_json(record.to_dict())
        return 0
    console().print(
        f"extracted [bold]{record.address}[/] ({record.kind}, {record.params:,} params, {record.dtype}) "
        f"from {record.source['name']} as [bold]{record.name}[/] · sha256 {record.sha256[:12]} · {record.path}"
    )
    return 0
