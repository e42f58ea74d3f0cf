"""Blade depth sweep with controls: SmolLM2-135M (A) → Gemma-3-270M or SmolLM2 widened to 960 (B).

A blade (``gate · map(h_A)``, affine map, scalar gate) is trained at several depths of B on a
country → capital task (48 countries, every 4th held out), with A and B frozen. For each depth it
prints B's held-out task loss and exact-match accuracy with the blade, with the blade off, and
with the random blade (the trained one with its every output turned by a fixed random rotation:
the same norms, no direction), so the depth is measured instead of fixed at 87.5%.

    .venv/bin/python bench/bench_blade.py [--b gemma3-270m|widened] [--at-a L20] [--depths every:3]
                                          [--steps 40] [--threads 1] [--json FILE]

On a loaded 2-core machine one torch thread is several times faster than two (the default here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.loading import open_model  # noqa: E402
from engine.serialize import to_json  # noqa: E402
from engine.transfer.blade_data import load_blade_task  # noqa: E402
from engine.transfer.blade_train import TrainSettings, sweep_depths  # noqa: E402

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Tokyo",
    "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "China": "Beijing", "Greece": "Athens",
    "Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw", "Hungary": "Budapest", "Ireland": "Dublin",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "India": "New Delhi", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Kenya": "Nairobi",
    "Nigeria": "Abuja", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires", "Colombia": "Bogotá",
    "Mexico": "Mexico City", "Cuba": "Havana", "Australia": "Canberra", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Czechia": "Prague", "Morocco": "Rabat",
    "Ethiopia": "Addis Ababa", "Philippines": "Manila", "Pakistan": "Islamabad",
}


def capitals_file(folder: Path) -> Path:
    path = folder / "capitals48.jsonl"
    lines = [json.dumps({"prompt": f"The capital of {country} is", "answer": f" {capital}"})
             for country, capital in CAPITALS.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", default="smollm2-135m")
    parser.add_argument("--b", default="gemma3-270m", help="a model name, or 'widened' (A widened to 960)")
    parser.add_argument("--at-a", default="L20")
    parser.add_argument("--depths", default="every:3", help="comma list or every:K of B's layers")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--map", default="affine")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the sweep's report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    opened = time.perf_counter()
    loaded_a = open_model(args.a)
    if args.b == "widened":
        from engine.transfer.widen import widened_loaded

        loaded_b, _ = widened_loaded(loaded_a, 960, seed=0)
    else:
        loaded_b = open_model(args.b)
    print(f"  opened {loaded_a.name} and {loaded_b.name} in {time.perf_counter() - opened:.1f}s "
          f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    layers = loaded_b.anatomy.n_layers
    if args.depths.startswith("every:"):
        depths = list(range(0, layers, int(args.depths.removeprefix("every:"))))
    else:
        depths = [int(item) for item in args.depths.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        task = load_blade_task(str(capitals_file(Path(folder))))

    def progress(stage: str, fraction: float | None) -> None:
        if ": step " in stage and int(stage.split(": step ")[1].split("/")[0]) % 10:
            return  # every 10th step is enough to watch the loss
        print(f"  {stage} ({0 if fraction is None else fraction:.0%})", file=sys.stderr, flush=True)

    started = time.perf_counter()
    settings = TrainSettings(steps=args.steps, batch_size=args.batch, lr=args.lr, map_kind=args.map)
    sweep = sweep_depths(loaded_a, loaded_b, args.at_a, depths, task, settings, progress=progress)
    seconds = time.perf_counter() - started
    first = sweep.reports[0]
    print(f"\nblade {loaded_a.name}:{sweep.address_a} → {loaded_b.name} ({layers} layers), task capitals48 "
          f"({first.held_out.blade.examples} held out, {first.train.blade.examples} trained), {first.alignment}, "
          f"{args.map} map, scalar gate, {args.steps} steps × {args.batch}; {seconds:.0f}s, "
          f"load {os.getloadavg()[0]:.1f}")
    header = f"{'layer':>5} {'depth':>6} | {'loss: blade':>11} {'off':>7} {'random':>7} | " \
             f"{'acc: blade':>10} {'off':>5} {'random':>6} | {'train blade':>11} {'off':>6} | {'helps':>5} {'|inj|':>6}"
    print(header)
    print("-" * len(header))
    for report in sweep.reports:
        held, train = report.held_out, report.train
        print(f"{report.layer_b:>5} {report.depth:>6.1%} | {held.blade.loss:>11.3f} {held.off.loss:>7.3f} "
              f"{held.random.loss:>7.3f} | {held.blade.accuracy:>10.0%} {held.off.accuracy:>5.0%} "
              f"{held.random.accuracy:>6.0%} | {train.blade.loss:>11.3f} {train.off.loss:>6.3f} | "
              f"{'yes' if held.helps else 'no':>5} {held.injection_ratio:>6.2f}")
    best = sweep.best
    print(f"best depth: layer {best.layer_b} of {layers} ({best.depth:.1%}); the seed idea's fixed 87.5% is layer "
          f"{round(0.875 * layers)}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(sweep), indent=1))


if __name__ == "__main__":
    main()
