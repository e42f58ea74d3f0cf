"""``garage direction``: make residual directions (DiffMean, probe, SAE decoder row), run with one
ablated or added, and bake one into the weights."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("direction", help="residual directions: make, run with, bake into weights")
    verbs = parser.add_subparsers(dest="direction_verb", metavar="VERB", required=True)

    make = verbs.add_parser("make", help="a DiffMean or probe direction from two prompt sets, saved as a part")
    add_model_options(make)
    make.add_argument("--layer", type=int, required=True)
    make.add_argument("--positive", action="append", required=True, metavar="TEXT")
    make.add_argument("--negative", action="append", required=True, metavar="TEXT")
    make.add_argument("--method", choices=("diffmean", "probe"), default="diffmean")
    make.add_argument("--name", help="part name")
    make.add_argument("--json", action="store_true")
    make.set_defaults(handler=run_make)

    row = verbs.add_parser("from-sae", help="an SAE feature's decoder row as a direction part")
    add_model_options(row)
    row.add_argument("part", help="SAE part name")
    row.add_argument("feature", type=int)
    row.add_argument("--name", help="part name")
    row.add_argument("--json", action="store_true")
    row.set_defaults(handler=run_from_sae)

    use = verbs.add_parser("run", help="next-token prediction with a direction ablated or added")
    add_model_options(use)
    use.add_argument("part", help="direction part name")
    use.add_argument("--prompt", required=True)
    use.add_argument("--add", type=float, metavar="STRENGTH", help="add STRENGTH × direction at its address "
                                                                  "(default: project it out of every residual write)")
    use.add_argument("--top-k", type=int, default=5)
    use.add_argument("--json", action="store_true")
    use.set_defaults(handler=run_use)

    bake = verbs.add_parser("bake", help="write the model with the direction baked in (HF folder)")
    add_model_options(bake)
    bake.add_argument("part", help="direction part name")
    bake.add_argument("--out", required=True, help="output folder")
    bake.add_argument("--steer", type=float, metavar="STRENGTH",
                      help="bake a constant steer of STRENGTH at the part's layer (default: directional ablation)")
    bake.add_argument("--json", action="store_true")
    bake.set_defaults(handler=run_bake)


def run_make(args: argparse.Namespace) -> int:
    from engine.features.directions import diffmean_direction, probe_direction
    from engine.features.parts import save_direction
    from engine.parts import PartsBin

    loaded = open_from_args(args)
    accuracy = None
    if args.method == "probe":
        direction, fit = probe_direction(loaded, args.layer, args.positive, args.negative)
        accuracy = fit.accuracy
    else:
        direction = diffmean_direction(loaded, args.layer, args.positive, args.negative)
    record = save_direction(PartsBin(), loaded, direction.vector, direction.address, method=direction.method,
                            provenance=direction.provenance, name=args.name)
    if args.json:
        print_json({**record.to_dict(), "probe_accuracy": accuracy})
    else:
        extra = f", probe accuracy {accuracy:.2f}" if accuracy is not None else ""
        console().print(f"saved {args.method} direction at {direction.address} as part [bold]{record.name}[/] "
                        f"(norm {float(direction.vector.norm()):.3f}{extra})", highlight=False)
    return 0


def run_from_sae(args: argparse.Namespace) -> int:
    from engine.features.directions import sae_row_direction
    from engine.features.parts import load_coder, save_direction
    from engine.parts import PartsBin

    loaded = open_from_args(args)
    bin_ = PartsBin()
    part = load_coder(bin_, args.part, loaded)
    address = part.address_out or part.address
    direction = sae_row_direction(part.coder, args.feature, address, args.part)
    record = save_direction(bin_, loaded, direction.vector, address, method="sae_row",
                            provenance={**direction.provenance, "part_sha256": part.record.sha256}, name=args.name)
    if args.json:
        print_json(record.to_dict())
    else:
        console().print(f"saved feature {args.feature} of {args.part} as direction [bold]{record.name}[/]",
                        highlight=False)
    return 0


def run_use(args: argparse.Namespace) -> int:
    from engine.features.directions import direction_edit
    from engine.features.parts import load_direction
    from engine.parts import PartsBin
    from engine.runner import predict

    loaded = open_from_args(args)
    record, vector = load_direction(PartsBin(), args.part, loaded)
    if args.add is not None:
        edit = direction_edit(vector, record.address, "add", args.add, part=args.part)
    else:
        edit = direction_edit(vector, "writers", "ablate", part=args.part)
    before = predict(loaded, args.prompt, top_k=args.top_k)
    after = predict(loaded, args.prompt, interventions=[edit], top_k=args.top_k)
    if args.json:
        print_json({"intervention": edit.to_dict(), "before": [g.__dict__ for g in before.top],
                    "after": [g.__dict__ for g in after.top]})
        return 0
    out = console()
    out.print(edit.describe(), highlight=False)
    for label, result in (("before", before), ("after", after)):
        out.print(f"{label}: " + ", ".join(f"{g.text!r} {g.prob:.2f}" for g in result.top), highlight=False)
    return 0


def run_bake(args: argparse.Namespace) -> int:
    from engine.features.bake import BakeOp, bake
    from engine.features.parts import load_direction
    from engine.parts import PartsBin

    loaded = open_from_args(args)
    record, vector = load_direction(PartsBin(), args.part, loaded)
    if args.steer is not None:
        layer = int(record.address.split(".")[0].removeprefix("L"))
        op = BakeOp("steer_bias", vector=vector, layer=layer, strength=args.steer, direction_part=record.name,
                    direction_digest=record.sha256)
    else:
        op = BakeOp("ablate_direction", vector=vector, direction_part=record.name, direction_digest=record.sha256)
    result = bake(loaded, [op], args.out)
    if args.json:
        print_json(result.to_dict())
    else:
        console().print(f"baked {op.op} of {record.name} into {result.output}", highlight=False)
    return 0
