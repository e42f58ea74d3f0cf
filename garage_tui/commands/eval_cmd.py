"""``garage eval``: perplexity, bits per byte, continuations and agreement, side by side."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model or built hybrid next to its sources")
    parser.add_argument("model", help="built folder, bundled name or model path")
    parser.add_argument("--source", action="append", default=[], metavar="MODEL",
                        help="also evaluate MODEL for comparison (default: the sources in DIR/recipe.yaml)")
    parser.add_argument("--no-sources", action="store_true", help="evaluate the model alone")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.build.evaluate import evaluate, recorded_sources

    sources = [] if args.no_sources else (args.source or recorded_sources(args.model))
    with progress_bar(args, "evaluating") as progress:
        report = evaluate(args.model, sources, progress=progress)
    if args.json:
        print_json(report.to_dict())
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"sample text: {report.text_bytes} bytes, window {report.window}, stride {report.stride}")
    table.add_column("")
    for row in report.rows:
        table.add_column(escape(f"{row.name} ({row.role})"))
    table.add_row("perplexity", *(f"{row.perplexity:.3f}" for row in report.rows))
    table.add_row("bits per byte", *(f"{row.bits_per_byte:.4f}" for row in report.rows))
    table.add_row("tokens scored", *(str(row.tokens_scored) for row in report.rows))
    main = report.rows[0]
    if len(report.rows) > 1:
        table.add_row("top-1 agreement with model", "—", *(
            "n/a (tokenizers differ)" if main.agreement.get(row.name) is None else f"{main.agreement[row.name]:.1%}"
            for row in report.rows[1:]))
    for index, item in enumerate(main.continuations):
        table.add_row(escape(repr(item["prompt"])),
                      *(escape(repr(row.continuations[index]["continuation"])) for row in report.rows))
    console().print(table)
    return 0
