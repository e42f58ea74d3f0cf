"""``garage diff``: compare two snapshots address by address."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("diff", help="compare two snapshots: max abs diff, relative L2, cosine")
    parser.add_argument("a", metavar="A.safetensors")
    parser.add_argument("b", metavar="B.safetensors")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.snapshots import diff_snapshots, load_snapshot

    report = diff_snapshots(load_snapshot(args.a), load_snapshot(args.b))
    if args.json:
        print_json(report.to_dict())
        return 0
    from rich.table import Table

    table = Table(title=f"{report.model}: {args.a} → {args.b}")
    for column in ("address", "max |Δ|", "rel L2", "cosine"):
        table.add_column(column, justify="left" if column == "address" else "right")
    for entry in report.entries:
        style = "bold" if entry.max_abs > 0 else "dim"
        table.add_row(entry.address, f"{entry.max_abs:.3g}", f"{entry.relative_l2:.3g}", f"{entry.cosine:.6f}",
                      style=style)
    console().print(table)
    for side, names in (("A", report.only_in_a), ("B", report.only_in_b)):
        if names:
            console().print(f"only in {side}: {', '.join(names)}")
    return 0
