"""Rich renderings of engine data for the CLI (the TUI draws its own widgets)."""

from __future__ import annotations

from rich.tree import Tree


def human_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def part_label(part) -> str:
    leaf_shapes = part.shapes if not part.children else {}
    shapes = ", ".join(f"{name} {'×'.join(map(str, shape))}" for name, shape in list(leaf_shapes.items())[:3])
    if len(leaf_shapes) > 3:
        shapes += ", …"
    extra = ""
    if part.kind == "head":
        extra = f" kv-group {part.info['kv_group']} · d_head {part.info['head_dim']}"
    elif part.kind == "attn":
        extra = f" {part.info['heads']} heads · {part.info['kv_heads']} KV heads · d_head {part.info['head_dim']}"
    dtype = f" [dim]{part.dtype}[/]" if part.dtype else ""
    shape_text = f" [dim]{shapes}[/]" if shapes else ""
    return f"[bold]{part.address}[/] [cyan]{part.kind}[/] {human_count(part.params)} params{extra}{dtype}{shape_text}"


def anatomy_tree(name: str, anatomy, depth: int | None, structure_only: bool) -> Tree:
    root = anatomy.root
    info = root.info
    family = info.get("family") or "generic"
    label = f"[bold magenta]{name}[/] · {family} · {human_count(root.params)} params"
    if structure_only:
        label += " · [yellow]structure only (no weights)[/]"
    tree = Tree(label)

    def add(node: Tree, part, level: int) -> None:
        if depth is not None and level > depth:
            return
        branch = node.add(part_label(part))
        for child in part.children:
            add(branch, child, level + 1)

    for child in root.children:
        add(tree, child, 1)
    return tree
