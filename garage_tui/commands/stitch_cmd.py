"""``garage stitch A B --from L15.out --to L15.out``: fit a map between two models' residuals, save it as a part."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json

KINDS = ("ridge", "lowrank", "ae")  # engine.transfer.stitch.KINDS, repeated so --help does not import torch


def register(subparsers) -> None:
    parser = subparsers.add_parser("stitch", help="fit a map from model A's residual to model B's; save it as a part")
    parser.add_argument("model_a", help="model A (the source): bundled name, folder, file or hub id")
    parser.add_argument("model_b", help="model B (the target)")
    parser.add_argument("--from", dest="address_a", required=True, metavar="ADDR", help="A's address, e.g. L15.out")
    parser.add_argument("--to", dest="address_b", required=True, metavar="ADDR", help="B's address, e.g. L15.out")
    parser.add_argument("--kind", choices=KINDS, default="ridge")
    parser.add_argument("--rank", type=int, default=64, help="rank of a lowrank stitch (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden width of an ae stitch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the text for an ae stitch")
    parser.add_argument("--ridge", type=float, default=1e-6, help="ridge penalty, relative to the mean variance")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="a UTF-8 text file to fit on (repeatable; default: bundled sample + pydoc topics)")
    parser.add_argument("--max-chars", type=int, default=60000, help="use at most this many characters of text")
    parser.add_argument("--loss-chunks", type=int, default=4,
                        help="held-out chunks for the loss-recovered check (0 skips it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--name", help="part name")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_stitch)


def run_stitch(args: argparse.Namespace) -> int:
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.pairs import stitch_text
    from engine.transfer.parts import report_document, save_stitch

    loaded_a = open_model(args.model_a, device=args.device, dtype=args.dtype)
    loaded_b = loaded_a if args.model_b == args.model_a else open_model(args.model_b, device=args.device,
                                                                         dtype=args.dtype)
    sources = () if args.text else ("sample", "pydoc")
    text = stitch_text(sources, max_chars=args.max_chars, files=tuple(args.text))
    report = fit_stitch(loaded_a, loaded_b, args.address_a, args.address_b, text, kind=args.kind, ridge=args.ridge,
                        rank=args.rank, hidden=args.hidden, epochs=args.epochs,
                        loss_chunks=args.loss_chunks)
    record = save_stitch(PartsBin(), loaded_a, loaded_b, report, name=args.name)
    document = {"part": record.name, **report_document(report)}
    if args.json:
        print_json(document)
        return 0
    out = console()
    out.print(f"{args.kind} stitch {loaded_a.name}:{report.address_a} → {loaded_b.name}:{report.address_b} "
              f"({report.alignment}, {report.stitch.fit_pairs} training pairs) saved as part [bold]{record.name}[/]",
              highlight=False)
    out.print(f"held-out R² {report.held_out.r2:.4f} · mean cosine {report.held_out.mean_cosine:.4f} "
              f"over {report.held_out.pairs} pairs", highlight=False)
    if report.loss is not None:
        loss = report.loss
        out.print(f"loss: A {loss.loss_a:.4f} · B clean {loss.loss_b_clean:.4f} · stitched {loss.loss_stitched:.4f} · "
                  f"B zero-ablated {loss.loss_b_zero:.4f} · mean-ablated {loss.loss_b_mean:.4f}", highlight=False)
        out.print(f"loss recovered: {loss.recovered_vs_zero:.1%} (vs zero) · {loss.recovered_vs_mean:.1%} (vs mean)",
                  highlight=False)
    return 0
