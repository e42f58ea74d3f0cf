"""``garage parts``: list, show, tag, note, rename, remove, verify and fit parts in the bin."""

from __future__ import annotations

import argparse

from garage_tui.commands.common import console, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("parts", help="the parts bin: list, show, tag, note, rename, rm, verify, fits")
    verbs = parser.add_subparsers(dest="parts_verb", metavar="ACTION", required=True)

    listing = verbs.add_parser("list", help="list parts, optionally filtered")
    listing.add_argument("--source", help="source model name or path (substring)")
    listing.add_argument("--kind", help="head, attn, mlp, norm, final_norm, layer, embed, lm_head, proj")
    listing.add_argument("--family", "--arch", dest="family",
                         help="architecture family or model_type (llama, bert, ...)")
    listing.add_argument("--tag")
    listing.add_argument("--shape", help="a tensor shape the part holds, e.g. 576x1536")
    listing.add_argument("--text", help="substring of name, address or notes")
    listing.set_defaults(handler=run_list)

    show = verbs.add_parser("show", help="everything the catalog knows about one part")
    show.add_argument("name")
    show.set_defaults(handler=run_show)

    tag = verbs.add_parser("tag", help="add (or with --remove, drop) tags")
    tag.add_argument("name")
    tag.add_argument("tags", nargs="+", metavar="TAG")
    tag.add_argument("--remove", action="store_true", help="remove the tags instead")
    tag.set_defaults(handler=run_tag)

    note = verbs.add_parser("note", help="set a part's note")
    note.add_argument("name")
    note.add_argument("text")
    note.set_defaults(handler=run_note)

    rename = verbs.add_parser("rename", help="rename a part (and its file)")
    rename.add_argument("old")
    rename.add_argument("new")
    rename.set_defaults(handler=run_rename)

    remove = verbs.add_parser("rm", help="remove a part and its file")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(handler=run_rm)

    verify = verbs.add_parser("verify", help="recompute sha256 of part files; exit 1 if any is missing or altered")
    verify.add_argument("name", nargs="?")
    verify.set_defaults(handler=run_verify)

    fits = verbs.add_parser("fits", help="parts that fit a slot of a model (kind, shapes, head geometry, norm)")
    fits.add_argument("model", help="bundled name, folder, .safetensors/.gguf file (opened structure-only)")
    fits.add_argument("address", help="the slot, e.g. L5.attn or L5.attn.h2")
    fits.set_defaults(handler=run_fits)

    reindex = verbs.add_parser("reindex", help="catalog part files the catalog lacks (after a corrupted catalog)")
    reindex.set_defaults(handler=run_reindex)

    for sub in (listing, show, tag, note, rename, remove, verify, fits, reindex):
        sub.add_argument("--json", action="store_true", help="print JSON")


def _bin():
    from engine.parts import PartsBin

    return PartsBin()


def _table(records, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("name", "kind", "address", "source", "family", "params", "dtype", "tags"):
        table.add_column(column, justify="right" if column == "params" else "left",
                         no_wrap=column in ("name", "address"))
    for record in records:
        table.add_row(record.name, record.kind, record.address, record.source.get("name", ""), record.family or "",
                      f"{record.params:,}", record.dtype, ", ".join(record.tags))
    console().print(table)


def run_list(args: argparse.Namespace) -> int:
    import sys

    bin_ = _bin()
    records = bin_.list(source=args.source, kind=args.kind, family=args.family, tag=args.tag, text=args.text,
                        shape=args.shape, keep_going=True)
    for note in bin_.notes:  # a corrupted catalog: kept aside, listed as empty, said once
        sys.stderr.write(f"garage: note: {note}\n")
    if args.json:
        print_json([record.to_dict() for record in records])
    else:
        _table(records, f"parts bin · {len(records)} part(s)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    record = _bin().get(args.name)
    if args.json:
        print_json(record.to_dict())
        return 0
    out = console()
    source = record.source
    out.print(f"[bold]{record.name}[/] · {record.kind} [bold]{record.address}[/] of {source.get('name')} "
              f"({record.family}/{record.model_type}, config {source.get('config_hash')})")
    out.print(f"  from {source.get('path')} · weights {source.get('weights_path')}")
    out.print(f"  {record.params:,} params · {record.dtype} · {record.size_bytes:,} bytes · sha256 {record.sha256}")
    out.print(f"  created {record.created_at} · tags: {', '.join(record.tags) or '-'} · notes: {record.notes or '-'}")
    out.print(f"  file {record.path}")
    for entry in record.tensors:
        where = entry.source
        if entry.slice:
            dim, start, stop = entry.slice
            where += f" [dim]dim {dim} \\[{start}:{stop}][/]"
        out.print(f"    {entry.name:<40} {'x'.join(map(str, entry.shape)):<14} ← {where}")
    return 0


def run_tag(args: argparse.Namespace) -> int:
    bin_ = _bin()
    record = bin_.get(args.name)
    for tag in args.tags:
        record = bin_.untag(args.name, tag) if args.remove else bin_.tag(args.name, tag)
    if args.json:
        print_json(record.to_dict())
    else:
        console().print(f"{record.name}: tags {', '.join(record.tags) or '-'}")
    return 0


def run_note(args: argparse.Namespace) -> int:
    record = _bin().note(args.name, args.text)
    if args.json:
        print_json(record.to_dict())
    else:
        console().print(f"{record.name}: note set")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    record = _bin().rename(args.old, args.new)
    if args.json:
        print_json(record.to_dict())
    else:
        console().print(f"renamed {args.old} → {record.name}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    bin_ = _bin()
    names = list(dict.fromkeys(args.names))  # a repeated name is removed once
    for name in names:
        record = bin_.get(name)  # every name must exist (and stay inside parts/) before anything is removed
        bin_.file_path(record.file, name)
    removed = [bin_.remove(name) for name in names]
    if args.json:
        print_json([record.name for record in removed])
    else:
        console().print(f"removed {', '.join(record.name for record in removed)} (files deleted)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    results = _bin().verify(args.name)
    bad = [result for result in results if not result.ok]
    if args.json:
        print_json({"checked": len(results), "problems": len(bad), "results": [r.to_dict() for r in results]})
    else:
        out = console()
        for result in bad:
            out.print(f"[red]{result.status}[/] {result.name}: {result.path}")
        out.print(f"verified {len(results)} part(s): {len(results) - len(bad)} ok, {len(bad)} missing or altered")
    return 1 if bad else 0


def run_fits(args: argparse.Namespace) -> int:
    from garage_tui.commands.common import open_from_args

    loaded = open_from_args(args, structure_only=True)
    records = _bin().fits(loaded, args.address)
    if args.json:
        print_json({"model": loaded.name, "slot": args.address, "parts": [r.to_dict() for r in records]})
    else:
        _table(records, f"parts that fit {args.address} of {loaded.name} · {len(records)}")
    return 0


def run_reindex(args: argparse.Namespace) -> int:
    import sys

    bin_ = _bin()
    records = bin_.reindex()
    for note in bin_.notes:  # files left alone (foreign or damaged), a catalog kept aside
        sys.stderr.write(f"garage: note: {note}\n")
    if args.json:
        print_json([record.to_dict() for record in records])
    else:
        console().print(f"re-catalogued {len(records)} part file(s): {', '.join(r.name for r in records) or '-'}")
    return 0
