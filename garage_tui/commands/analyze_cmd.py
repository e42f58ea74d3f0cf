"""``garage analyze``: run one analyzer on a prompt and print a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from engine.analyzers.registry import ANALYZERS  # torch-free: names only
from garage_tui.commands.common import add_model_options, console, open_from_args, print_json, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze", help="diagnostics: stats, attention, lens, importance, similarity, patching")
    add_model_options(parser)
    parser.add_argument("--prompt", help="prompt to analyze (the clean prompt for patching; "
                                         "importance uses it as its text, default: the bundled sample)")
    parser.add_argument("--what", required=True, metavar="NAME",
                        help="analyzer: " + ", ".join(ANALYZERS.names(plugins=False)) + " (or one from a plugin)")
    parser.add_argument("--at", action="append", metavar="ADDR",
                        help="stats: capture points (default: every layer's output)")
    parser.add_argument("--bins", type=int, default=64, help="stats: histogram bins (even)")
    parser.add_argument("--top-k", type=int, default=5, help="lens: tokens per layer")
    parser.add_argument("--position", type=int, default=-1,
                        help="lens: prompt position to read, from 0 (default -1, the last)")
    parser.add_argument("--corrupt", metavar="TEXT", help="patching: corrupted prompt of the same token length")
    parser.add_argument("--mode", default="zero", choices=("zero", "mean"), help="importance: ablation mode")
    parser.add_argument("--layers", metavar="I,J,...",
                        help="importance: only these layers; patching: patch heads of these layers only")
    parser.add_argument("--ablate", action="append", default=[], metavar="ADDR",
                        help="stats/attention/lens/similarity: zero-ablate a part during the run")
    parser.add_argument("--scale", action="append", default=[], metavar="ADDR=FACTOR")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def _layers(text: str | None) -> list[int] | None:
    from engine.errors import GarageError

    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GarageError(f"--layers wants comma-separated layer numbers (e.g. 0,5,10), got '{text}'") from None


def compute(args: argparse.Namespace, loaded: Any, progress: Any = None) -> Any:
    """The report object for ``args.what``; raises GarageError on bad input."""
    from engine.analyzers.registry import AnalyzeRequest, analyze
    from garage_tui.commands.run_cmd import parse_interventions

    request = AnalyzeRequest(
        prompt=args.prompt, interventions=parse_interventions(args.ablate, args.scale), addresses=args.at,
        bins=args.bins, top_k=args.top_k, position=args.position, corrupt=args.corrupt, mode=args.mode,
        layers=_layers(args.layers), progress=progress)
    return analyze(loaded, args.what, request)


def run(args: argparse.Namespace) -> int:
    with progress_bar(args, f"opening {args.model}") as progress:
        loaded = open_from_args(args, progress=progress)
        report = compute(args, loaded, progress)
    if args.json:
        from engine.serialize import to_json

        print_json({"model": loaded.name, "what": args.what, "report": to_json(report)})
        return 0
    _print_report(console(), args.what, report)
    return 0


def _table(title: str, *columns: str):
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    return table


def _print_report(out: Any, what: str, report: Any) -> None:
    if what == "stats":
        table = _table("streaming statistics", "address", "mean", "std", "rms", "absmax", "token L2",
                       "sparsity", "kurtosis")
        for address, s in report.items():
            table.add_row(address, *(f"{v:.4g}" for v in (s.mean, s.std, s.rms, s.absmax, s.token_l2["mean"],
                                                           s.sparsity, s.kurtosis)))
        out.print(table)
    elif what == "attention":
        table = _table(f"attention heads ({len(report.tokens)} tokens)", "head", "entropy", "prev", "first",
                       "self", "role")
        for head in report.heads:
            table.add_row(head.address, f"{head.entropy:.3f}", *(f"{head.scores[r]:.2f}" for r in
                          ("previous-token", "first-token", "self")), head.role or "")
        out.print(table)
    elif what == "lens":
        table = _table(f"logit lens at position {report.position} · model predicts {report.final_token!r}",
                       "layer", "top tokens", "rank of answer")
        for layer in report.layers:
            table.add_row(layer.address, " ".join(repr(text) for _, text, _ in layer.top), str(layer.final_token_rank))
        out.print(table)
    elif what == "similarity":
        table = _table("layer in/out similarity", "layer", "cosine", "rel change", "barely changes")
        for change in report.layers:
            table.add_row(f"L{change.layer}", f"{change.cosine:.4f}", f"{change.relative_change:.4f}",
                          "yes" if change.flagged else "")
        out.print(table)
    elif what == "importance":
        table = _table(f"{report.mode}-ablation Δ loss (clean {report.clean_loss:.4f}, {report.n_tokens} tokens)",
                       "part", "Δ loss")
        for entry in report.heads[:15] + report.blocks[:10]:
            table.add_row(entry.address, f"{entry.delta:+.4f}")
        out.print(table)
    elif what == "patching":
        out.print(f"answer {report.answer!r} vs {report.wrong!r}: logit diff clean {report.clean_diff:.3f}, "
                  f"corrupt {report.corrupt_diff:.3f}")
        layers = ", ".join(report.layers_with_answer()) or "nowhere"
        out.print(f"the answer appears at the last position from: {layers}")
        table = _table("top heads by restored fraction", "head", "restored")
        for address, value in report.top_heads(10):
            table.add_row(address, f"{value:.3f}")
        out.print(table)
    else:  # an analyzer from a plugin: its JSON, as --json would print it
        from engine.serialize import to_json

        print_json(to_json(report))
