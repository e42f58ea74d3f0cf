"""``garage sae``: import/export SAELens and sparsify coders, train a TopK SAE, list a prompt's top
features, read one feature (top tokens, histogram, logit effect) and fold feature scales into a
new coder part."""

from __future__ import annotations

import argparse
import signal
import threading

from garage_tui.commands.common import add_model_options, console, open_from_args, print_json, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser("sae", help="sparse autoencoders and transcoders: import, export, train, read")
    verbs = parser.add_subparsers(dest="sae_verb", metavar="VERB", required=True)

    imp = verbs.add_parser("import", help="import a SAELens or sparsify folder into the parts bin")
    imp.add_argument("path", help="folder with cfg.json + sae_weights.safetensors (SAELens) or sae.safetensors")
    add_model_options(imp)
    imp.add_argument("--at", help="address it reads (default: from its hook name)")
    imp.add_argument("--out", dest="address_out", help="transcoders: address it writes")
    imp.add_argument("--name", help="part name")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(handler=run_import)

    exp = verbs.add_parser("export", help="write a coder part as a SAELens folder")
    exp.add_argument("part", help="part name in the bin")
    exp.add_argument("folder", help="output folder")
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(handler=run_export)

    train = verbs.add_parser("train", help="train a TopK SAE on streamed activations over local text")
    add_model_options(train)
    train.add_argument("--at", required=True, help="capture point, e.g. L15.out")
    train.add_argument("--expansion", type=int, default=8, help="features per input dimension (default 8)")
    train.add_argument("--k", type=int, default=32, help="active features per token (default 32)")
    train.add_argument("--source", action="append", metavar="SRC",
                       help="sample, pydoc or a text file (repeatable; default pydoc and sample)")
    train.add_argument("--tokens", type=int, default=None,
                       help="training tokens over all epochs (default 200000 for one pass, no cap with "
                            "--epochs or --budget-cpu-seconds)")
    train.add_argument("--epochs", type=int, default=1,
                       help="passes over the text; later ones reuse the first pass's activations (default 1)")
    train.add_argument("--budget-cpu-seconds", type=float, default=None,
                       help="stop after this much process CPU time, then evaluate (2 cores x 30 min = 3600)")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--checkpoint", help="folder for checkpoints (needed to --resume)")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    train.add_argument("--cache", help="folder for activation shards (safetensors), reused by later runs")
    train.add_argument("--name", help="save the SAE in the parts bin under this name")
    train.add_argument("--json", action="store_true")
    train.set_defaults(handler=run_train)

    feats = verbs.add_parser("features", help="the coder's most active features on a prompt")
    add_model_options(feats)
    feats.add_argument("part", help="coder part name")
    feats.add_argument("--prompt", required=True)
    feats.add_argument("--top", type=int, default=10)
    feats.add_argument("--json", action="store_true")
    feats.set_defaults(handler=run_features)

    fold = verbs.add_parser("fold", help="fold feature scales into a coder's decoder rows, saved as a new part")
    fold.add_argument("part", help="coder part name (the parent; never changed)")
    fold.add_argument("--feature", type=int, action="append", required=True, metavar="N",
                      help="feature to scale (repeatable)")
    fold.add_argument("--scale", type=float, action="append", required=True, metavar="FACTOR",
                      help="its factor (0 = ablate): one for all features or one per --feature")
    fold.add_argument("--name", help="name of the new part (default PART-fold)")
    fold.add_argument("--json", action="store_true")
    fold.set_defaults(handler=run_fold)

    read = verbs.add_parser("read", help="one feature: top tokens with context, histogram, logit effect")
    add_model_options(read)
    read.add_argument("part", help="coder part name")
    read.add_argument("feature", type=int)
    read.add_argument("--prompt", help="also show where it fires on this prompt")
    read.add_argument("--source", action="append", metavar="SRC", help="sample, pydoc or a file (default sample)")
    read.add_argument("--tokens", type=int, default=4096, help="tokens of text to read (default 4096)")
    read.add_argument("--json", action="store_true")
    read.set_defaults(handler=run_read)


def run_import(args: argparse.Namespace) -> int:
    from engine.features.formats import read_coder
    from engine.features.hooks_map import address_for_hook
    from engine.features.parts import save_coder
    from engine.parts import PartsBin

    imported = read_coder(args.path)  # before the model opens: a bad folder fails fast
    loaded = open_from_args(args)
    config = imported.coder.config
    address = address_for_hook(loaded, config.hook_name, args.at)
    address_out = None
    if config.is_transcoder:
        address_out = address_for_hook(loaded, config.hook_name_out, args.address_out)
    record = save_coder(PartsBin(), loaded, imported.coder, address, address_out=address_out, name=args.name,
                        origin=f"import-{config.source_format}", notes=f"imported from {imported.path}")
    if args.json:
        print_json(record.to_dict())
    else:
        console().print(f"imported {imported.coder.describe()} as part [bold]{record.name}[/] at {record.address}"
                        + (f" → {address_out}" if address_out else ""), highlight=False)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from engine.features.formats import export_saelens
    from engine.features.parts import load_coder
    from engine.parts import PartsBin

    part = load_coder(PartsBin(), args.part)
    folder = export_saelens(part.coder, args.folder)
    if args.json:
        print_json({"part": args.part, "folder": str(folder), "format": "saelens"})
    else:
        console().print(f"wrote {args.part} as a SAELens folder: {folder}", highlight=False)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from engine.features.parts import save_coder
    from engine.features.train import TrainConfig, train_sae
    from engine.parts import PartsBin

    config = TrainConfig(address=args.at, expansion=args.expansion, k=args.k,
                         sources=args.source or ["pydoc", "sample"], lr=args.lr, epochs=args.epochs,
                         budget_cpu_seconds=args.budget_cpu_seconds,
                         max_tokens=args.tokens if args.tokens is not None or args.epochs > 1
                         or args.budget_cpu_seconds is not None else 200_000)
    cancel = threading.Event()
    # Ctrl-C asks the trainer to stop at the next step (saving a checkpoint) instead of killing it mid-write
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        with progress_bar(args, f"opening {args.model}") as progress:
            loaded = open_from_args(args, progress=progress)
            report = train_sae(loaded, config, checkpoint_dir=args.checkpoint, resume=args.resume,
                               cache_dir=args.cache, progress=progress, cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    document = report.to_dict()
    if args.name:
        record = save_coder(PartsBin(), loaded, report.coder, args.at, name=args.name, origin="trained",
                            metrics=report.metrics.to_dict(), notes=f"trained on {', '.join(config.sources)}")
        document["part"] = record.name
    if args.json:
        print_json(document)
        return 0
    m = report.metrics
    out = console()
    out.print(f"trained {report.coder.describe()} at {args.at}: {report.steps} steps, {report.tokens} tokens in "
              f"{report.seconds:.0f}s ({report.tokens_per_s:.0f} tokens/s), {report.epochs:.2f} epochs, "
              f"stopped by {report.stopped}", highlight=False)
    out.print(f"explained variance {m.explained_variance:.3f} · L0 {m.l0:.1f} · dead {m.dead_share:.1%} · "
              f"MSE {m.mse:.4g} · cosine {m.cosine:.3f} · ce_loss_score {m.ce_loss_score:.3f}", highlight=False)
    if args.name:
        out.print(f"saved as part [bold]{args.name}[/]")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from engine.features.parts import load_coder
    from engine.features.reading import top_features
    from engine.parts import PartsBin

    loaded = open_from_args(args)
    part = load_coder(PartsBin(), args.part, loaded)
    found = top_features(loaded, part.coder, part.address, args.prompt, args.top)
    if args.json:
        print_json({"part": args.part, "address": part.address, "prompt": args.prompt,
                    "features": [f.__dict__ for f in found]})
        return 0
    out = console()
    out.print(f"{args.part} at {part.address}: top features on the prompt", highlight=False)
    for item in found:
        out.print(f"  #{item.feature:<6} {item.activation:9.3f}  at {item.token!r}", highlight=False)
    return 0


def run_fold(args: argparse.Namespace) -> int:
    from engine.features.errors import FeatureError
    from engine.features.fold import fold_part
    from engine.parts import PartsBin

    features, factors = args.feature, args.scale
    if len(factors) == 1:
        factors = factors * len(features)
    if len(factors) != len(features):
        raise FeatureError(f"{len(features)} --feature but {len(factors)} --scale; give one factor for all "
                           "features or one per feature")
    if len(set(features)) != len(features):
        raise FeatureError("a feature is given twice; fold each feature once with its final factor")
    result = fold_part(PartsBin(), args.part, dict(zip(features, factors, strict=True)), name=args.name)
    if args.json:
        print_json(result.to_dict())
        return 0
    folded = ", ".join(f"#{f}×{factor:g}" for f, factor in zip(result.features, result.factors, strict=True))
    out = console()
    out.print(f"folded {folded} into {result.parent}'s decoder rows as part [bold]{result.name}[/] at "
              f"{result.address}", highlight=False)
    out.print(f"note: {result.exact_splice}", highlight=False)
    return 0


def run_read(args: argparse.Namespace) -> int:
    from engine.features.corpus import read_texts
    from engine.features.parts import load_coder
    from engine.features.reading import read_feature
    from engine.parts import PartsBin

    texts = read_texts(args.source or ["sample"])
    loaded = open_from_args(args)
    part = load_coder(PartsBin(), args.part, loaded)
    report = read_feature(loaded, part.coder, part.address, args.feature, texts, prompt=args.prompt,
                          max_tokens=args.tokens)
    if args.json:
        print_json(report.to_dict())
        return 0
    out = console()
    out.print(f"feature {args.feature} of {args.part} at {part.address}: fires on {report.firing_rate:.2%} of "
              f"{report.tokens_read} tokens, max {report.stats.max:.3f}", highlight=False)
    for hit in report.prompt_hits + report.hits:
        out.print(f"  {hit.activation:8.3f} [{hit.source}] …{hit.before}[bold]{hit.token}[/]{hit.after}…",
                  highlight=False)
    if report.promoted:
        out.print("promotes: " + ", ".join(repr(e.token) for e in report.promoted), highlight=False)
        out.print("suppresses: " + ", ".join(repr(e.token) for e in report.suppressed), highlight=False)
    return 0
