"""``garage transfer A B --at-a L15.out --at-b L9.out --task sentiment``: move a direction from model A
into model B through a stitch and judge it against B's own, with the no-steer control and two random
ones: isotropic vectors and the split DiffMean (in distribution: the task's prompts cut in two seeded
halves, stratified by default), both of the same norm."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json, progress_bar

# engine.transfer.prompts.TASKS and engine.transfer.judge.SPLITS, repeated so --help does not import torch
TASKS = ("sentiment", "formality", "language", "antonyms", "capitals")
SPLITS = ("stratified", "random")


def register(subparsers) -> None:
    parser = subparsers.add_parser("transfer", help="move a steering direction from model A into model B through "
                                                    "a stitch; judge it against B's own with controls")
    parser.add_argument("model_a", help="model A (the source): bundled name, folder, file or hub id")
    parser.add_argument("model_b", help="model B (the target)")
    parser.add_argument("--at-a", dest="address_a", required=True, metavar="ADDR", help="A's residual, e.g. L15.out")
    parser.add_argument("--at-b", dest="address_b", required=True, metavar="ADDR", help="B's residual, e.g. L9.out")
    parser.add_argument("--task", choices=TASKS, default="sentiment",
                        help="prompt set: DiffMean pairs, held-out prompts and target words (default: %(default)s)")
    parser.add_argument("--stitch", metavar="PART", help="a stitch part from `garage stitch` (default: fit a ridge "
                                                         "stitch here, on the bundled sample + pydoc text)")
    parser.add_argument("--direction", metavar="PART", help="A's direction part (DiffMean, probe or SAE row from "
                                                            "`garage direction`) instead of the task's DiffMean")
    parser.add_argument("--max-chars", type=int, default=60000, help="text for a fitted stitch (default: %(default)s)")
    parser.add_argument("--ridge", type=float, default=1e-6, help="ridge penalty of a fitted stitch")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, -1.0, 2.0, -2.0], metavar="A",
                        help="strengths as multiples of ‖v_B‖, both signs (default: ±1 ±2)")
    parser.add_argument("--random", type=int, default=3, metavar="N",
                        help="seeds of the random controls (one isotropic vector and one split each)")
    parser.add_argument("--split", choices=SPLITS, default=SPLITS[0],
                        help="how the split control cuts the task's prompts in halves: stratified (half of each "
                             "class per half, no label left) or random (pooled and shuffled; can keep part of the "
                             "label) (default: %(default)s)")
    parser.add_argument("--neutral-chunks", type=int, default=4, help="neutral text chunks for the damage check")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--name", help="name of the transferred direction part (saved on B)")
    parser.add_argument("--no-save", action="store_true", help="judge only; save no part")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_transfer)


def run_transfer(args: argparse.Namespace) -> int:
    from engine.features.parts import load_direction
    from engine.limits import check_count
    from engine.loading import open_model
    from engine.parts import PartsBin
    from engine.transfer.judge import transfer_direction
    from engine.transfer.parts import save_transferred
    from engine.transfer.prompts import load_task, neutral_text

    random_count = check_count(args.random, "random control vectors", 64, minimum=1)
    chunks = check_count(args.neutral_chunks, "neutral text chunks", 64, minimum=1)
    check_count(len(args.alphas), "strengths", 32, minimum=1)
    check_count(args.max_chars, "--max-chars", 10_000_000, minimum=1_000)  # a negative count would slice from the end
    bin_ = PartsBin()
    loaded_a = open_model(args.model_a, device=args.device, dtype=args.dtype)
    loaded_b = loaded_a if args.model_b == args.model_a else open_model(args.model_b, device=args.device,
                                                                         dtype=args.dtype)
    task = load_task(args.task)
    vector_a = None
    if args.direction:
        record, vector_a = load_direction(bin_, args.direction, loaded_a)
        from engine.addresses import resolve_point

        if record.address != resolve_point(loaded_a.anatomy, args.address_a).address:
            from engine.transfer.pairs import TransferError

            raise TransferError(f"direction '{args.direction}' lives at {record.address}, not {args.address_a}; "
                                f"pass --at-a {record.address}")
    with progress_bar(args, "fitting the stitch") as progress:
        report = transfer_direction(loaded_a, loaded_b, args.address_a, args.address_b, task, stitch_part=args.stitch,
                                    bin_=bin_, max_chars=args.max_chars, ridge=args.ridge, vector_a=vector_a,
                                    alphas=args.alphas, random_seeds=tuple(range(random_count)),
                                    neutral=neutral_text(chunks), split=args.split, progress=progress)
    judgement = report.judgement
    saved = None
    if not args.no_save:
        record = save_transferred(bin_, loaded_a, loaded_b, judgement, alignment=report.alignment,
                                  text_digest=report.text_digest, stitch=report.stitch, name=args.name)
        saved = record.name
    document = {"part": saved, "model_a": loaded_a.name, "model_b": loaded_b.name, **report.to_dict()}
    if args.json:
        print_json(document)
        return 0
    _print(judgement, report.stitch, loaded_a.name, loaded_b.name, saved)
    return 0


def _print(judgement, stitch_doc: dict, name_a: str, name_b: str, saved: str | None) -> None:
    from rich.table import Table

    out = console()
    held = stitch_doc.get("held_out") or {}
    r2 = f"held-out R² {held['r2']:.3f}" if "r2" in held else "R² not recorded"
    out.print(f"{judgement.task}: {name_a}:{judgement.address_a} → {name_b}:{judgement.address_b} through a "
              f"{stitch_doc.get('kind', '?')} stitch ({r2}); cos(mapped, native) {judgement.cosine:.3f} "
              f"(a poor proxy: judged by behaviour)", highlight=False)
    table = Table("α × ‖v_B‖", "native Δ", "mapped Δ", "% native", "random |Δ|", "× random", "split |Δ|",
                  "× split", "KL native", "KL mapped", "KL random", "KL split", "works", "in-dist")
    for s in judgement.strengths:
        table.add_row(f"{s.alpha:+g}", f"{s.native:+.3f}", f"{s.mapped:+.3f}", f"{s.fraction:.0%}", f"{s.random:.3f}",
                      f"{s.over_random:.1f}", f"{s.split:.3f}", f"{s.over_split:.1f}", f"{s.kl_native:.4f}",
                      f"{s.kl_mapped:.4f}", f"{s.kl_random:.4f}", f"{s.kl_split:.4f}", "yes" if s.works else "no",
                      "yes" if s.works_in_distribution else "no")
    out.print(table)
    calibrated = judgement.strength_range()
    span = f"{calibrated[0]:+.2f} … {calibrated[1]:+.2f}" if calibrated else "none"
    out.print(f"mapped effect {judgement.mean_fraction():.0%} of native (+ {judgement.mean_fraction(True):.0%}, "
              f"− {judgement.mean_fraction(False):.0%}) · {judgement.over_random:.1f}× the random control · damage "
              f"{judgement.damage_ratio:.2f}× native (random {judgement.random_damage_ratio:.1f}×) · "
              f"{'works' if judgement.works else 'does not work'} (needs ≥ 3× random)", highlight=False)
    out.print(f"in distribution: {judgement.over_split:.1f}× the {judgement.split_kind}-split control (B's own vector "
              f"{judgement.native_over_split:.1f}×; against isotropic {judgement.native_over_random:.1f}×) · "
              f"its damage {judgement.split_damage_ratio:.2f}× native · "
              f"{'works' if judgement.works_in_distribution else 'does not work'} in distribution (needs ≥ 3× split)",
              highlight=False)
    out.print(f"no steer: target score {judgement.baseline_score:+.3f}, neutral perplexity "
              f"{judgement.baseline_perplexity:.2f} · calibrated strengths on the stored vector: {span}",
              highlight=False)
    if saved:
        out.print(f"saved as direction part [bold]{saved}[/] on {name_b} at {judgement.address_b}")
