"""The transfer bench on the real cross-family pair, SmolLM2-135M → Gemma-3-270M, and on two
same-tokenizer pairs (SmolLM2 → its widened oracle, SmolLM2 → a frankenmerge of itself).

Cross-family (different family, width and tokenizer; positions paired where both tokenizers end
a token at the same character offset): one pass over Python's ``pydoc_data.topics`` text fits a
ridge stitch for every SmolLM2 layer × Gemma layer asked for, then prints held-out R² (and a
random map's, as the floor) and mean cosine. For the layer pairs judged (``--pairs``), the
sentiment DiffMean vector of SmolLM2 is moved through the stitch and judged on Gemma against
Gemma's own DiffMean vector of the same norm (``engine.transfer.judge``): effect as % of native
per sign, the two random controls — isotropic Gaussian vectors and the split DiffMean (the same
recipe between two seeded halves of the task's own prompts, in distribution; ``--split stratified``,
the default, gives each half half of each class, ``--split random`` shuffles the pooled prompts) — and
damage (KL on neutral text) relative to native for each. ``nat×r`` / ``nat×s`` are Gemma's own
vector against each control: the ceiling any map can reach in ``×rand`` / ``×split``.

Same tokenizer: ridge stitches at a few seams, with the fraction of loss recovered when B runs
from A's mapped residual (0 = B's seam mean-ablated, 1 = B clean).

    .venv/bin/python bench/bench_transfer.py [--pairs 14:8,15:9,10:6,20:12] [--max-chars 70000]
        [--task sentiment] [--split stratified|random] [--skip-cross] [--skip-same] [--json results.json]

Issue 15's reference probe (ridge, SmolLM2 layer 15 → Gemma layer 9, ~10k pairs, sentiment): held-out
R² 0.71 (random map −0.28), 86% of native on average over α = ±1, ±2 (+ ~100%, − ~55%), 4.1× the
random control, damage 1.14× native (random 7.2×). Its layer numbers are transformers'
``hidden_states`` indices (0 is the embedding), i.e. the garage's L14.out → L8.out here.

Sink rows (a row over ``SINK_RATIO`` × the chunk's median norm on either side) are left out of the
fit and of R², as in ``garage stitch``; R² with them kept is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.loading import open_model  # noqa: E402
from engine.transfer.judge import SPLITS, judge_transfer  # noqa: E402
from engine.transfer.pairs import pairing_for, sink_rows, stitch_text  # noqa: E402
from engine.transfer.prompts import load_task, neutral_text  # noqa: E402
from engine.transfer.stitch import Moments, Stitch, accumulate, fit_ridge  # noqa: E402
from engine.transfer.sweep import chunk_pairs  # noqa: E402  # one pass captures every swept layer


def log(message: str) -> None:
    print(message, flush=True)


def fit_grid(loaded_a, loaded_b, layers_a: list[int], layers_b: list[int], text) -> dict[str, Any]:
    """Ridge stitches for every layer pair from one streamed pass, scored on held-out chunks.

    Sink rows are left out of the fit and of R² (as ``garage stitch`` does); R² with them kept is
    scored too, to show what a handful of massive-activation rows do to it.
    """
    pairing = pairing_for(loaded_a.tokenizer, loaded_b.tokenizer, text.train[0])
    moments: dict[tuple[int, int], Moments] = {}
    sinks = dict.fromkeys(((i, j) for i in layers_a for j in layers_b), 0)
    started = time.perf_counter()
    for batches in chunk_pairs(loaded_a, loaded_b, layers_a, layers_b, text.train, pairing, stage="fit"):
        for key, batch in batches.items():
            sinks[key] += batch.sinks
            if batch.x.shape[0]:
                step = accumulate([batch], minimum=1)
                if key in moments:
                    moments[key].add(step)
                else:
                    moments[key] = step
    pairs = {key: m.count for key, m in moments.items()}
    log(f"  fitted {len(moments)} ridge stitches on {min(pairs.values())}–{max(pairs.values())} aligned pairs "
        f"({pairing.rule}; {min(sinks.values())}–{max(sinks.values())} sink rows left out) "
        f"in {time.perf_counter() - started:.0f}s")
    stitches = {key: fit_ridge(m) for key, m in moments.items()}
    # the floor: a random map with the ridge map's Frobenius norm and the means matched
    generator = torch.Generator().manual_seed(0)
    randoms = {}
    for key, stitch in stitches.items():
        assert stitch.weight is not None
        noise = torch.randn(stitch.weight.shape, generator=generator)
        weight = noise * (stitch.weight.norm() / noise.norm())
        bias = (moments[key].mean_y - moments[key].mean_x @ weight.double()).float()
        randoms[key] = Stitch("ridge", stitch.width_a, stitch.width_b, weight, bias)
    # per pair and per kept/all rows: count, SSE, cosine sum, Σy, Σy², random-map SSE
    sums = {(key, part): [0, 0.0, 0.0, torch.zeros(s.width_b, dtype=torch.float64), 0.0, 0.0]
            for key, s in stitches.items() for part in ("kept", "all")}
    for batches in chunk_pairs(loaded_a, loaded_b, layers_a, layers_b, text.held_out, pairing, stage="score",
                               keep_sinks=True):
        for key, stitch in stitches.items():
            batch = batches[key]
            kept = ~(sink_rows(batch.x) | sink_rows(batch.y))
            for part, rows in (("kept", kept), ("all", torch.ones_like(kept))):
                x, true = batch.x[rows], batch.y[rows].double()
                mapped = stitch.apply(x).double()
                entry = sums[(key, part)]
                entry[0] += true.shape[0]
                entry[1] += float(((mapped - true) ** 2).sum())
                entry[2] += float(torch.nn.functional.cosine_similarity(mapped, true, dim=-1).sum())
                entry[3] += true.sum(0)
                entry[4] += float((true ** 2).sum())
                entry[5] += float(((randoms[key].apply(x).double() - true) ** 2).sum())
    grid: dict[tuple[int, int], dict[str, Any]] = {}
    for (key, part), (count, sse, cosine_sum, sum_y, sum_yy, sse_random) in sums.items():
        sst = sum_yy - float((sum_y ** 2).sum()) / count
        if part == "kept":
            grid.setdefault(key, {}).update({
                "r2": 1 - sse / sst, "cosine": cosine_sum / count, "r2_random_map": 1 - sse_random / sst,
                "train_pairs": moments[key].count, "train_sinks": sinks[key], "held_out_pairs": count})
        else:
            grid.setdefault(key, {}).update({"r2_with_sinks": 1 - sse / sst, "held_out_all": count})
    for value in grid.values():
        value["held_out_sinks"] = value.pop("held_out_all") - value["held_out_pairs"]
    return {"stitches": stitches, "grid": grid, "alignment": pairing.rule}


def cross_family(args) -> dict[str, Any]:
    pairs = [tuple(int(x) for x in item.split(":")) for item in args.pairs.split(",")]
    layers_a = sorted({a for a, _ in pairs} | set(args.grid_a))
    layers_b = sorted({b for _, b in pairs} | set(args.grid_b))
    opened = time.perf_counter()
    smol, gemma = open_model("smollm2-135m"), open_model("gemma3-270m")
    log(f"  opened SmolLM2 and Gemma-3-270M in {time.perf_counter() - opened:.0f}s")
    text = stitch_text(("pydoc",), max_chars=args.max_chars)
    fitted = fit_grid(smol, gemma, layers_a, layers_b, text)
    grid = fitted["grid"]
    log("\nheld-out R² of a ridge stitch, sink rows left out (kept: second; random map: third), "
        "rows SmolLM2 layer, columns Gemma layer")
    log("        " + "".join(f"{f'G L{b}':>22}" for b in layers_b))
    for a in layers_a:
        log(f"S L{a:<4}" + "".join(f"{grid[(a, b)]['r2']:>8.3f} {grid[(a, b)]['r2_with_sinks']:>6.3f} "
                                   f"{grid[(a, b)]['r2_random_map']:>6.2f}" for b in layers_b))
    task = load_task(args.task)
    neutral = neutral_text(args.neutral_chunks, 400)
    judged = []
    log(f"\ntask {task.name}: {len(task.positive)} DiffMean pairs, {len(task.held_out)} held-out prompts, "
        f"α = ±1, ±2 × ‖v_Gemma‖, {len(neutral)} neutral chunks, 3 random seeds (isotropic and {args.split} split)")
    header = (f"{'pair':<11}{'R²':>7}{'cos':>7}{'cos v':>7}{'‖Wv‖/‖v_B‖':>11}{'mean %':>8}{'+ %':>7}{'− %':>7}"
              f"{'native':>8}{'mapped':>8}{'random':>8}{'split':>8}{'×rand':>7}{'×split':>7}{'nat×r':>7}"
              f"{'nat×s':>7}{'dmg':>6}{'rdmg':>6}{'sdmg':>6}  works  in-dist  range")
    log(header)
    for a, b in pairs:
        started = time.perf_counter()
        stitch = fitted["stitches"][(a, b)]
        try:
            judgement = judge_transfer(smol, gemma, f"L{a}.out", f"L{b}.out", stitch, task, neutral=neutral,
                                       split=args.split)
        except Exception as exc:  # one failed pair must not cost the rest of a long run
            log(f"L{a}→L{b}: judging failed: {exc!r}")
            continue
        row = judgement.to_dict()
        native = sum(abs(s.native) for s in judgement.strengths) / len(judgement.strengths)
        mapped = sum(abs(s.mapped) for s in judgement.strengths) / len(judgement.strengths)
        random = sum(s.random for s in judgement.strengths) / len(judgement.strengths)
        split = sum(s.split for s in judgement.strengths) / len(judgement.strengths)
        calibrated = judgement.strength_range()
        span = f"{calibrated[0]:+.2f}…{calibrated[1]:+.2f}" if calibrated else "—"
        log(f"{f'L{a}→L{b}':<11}{grid[(a, b)]['r2']:>7.3f}{grid[(a, b)]['cosine']:>7.3f}{judgement.cosine:>7.3f}"
            f"{judgement.norm_mapped / judgement.norm_native:>11.2f}{judgement.mean_fraction():>8.0%}"
            f"{judgement.mean_fraction(True):>7.0%}{judgement.mean_fraction(False):>7.0%}{native:>8.3f}"
            f"{mapped:>8.3f}{random:>8.3f}{split:>8.3f}{judgement.over_random:>7.1f}{judgement.over_split:>7.1f}"
            f"{judgement.native_over_random:>7.1f}{judgement.native_over_split:>7.1f}{judgement.damage_ratio:>6.2f}"
            f"{judgement.random_damage_ratio:>6.1f}{judgement.split_damage_ratio:>6.2f}"
            f"  {'yes' if judgement.works else 'no ':<5}  {'yes' if judgement.works_in_distribution else 'no ':<7}"
            f"{span}   ({time.perf_counter() - started:.0f}s)")
        log(f"    {judgement.split_kind} splits (seed: positives in the first half of "
            f"{len(judgement.splits[0].first)}, cos with native): "
            + ", ".join(f"{c.seed}: {c.positives_in_first} {c.cosine_native:+.2f}" for c in judgement.splits))
        for s in judgement.strengths:
            log(f"    α {s.alpha:+.0f}: native {s.native:+.3f} · mapped {s.mapped:+.3f} ({s.fraction:.0%}) · "
                f"random |{s.random:.3f}| ({s.over_random:.1f}×; signed "
                f"{' '.join(f'{e:+.2f}' for e in s.random_effects)}) · split |{s.split:.3f}| ({s.over_split:.1f}×; "
                f"signed {' '.join(f'{e:+.2f}' for e in s.split_effects)}) · "
                f"KL native {s.kl_native:.4f} mapped {s.kl_mapped:.4f} random {s.kl_random:.4f} split "
                f"{s.kl_split:.4f} · works {s.works} / in-dist {s.works_in_distribution}")
        judged.append({"layer_a": a, "layer_b": b, **grid[(a, b)], "judgement": row})
    return {"alignment": fitted["alignment"], "text_digest": text.digest, "max_chars": args.max_chars,
            "grid": [{"layer_a": a, "layer_b": b, **value} for (a, b), value in grid.items()], "judged": judged}


def same_tokenizer(args) -> dict[str, Any]:
    from engine.build import load_recipe
    from engine.build.preview import preview
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.widen import widened_loaded

    smol = open_model("smollm2-135m")
    text = stitch_text(("sample", "pydoc"), max_chars=args.same_chars)
    wide, _ = widened_loaded(smol, 960, seed=0)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-frankenmerge.yaml"
    franken = preview(load_recipe(recipe), models={"smol": smol})
    # frankenmerge layout: L0-15 are SmolLM2's, L16-23 repeat L8-15, L24-37 are SmolLM2's L16-29
    seams = [(wide, "oracle (widened 960)", 15, 15), (franken, "frankenmerge", 10, 10),
             (franken, "frankenmerge", 15, 15), (franken, "frankenmerge", 15, 23), (franken, "frankenmerge", 20, 28)]
    log(f"\nsame tokenizer: ridge stitch, loss on {args.loss_chunks} held-out chunks "
        "(recovered: 0 = B's seam mean-ablated, 1 = B clean)")
    log(f"{'B':<22}{'seam':<12}{'R²':>8}{'loss A':>8}{'B clean':>8}{'B mean':>8}{'stitched':>9}{'recovered':>10}")
    rows = []
    for model_b, label, a, b in seams:
        report = fit_stitch(smol, model_b, f"L{a}.out", f"L{b}.out", text, loss_chunks=args.loss_chunks)
        loss = report.loss
        assert loss is not None
        log(f"{label:<22}{f'L{a}→L{b}':<12}{report.held_out.r2:>8.4f}{loss.loss_a:>8.3f}{loss.loss_b_clean:>8.3f}"
            f"{loss.loss_b_mean:>8.3f}{loss.loss_stitched:>9.3f}{loss.recovered_vs_mean:>10.1%}")
        rows.append({"b": label, "layer_a": a, "layer_b": b, "r2": report.held_out.r2,
                     "loss_a": loss.loss_a, "loss_b_clean": loss.loss_b_clean, "loss_b_mean": loss.loss_b_mean,
                     "loss_stitched": loss.loss_stitched, "recovered_vs_mean": loss.recovered_vs_mean,
                     "recovered_vs_zero": loss.recovered_vs_zero})
    return {"seams": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="14:8,15:9,10:6,20:12", help="SmolLM2:Gemma layer pairs to judge")
    parser.add_argument("--grid-a", type=int, nargs="*", default=[10, 14, 15, 20], help="SmolLM2 layers (R² grid)")
    parser.add_argument("--grid-b", type=int, nargs="*", default=[6, 8, 9, 12], help="Gemma layers (R² grid)")
    parser.add_argument("--max-chars", type=int, default=70_000, help="pydoc text (~10k aligned training pairs)")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--split", choices=SPLITS, default=SPLITS[0],
                        help="how the split control cuts the task's prompts (default: %(default)s)")
    parser.add_argument("--neutral-chunks", type=int, default=2)
    parser.add_argument("--same-chars", type=int, default=20_000)
    parser.add_argument("--loss-chunks", type=int, default=4)
    parser.add_argument("--skip-cross", action="store_true")
    parser.add_argument("--skip-same", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    if not args.skip_cross:
        results["cross_family"] = cross_family(args)
        if args.json:  # written now too: the same-tokenizer part may be cut short
            args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if not args.skip_same:
        results["same_tokenizer"] = same_tokenizer(args)
    log(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=lambda v: None if isinstance(v, float)
                                        and not math.isfinite(v) else str(v)) + "\n")


if __name__ == "__main__":
    main()
