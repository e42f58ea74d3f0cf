"""The engine bay's tree: the anatomy (a plain data tree from the engine) as a Textual Tree."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from garage_tui.render import human_count

BARS = "▁▂▃▄▅▆▇█"


def norm_glyph(value: float, top: float) -> str:
    """One block character for ``value`` on a 0…``top`` scale (drawing only, no maths on tensors)."""
    if top <= 0:
        return " "
    index = min(len(BARS) - 1, max(0, int(value / top * (len(BARS) - 1) + 0.5)))
    return BARS[index]


def short_name(address: str) -> str:
    """What a child shows of its address: ``L10.attn.h3`` → ``h3``; layers keep ``L10``."""
    return address.rsplit(".", 1)[-1]


def part_label(part: Any, marks: list[str], glyph: str = "") -> Text:
    """One tree row: name, kind hints, parameter count, shapes of leaf parts, active marks."""
    label = Text()
    if glyph:
        label.append(glyph + " ", style="bold")
    label.append(short_name(part.address) if part.kind != "layer" else part.address, style="bold")
    info = part.info or {}
    if part.kind == "attn":
        label.append(f" {info.get('heads')}h/{info.get('kv_heads')}kv", style="italic")
    elif part.kind == "head":
        label.append(f" kv{info.get('kv_group')}", style="dim")
    elif part.kind == "layer" and info.get("attention") == "sliding":
        label.append(f" sliding {info.get('window')}", style="italic")
    elif part.kind not in ("layer", "proj") and short_name(part.address) != part.kind:
        label.append(f" {part.kind}", style="italic")
    if part.params:
        label.append(f" {human_count(part.params)}", style="dim")
    if part.kind in ("proj", "norm", "final_norm", "embed", "lm_head") and part.shapes:
        first = next(iter(part.shapes.values()))
        label.append(" " + "×".join(map(str, first)), style="dim")
    for mark in marks:
        label.append(f" [{mark}]", style="bold reverse")
    return label


class PartTree(Tree[str]):
    """Anatomy tree with vim-style keys; each node's data is its part address."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="tree.down"),
        Binding("k", "cursor_up", "Up", show=False, id="tree.up"),
        Binding("g,home", "scroll_home", "First", show=False, id="tree.first"),
        Binding("G,end", "scroll_end", "Last", show=False, id="tree.last"),
        Binding("l,right", "expand_part", "Expand", show=False, id="tree.expand"),
        Binding("h,left", "collapse_part", "Collapse", show=False, id="tree.collapse"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("no model open", **kwargs)
        self.anatomy: Any = None
        self.nodes_by_address: dict[str, TreeNode[str]] = {}

    def show_anatomy(self, title: str, anatomy: Any, marks: dict[str, list[str]], norms: list[float] | None) -> None:
        """Rebuild the tree for ``anatomy``, keeping the expanded nodes and the cursor."""
        expanded = {address for address, node in self.nodes_by_address.items() if node.is_expanded}
        cursor = self.cursor_node.data if self.cursor_node is not None else None
        self.anatomy = anatomy
        self.clear()
        self.nodes_by_address = {}
        root_part = anatomy.root
        self.root.set_label(Text(title, style="bold"))
        self.root.data = root_part.address
        self.nodes_by_address[root_part.address] = self.root
        top = max(norms) if norms else 0.0

        def add(parent: TreeNode[str], part: Any) -> None:
            glyph = ""
            if part.kind == "layer" and norms and part.address[1:].isdigit() and int(part.address[1:]) < len(norms):
                glyph = norm_glyph(norms[int(part.address[1:])], top)
            label = part_label(part, marks.get(part.address, []), glyph)
            if part.children:
                node = parent.add(label, data=part.address, expand=part.address in expanded)
                for child in part.children:
                    add(node, child)
            else:
                node = parent.add_leaf(label, data=part.address)
            self.nodes_by_address[part.address] = node

        for child in root_part.children:
            add(self.root, child)
        self.root.expand()
        if cursor:
            self.select_address(cursor)

    def relabel(self, marks: dict[str, list[str]], norms: list[float] | None) -> None:
        """Refresh labels (marks, norm glyphs) without rebuilding the tree."""
        if self.anatomy is None:
            return
        top = max(norms) if norms else 0.0
        for address, node in self.nodes_by_address.items():
            part = self.anatomy.by_address.get(address)
            if part is None or node is self.root:
                continue
            glyph = ""
            if part.kind == "layer" and norms and address[1:].isdigit() and int(address[1:]) < len(norms):
                glyph = norm_glyph(norms[int(address[1:])], top)
            node.set_label(part_label(part, marks.get(address, []), glyph))

    def expanded_addresses(self) -> list[str]:
        """The parts whose nodes are open (the root is always open), in tree order (a session keeps them)."""
        return [address for address, node in self.nodes_by_address.items()
                if node is not self.root and node.is_expanded]

    def expand_addresses(self, addresses: list[str]) -> list[str]:
        """Open the nodes of ``addresses`` (and the path to each); returns the ones this model lacks."""
        missing = []
        for address in addresses:
            node = self.nodes_by_address.get(address)
            if node is None:
                missing.append(address)
                continue
            while node is not None:
                node.expand()
                node = node.parent
        return missing

    def select_address(self, address: str) -> bool:
        """Expand the path to ``address`` and put the cursor on it; False when unknown."""
        node = self.nodes_by_address.get(address)
        if node is None:
            return False
        parent = node.parent
        while parent is not None:
            parent.expand()
            parent = parent.parent
        self.move_cursor(node)
        self.call_after_refresh(self._center_cursor, node)
        return True

    def _center_cursor(self, node: TreeNode[str]) -> None:
        self.move_cursor(node)
        self.scroll_to_node(node, animate=False)

    def action_expand_part(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and not node.is_expanded:
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])

    def action_collapse_part(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded and node is not self.root:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)
