"""``garage blade``: train a blade (``gate · map(h_A)`` injected into B) on a task, sweep its depth with
controls, and run a saved blade on a prompt."""

from __future__ import annotations

import argparse
from typing import Any

from garage_tui.commands.common import console, print_json, progress_bar

MAPS = ("affine", "lowrank", "ae")  # engine.transfer.blade.MAP_KINDS, repeated so --help does not import torch
GATES = ("scalar", "vector")


def register(subparsers) -> None:
    parser = subparsers.add_parser("blade", help="blades: train gate · map(h_A) into model B on a task; "
                                                 "sweep the depth with controls; run a saved one")
    verbs = parser.add_subparsers(dest="blade_verb", metavar="VERB", required=True)

    train = verbs.add_parser("train", help="train a blade from A's residual into B's; judge it against blade-off "
                                           "and a random blade of the same norm; save it as a part")
    train.add_argument("model_a", help="model A (the donor): bundled name, folder, file or hub id")
    train.add_argument("model_b", help="model B (the one the blade writes into)")
    train.add_argument("--at-a", dest="address_a", required=True, metavar="ADDR", help="A's residual, e.g. L15")
    train.add_argument("--at-b", dest="address_b", metavar="ADDR", help="B's residual, e.g. L20 (or give --depths)")
    train.add_argument("--depths", metavar="LAYERS",
                       help="sweep B's depth: a comma list (4,8,12) or every:K (every K-th layer); the best blade "
                            "is saved")
    train.add_argument("--task", default="capitals",
                       help="bundled task (capitals, antonyms, …) or a .jsonl of prompt/answer records")
    train.add_argument("--map", dest="map_kind", choices=MAPS, default="affine")
    train.add_argument("--gate", choices=GATES, default="scalar")
    train.add_argument("--rank", type=int, default=16, help="rank of a lowrank map (default: %(default)s)")
    train.add_argument("--hidden", type=int, default=256, help="hidden width of an ae map (default: %(default)s)")
    train.add_argument("--stitch", metavar="PART", help="start the map from a stitch part (`garage stitch`)")
    train.add_argument("--steps", type=int, default=200, help="training steps (default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: %(default)s)")
    train.add_argument("--batch", type=int, default=8, help="examples per step (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--held-out-every", type=int, default=4, help="hold out every N-th example (default: 4)")
    train.add_argument("--checkpoint", metavar="FILE", help="save progress here and resume from it if it exists "
                                                            "(single depth only)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    train.add_argument("--name", help="part name")
    train.add_argument("--no-save", action="store_true", help="report only; keep no part")
    train.add_argument("--json", action="store_true")
    train.set_defaults(handler=run_train)

    run = verbs.add_parser("run", help="B's next-token guesses on a prompt with a saved blade off and on (and A's)")
    run.add_argument("part", help="blade part name")
    run.add_argument("--prompt", required=True)
    run.add_argument("--a", dest="model_a", help="model A (default: the source the blade was trained with)")
    run.add_argument("--b", dest="model_b", help="model B (default: the source the blade was trained with)")
    run.add_argument("--top", type=int, default=5)
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=run_run)


def _depths(text: str, layers: int) -> list[int]:
    from engine.transfer.pairs import TransferError

    try:
        if text.startswith("every:"):
            step = int(text.removeprefix("every:"))
            if step < 1:
                raise ValueError(step)
            return list(range(0, layers, step))
        return sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError as exc:
        raise TransferError(f"--depths {text!r} is not a comma list of layers or every:K; e.g. 4,8,12 or every:5") \
            from exc


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.blade_data import load_blade_task
    from engine.transfer.blade_parts import save_blade, stitch_from_part
    from engine.transfer.blade_train import TrainSettings, sweep_depths, train_blade_at
    from engine.transfer.pairs import TransferError

    if (args.address_b is None) == (args.depths is None):
        raise TransferError("give B's address with --at-b, or a depth sweep with --depths (not both)")
    if args.depths is not None and (args.stitch or args.checkpoint):
        raise TransferError("--stitch and --checkpoint work at one depth; give --at-b instead of --depths")
    task = load_blade_task(args.task)
    settings = TrainSettings(steps=args.steps, lr=args.lr, batch_size=args.batch, seed=args.seed,
                             map_kind=args.map_kind, gate=args.gate, rank=args.rank, hidden=args.hidden).checked()
    with progress_bar(args, f"opening {args.model_a}") as progress:
        loaded_a = open_model(args.model_a, device=args.device, dtype=args.dtype)
        loaded_b = loaded_a if args.model_b == args.model_a else open_model(args.model_b, device=args.device,
                                                                             dtype=args.dtype)
        if args.depths is not None:
            layers = _depths(args.depths, loaded_b.anatomy.n_layers)
            sweep = sweep_depths(loaded_a, loaded_b, args.address_a, layers, task, settings,
                                 held_out_every=args.held_out_every, progress=progress)
            reports, document = sweep.reports, sweep.to_dict()
            best = sweep.best
        else:
            stitch = None
            if args.stitch:
                stitch, _, _ = stitch_from_part(PartsBin(), args.stitch, loaded_a=loaded_a, loaded_b=loaded_b)
            best = train_blade_at(loaded_a, loaded_b, args.address_a, args.address_b, task, settings, stitch=stitch,
                                  held_out_every=args.held_out_every, progress=progress,
                                  checkpoint=Path(args.checkpoint) if args.checkpoint else None)
            reports, document = [best], {"model_a": loaded_a.name, "model_b": loaded_b.name,
                                         "address_a": best.address_a, "layers_b": loaded_b.anatomy.n_layers,
                                         "best_layer": best.layer_b, "best_depth": best.depth,
                                         "depths": [best.to_dict()]}
    if args.stitch:
        document["stitch"] = args.stitch
    document["part"] = None
    if not args.no_save:
        document["part"] = save_blade(PartsBin(), loaded_a, loaded_b, best, name=args.name).name
    if args.json:
        for depth in document["depths"]:
            depth["training"].pop("losses", None)  # one number per step: kept in the part's report, not here
        print_json(document)
        return 0
    _print_table(loaded_a.name, loaded_b.name, reports, document)
    return 0


def _print_table(name_a: str, name_b: str, reports: list[Any], document: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    first = reports[0]
    table = Table(title=f"blade {name_a}:{first.address_a} → {name_b} · task {first.task} "
                        f"({first.held_out.blade.examples} held-out examples, {first.alignment})")
    for column in ("B layer", "depth", "loss blade", "off", "random", "acc blade", "off", "random", "helps",
                   "train loss", "s"):
        table.add_column(column, justify="right")
    for report in reports:
        held = report.held_out
        table.add_row(str(report.layer_b), f"{report.depth:.0%}", f"{held.blade.loss:.3f}", f"{held.off.loss:.3f}",
                      f"{held.random.loss:.3f}", f"{held.blade.accuracy:.0%}", f"{held.off.accuracy:.0%}",
                      f"{held.random.accuracy:.0%}", "yes" if held.helps else "no",
                      f"{report.log.final_loss:.3f}", f"{report.log.seconds:.0f}")
    out.print(table)
    saved = f"; saved as part [bold]{document['part']}[/]" if document["part"] else ""
    out.print(f"best depth: layer {document['best_layer']} of {document['layers_b']} "
              f"({document['best_depth']:.1%}){saved}", highlight=False)


def run_run(args: argparse.Namespace) -> int:
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.blade_parts import load_blade, run_blade

    bin_ = PartsBin()
    part = load_blade(bin_, args.part)
    source_a = str(args.model_a or part.model_a.get("source"))
    source_b = str(args.model_b or part.model_b.get("source"))
    loaded_a = open_model(source_a, device=args.device, dtype=args.dtype)
    loaded_b = loaded_a if source_b == source_a else open_model(source_b, device=args.device, dtype=args.dtype)
    shown = run_blade(part, loaded_a, loaded_b, args.prompt, top=args.top)
    if args.json:
        from engine.serialize import to_json

        print_json({"part": args.part, "address_a": part.address_a, "address_b": part.address_b, **to_json(shown)})
        return 0
    from rich.table import Table

    table = Table(title=f"{args.prompt!r} · blade {args.part} ({part.address_a} → {part.address_b})")
    for column in ("rank", "B, blade off", "B, blade on", "A"):
        table.add_column(column)
    for rank, (off, on, own) in enumerate(zip(shown.off, shown.on, shown.model_a, strict=True), start=1):
        table.add_row(str(rank), f"{off[0]!r} {off[1]:.2f}", f"{on[0]!r} {on[1]:.2f}", f"{own[0]!r} {own[1]:.2f}")
    console().print(table)
    return 0
