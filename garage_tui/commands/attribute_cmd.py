"""``garage attribute``: AtP / EAP / EAP-IG over every head, block, position and edge, re-checked exactly."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json, progress_bar

METHODS = ("atp", "eap", "eap-ig")  # mirrors engine.attribution.METHODS without importing torch


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "attribute", help="attribution patching: which heads, blocks and positions matter, re-checked exactly")
    add_model_options(parser)
    parser.add_argument("--task", metavar="NAME", help="bundled prompt pairs: capitals, antonyms, ioi, sentiment")
    parser.add_argument("--pairs", type=int, metavar="N", help="use only the task's first N pairs")
    parser.add_argument("--clean", metavar="TEXT", help="one pair: the clean prompt")
    parser.add_argument("--corrupt", metavar="TEXT", help="one pair: the corrupted prompt (same token length)")
    parser.add_argument("--answer", metavar="TOKEN", help="one pair: the clean answer, a single token (' Paris')")
    parser.add_argument("--wrong", metavar="TOKEN", help="one pair: the corrupted answer, a single token (' Rome')")
    parser.add_argument("--method", default="atp", choices=METHODS)
    parser.add_argument("--ig-steps", type=int, default=5, metavar="K", help="eap-ig: interpolation steps")
    parser.add_argument("--top", type=int, default=20, metavar="K",
                        help="nodes re-checked by exact patching (0: none) and rows shown")
    parser.add_argument("--check-heads", action="store_true",
                        help="also patch every head exactly: ρ and top-10 recall over all heads")
    parser.add_argument("--out", metavar="FILE.safetensors", help="save the scores as a snapshot (garage diff)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def pairs_from_args(args: argparse.Namespace):
    """The prompt pairs the options name: a bundled task or one explicit pair, not both."""
    from engine.attribution import PromptPair, load_task
    from engine.errors import GarageError

    single = (args.clean, args.corrupt, args.answer, args.wrong)
    if args.task and any(single):
        raise GarageError("give --task or --clean/--corrupt/--answer/--wrong, not both")
    if args.task:
        return load_task(args.task, args.pairs)
    if not all(single):
        raise GarageError("give --task NAME, or all four of --clean, --corrupt, --answer and --wrong")
    return [PromptPair(args.clean, args.corrupt, args.answer, args.wrong)]


def run(args: argparse.Namespace) -> int:
    pairs = pairs_from_args(args)
    loaded = open_from_args(args)  # draws its own bar for a first GGUF conversion
    from engine.attribution import attribute, to_snapshot
    from engine.snapshots import save_snapshot

    # the bar goes to stderr, on a terminal only, never with --json: stdout stays the report
    with progress_bar(args, "attributing") as progress:
        report = attribute(loaded, pairs, method=args.method, ig_steps=args.ig_steps, top=args.top,
                           check_heads=args.check_heads, task=args.task, progress=progress)
    if args.out:
        save_snapshot(args.out, to_snapshot(report))
    if args.json:
        print_json(report.to_dict(top=max(args.top, 1)))
        return 0
    _print(report, max(args.top, 10), args.out)
    return 0


def _print(report, rows: int, out: str | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    screen = console()
    screen.print(f"[bold]{escape(report.model)}[/] {report.method}"
                 + (f" (K={report.ig_steps})" if report.method == "eap-ig" else "")
                 + f" over {report.n_pairs} pair(s), {report.seconds:.2f}s; metric clean {report.clean_metric:.3f}, "
                 f"corrupted {report.corrupt_metric:.3f}", highlight=False)
    screen.print(f"convention: {escape(report.convention)}", highlight=False)
    table = Table(title="top nodes by |score|")
    for column in ("#", "node", "score", "exact", "|error|"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for rank, entry in enumerate(report.top_nodes(rows), start=1):
        exact = "" if entry.exact is None else f"{entry.exact:.4f}"
        error = "" if entry.exact is None else f"{abs(entry.exact - entry.score):.4f}"
        table.add_row(str(rank), entry.address, f"{entry.score:.4f}", exact, error)
    screen.print(table)
    for check in (report.recheck, report.head_check):
        if check is not None:
            recall = "" if check.recall is None else f", top-{check.k} recall {check.recall:.2f}"
            screen.print(f"exact re-check over {check.scope}: Spearman ρ {check.spearman:.3f}{recall}, "
                         f"mean |error| {check.mean_abs_error:.4f}", highlight=False)
    if report.faithfulness is not None:
        faith = report.faithfulness
        shown = ", ".join(f"{n}: {value:.2f}" for n, value in zip(faith.sizes, faith.recovered, strict=True))
        screen.print(f"circuit faithfulness (top-n {faith.scope} alone, the rest corrupted): {shown}",
                     highlight=False)
    edges = report.top_edges(rows)
    if report.method != "atp" and report.edges is None:
        screen.print("edges: not available for this model's layout (its blocks' outputs pass through a norm)")
    if edges:
        table = Table(title="top edges by |score|")
        for column in ("source", "target", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for edge in edges:
            table.add_row(edge.source, edge.target, f"{edge.score:.4f}")
        screen.print(table)
    if out:
        screen.print(f"saved {out} (compare two with garage diff)", highlight=False)
