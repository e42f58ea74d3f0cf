"""``garage search``: a resumable recipe search on the in-process, local-pool or Ray backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from garage_tui.commands.common import console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="search a recipe's knobs (layers to drop, blend weights, head "
                                                  "transplants) with Optuna or CMA-ES; resumable")
    parser.add_argument("spec", help="search spec (.yaml): base recipe, parameters, objectives, budget, seed")
    parser.add_argument("--journal", required=True, metavar="FILE",
                        help="JSONL journal; rerun with the same file to resume where a run stopped")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N",
                       help="local worker processes (default 1: in-process)")
    where.add_argument("--ray", metavar="ADDRESS",
                       help="run trials on Ray actors: auto, local, or a cluster address (pip install "
                            "'model-garage[ray]')")
    parser.add_argument("--ray-workers", type=int, default=2, metavar="N", help="Ray actors to start (default 2)")
    parser.add_argument("--out", metavar="FILE", help="best recipe file (default: JOURNAL.best.yaml beside it)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.jobs import make_backend
    from engine.search import load_search_spec, run_search

    spec = load_search_spec(Path(args.spec))
    out = None if args.json else console()

    def show(result, replayed: bool) -> None:
        if out is not None:
            values = ", ".join(f"{o} {v:.4f}" for o, v in zip(spec.objectives, result.values, strict=True))
            out.print(f"trial {result.number:>3}  {values}  layers {result.layers}"
                      f"{'  (from journal)' if replayed else ''}", highlight=False)

    workers = args.ray_workers if args.ray else args.workers
    with make_backend(workers=workers, ray=args.ray) as backend:
        report = run_search(spec, Path(args.journal), backend, on_trial=show,
                            best_recipe_path=Path(args.out) if args.out else None)
    if args.json:
        print_json(report.to_dict())
        return 0
    assert out is not None and report.best is not None
    best = report.best
    values = ", ".join(f"{o} {v:.4f}" for o, v in zip(report.objectives, best.values, strict=True))
    out.print(f"{len(report.trials)} trials ({report.evaluated} evaluated now, "
              f"{len(report.trials) - report.evaluated} from the journal) on {report.backend} × {report.workers}",
              highlight=False)
    out.print(f"best: trial {best.number}: {values}, {best.layers} layers → {report.best_recipe}", highlight=False)
    if len(report.objectives) > 1:
        out.print(f"Pareto front: trials {', '.join(map(str, report.pareto))}", highlight=False)
    return 0
