"""Head moves: which rows (or columns) of which attention tensors a transplanted head owns.

Heads are cut where they are separable: their q/k/v output rows and the o-projection's
input columns (``families.head_row_ranges``). Under GQA a query head shares keys and values
with its group, so k/v rows move only when the whole group moves from one source group in
order; otherwise the recipe must say ``kv: keep``.
"""

from __future__ import annotations

from typing import Any

from engine.build.recipe import HeadMove, LayerSpec
from engine.build.transplant import Transplant
from engine.errors import GarageError
from engine.families import FamilyTable, HeadGeometry, head_geometry, head_row_ranges
from engine.module_paths import join_path as _join


def head_transplants(planner: Any, index: int, spec: LayerSpec, rel: str, table: FamilyTable,
                     shape: tuple[int, ...]) -> list[Transplant]:
    """Row/column ranges of one output attention tensor (block-relative ``rel``) that the
    layer's head moves replace; problems go to ``planner.fail``."""
    attn = table.attention
    out_geometry = head_geometry(planner.sources[planner.recipe.base_alias].config)
    kinds = {name: path for name in ("q", "k", "v", "qkv", "o") if (path := getattr(attn, name))}
    match = next(((name, suffix) for name, path in kinds.items()
                  for suffix in ("weight", "bias") if rel == f"{path}.{suffix}"), None)
    if match is None:
        return []
    proj, suffix = match
    if proj == "o" and suffix == "bias":
        return []  # the output bias is shared by all heads
    moves_kv = kv_moves(spec.heads, out_geometry)
    transplants = []
    for move in spec.heads:
        if move.part is not None:
            from engine.build.parts_heads import part_transplants

            try:
                dst_ranges = head_row_ranges(attn, out_geometry, move.head)
                transplants.extend(part_transplants(move, table, rel, proj, dst_ranges,
                                                    moves_kv.get(move.head, False), shape))
            except GarageError as exc:
                planner.fail(f"{move.path}.part", str(exc))
            continue
        assert move.source is not None and move.source_head is not None  # parsed as a source head
        src_geometry = head_geometry(planner.sources[move.source.alias].config)
        dst_ranges = head_row_ranges(attn, out_geometry, move.head)
        src_ranges = head_row_ranges(attn, src_geometry, move.source_head)
        dst, src = list(dst_ranges[proj]), list(src_ranges[proj])
        if not moves_kv.get(move.head, False):
            if proj in ("k", "v"):
                continue
            if proj == "qkv" and attn.qkv_layout == "concat":
                dst, src = dst[:1], src[:1]
        source_name = planner.source_key(move.source.alias, _join(table.blocks, str(move.source.layer), rel),
                                      f"{move.path}.from", f"head {move.head} of L{index}")
        if source_name is None:
            continue
        # Output projections read head features as input columns; Conv1D stores [in, out].
        dim = 0 if (proj == "o") == attn.conv1d else 1
        if suffix == "bias":
            dim = 0
        transplants.append(Transplant(move.source.alias, source_name, dim, dst, src, move.head, move.source_head))
    return transplants


def kv_moves(moves: list[HeadMove], geometry: HeadGeometry) -> dict[int, bool]:
    """Per moved head: do its key/value rows move too? Only when its whole GQA group moves
    from one source group in order (or always, for plain multi-head attention)."""
    result: dict[int, bool] = {}
    size = geometry.group_size
    for move in moves:
        if move.kv == "keep":
            result[move.head] = False
        elif size == 1:
            result[move.head] = True
        else:
            group = geometry.kv_group(move.head)
            members = [m for m in moves if geometry.kv_group(m.head) == group and m.kv != "keep"]
            result[move.head] = group_moves_whole(members, group, size)
    return result


def group_moves_whole(members: list[HeadMove], group: int, size: int) -> bool:
    if len(members) != size or any(m.source is None for m in members):
        return False
    ordered = sorted(members, key=lambda m: m.head)
    first = ordered[0]
    if any(m.source != first.source for m in ordered):
        return False
    start = first.source_head
    if start is None:
        return False
    return start % size == 0 and [m.source_head for m in ordered] == list(range(start, start + size))
