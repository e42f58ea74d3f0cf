"""``garage plan``: will a model fit, and where would each layer go — before any weight is read."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import add_model_options, console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="memory a model needs per device (weights, KV cache, captures) from config.json alone")
    add_model_options(parser)
    parser.add_argument("--max-memory", default=None, metavar="BUDGET",
                        help="per-device budget for --device auto, e.g. 0=20GiB,1=20GiB,cpu=30GiB "
                             "(what does not fit goes to disk)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per batch (default: %(default)s)")
    parser.add_argument("--at", action="append", default=[], metavar="ADDR",
                        help="a capture point you will capture (repeatable)")
    parser.add_argument("--capture-all", action="store_true",
                        help="count a capture of every in/out/z/hidden point of every part")
    parser.add_argument("--stats", action="append", default=[], metavar="ADDR",
                        help="a point you will stream statistics of (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.fit_plan import parse_max_memory, plan_fit

    plan = plan_fit(args.model, device=args.device, dtype=args.dtype, max_memory=parse_max_memory(args.max_memory),
                    seq=args.seq, batch=args.batch, captures=args.at, capture_all=args.capture_all,
                    stats=args.stats)
    if args.json:
        print_json(plan.to_dict())
        return 0
    from garage_tui.render_plan import plan_table

    out = console()
    out.print(plan_table(plan))
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {note}")
    return 0
