"""Head moves whose weights come from a head part in the parts bin (``engine.parts``).

A head part records, for each of its tensors, the full source tensor name and the slice
``(dim, start, stop)`` it was cut from; that is all the planner needs to put its rows into
the right rows of the output layer. Catalog records are read during validation (no weight);
the part's file is read, and its sha256 checked by the bin, only when the tensor is built.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from engine.build.recipe import HeadMove, Problem, Recipe
from engine.build.sources import Source
from engine.build.transplant import Transplant
from engine.errors import GarageError
from engine.families import FamilyTable, family_for, head_geometry

PART_ALIAS = "part:"  # how a part shows up as a "source" in transplants and provenance


def _bin():
    from engine.parts import PartsBin

    return PartsBin()


def part_record(name: str):
    return _bin().get(name)


def check_part_move(recipe: Recipe, base: Source, move: HeadMove) -> Problem | None:
    """A problem when the named part cannot supply this head; None when it can."""
    path = f"{move.path}.part"
    assert move.part is not None
    try:
        record = part_record(move.part)
    except ImportError:
        return recipe.problem(path, "this installation has no parts bin; transplant from a model with `from: "
                                    "ALIAS.L10.h3`")
    except GarageError as exc:
        return recipe.problem(path, f"{exc}")
    if record.kind != "head":
        return recipe.problem(path, f"part '{move.part}' is a {record.kind} ({record.address}), not a head; "
                                    "name a part extracted from an address like L10.attn.h3")
    table = family_for(base.config_doc.get("model_type"))
    if table is None or record.family != table.name:
        return recipe.problem(path, f"part '{move.part}' comes from a {record.family} model but the output is "
                                    f"{table.name if table else base.config_doc.get('model_type')}; use a head "
                                    "of the same family")
    geometry = head_geometry(base.config)
    part_geometry = record.config.get("geometry") or {}
    # The output projection's un-sliced dimension is the residual width the head writes into.
    o_entries = [e for e in record.tensors if e.name.startswith("o.") and e.slice is not None and len(e.shape) == 2]
    part_hidden = o_entries[0].shape[1 - o_entries[0].slice[0]] if o_entries else None
    if part_geometry.get("head_dim") != geometry.head_dim or part_hidden != base.config.hidden_size:
        return recipe.problem(path, f"part '{move.part}' has head dim {part_geometry.get('head_dim')} and hidden size "
                                    f"{part_hidden}; the output needs {geometry.head_dim} and "
                                    f"{base.config.hidden_size}")
    if geometry.group_size > 1 and move.kv != "keep":
        return recipe.problem(path, f"part '{move.part}' carries the keys and values its GQA group shared; in "
                                    "the output "
                                    f"they would change {geometry.group_size - 1} other heads too; add `kv: "
                                    "keep` to move "
                                    "only its query and output weights")
    return None


def part_transplants(move: HeadMove, table: FamilyTable, rel: str, proj: str, dst_ranges: dict[str, list],
                     moves_kv: bool, shape: tuple[int, ...]) -> list[Any]:
    """Transplants of one output attention tensor (block-relative ``rel``) from a head part."""
    assert move.part is not None
    record = part_record(move.part)
    layer_pattern = re.compile(rf"(?:^|\.){re.escape(table.blocks)}\.\d+\.(.+)$")
    found = []
    for entry in record.tensors:
        match = layer_pattern.search(entry.source)
        if match is None or match.group(1) != rel or entry.slice is None:
            continue
        role = entry.name.split(".", 1)[0]
        if role in ("k", "v") and not moves_kv:
            continue
        ranges = dst_ranges[proj]
        index = "qkv".index(role) if proj == "qkv" and len(ranges) == 3 and role in ("q", "k", "v") else 0
        dim, start, stop = entry.slice
        expected = list(shape)
        expected[dim] = stop - start
        if list(entry.shape) != expected or ranges[index][1] - ranges[index][0] != stop - start:
            raise GarageError(f"part '{move.part}' tensor {entry.name} has shape {list(entry.shape)}; "
                              f"the output's {rel} needs {expected}")
        found.append(Transplant(PART_ALIAS + move.part, entry.name, dim, [ranges[index]], [(0, stop - start)],
                                move.head, None, part=move.part))
    return found


class PartTensors:
    """Part tensors loaded once per build (through the bin, which checks each file's sha256)."""

    def __init__(self) -> None:
        self.loaded: dict[str, dict[str, Tensor]] = {}

    def get(self, alias: str, name: str) -> Tensor:
        part = alias[len(PART_ALIAS):]
        if part not in self.loaded:
            self.loaded[part] = _bin().load_tensors(part)
        return self.loaded[part][name]


def parts_used(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Catalog facts of every part a recipe moves heads from, for provenance."""
    used = {}
    for spec in recipe.layers:
        for move in spec.heads:
            if move.part is not None and move.part not in used:
                record = part_record(move.part)
                used[move.part] = {"address": record.address, "sha256": record.sha256, "source": record.source,
                                   "created_at": record.created_at}
    return used
