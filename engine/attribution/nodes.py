"""The attribution graph: which modules carry each node, and the nodes themselves.

A *graph* names, per layer, the hook sites attribution reads: the output projection's input
(``z``, where heads are separable, exact for GQA), the attention block's and MLP's residual
contributions, the block's output (the residual stream, scored per position) and, for edges,
the inputs of the pre-norms that feed each attention block, MLP and the unembedding. Built
from the family tables for real models; a test may build one by hand for its own module.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import GarageError


@dataclass(frozen=True)
class LayerSites:
    z: str  # module whose *input* is the per-head z (the output projection)
    attn_out: str  # module whose output is the attention block's residual contribution
    mlp_out: str  # module whose output is the MLP's residual contribution
    resid_out: str  # the block: its output is the residual stream after the layer
    attn_in: str | None = None  # pre-norm before attention: its input is what the block reads
    mlp_in: str | None = None  # pre-norm before the MLP


@dataclass(frozen=True)
class Graph:
    layers: tuple[LayerSites, ...]
    n_heads: int
    d_head: int
    embed: str  # the token embedding module (its output seeds integrated gradients)
    logits_in: str | None = None  # the final norm: its input is what the unembedding reads
    unembed: str | None = None  # the LM head (a plain linear one is cut to the metric's tokens)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def has_edges(self) -> bool:
        return self.logits_in is not None and all(s.attn_in and s.mlp_in for s in self.layers)


@dataclass(frozen=True)
class Node:
    """One scored unit. ``position`` counts from the end (−1 is the last token) for residual nodes."""

    kind: str  # head | attn | mlp | resid
    layer: int
    head: int | None = None
    position: int | None = None

    def address(self, length: int | None = None) -> str:
        """The garage address; a residual node shows its absolute position when the length is known."""
        if self.kind == "head":
            return f"L{self.layer}.attn.h{self.head}"
        if self.kind in ("attn", "mlp"):
            return f"L{self.layer}.{self.kind}"
        position = self.position if length is None else length + int(self.position or 0)
        return f"L{self.layer}.out@{position}"


def all_nodes(graph: Graph, common_length: int) -> list[Node]:
    """Every head, attention block, MLP and residual position (the last ``common_length``), in run order."""
    nodes: list[Node] = []
    for layer in range(graph.n_layers):
        nodes += [Node("head", layer, head) for head in range(graph.n_heads)]
        nodes += [Node("attn", layer), Node("mlp", layer)]
        nodes += [Node("resid", layer, position=p) for p in range(-common_length, 0)]
    return nodes


def graph_for(loaded) -> Graph:
    """The attribution graph of an open model, from its family table; a clear error otherwise."""
    from engine.addresses import Target
    from engine.sites import site_for

    anatomy = loaded.anatomy
    table = anatomy.family
    if table is None or anatomy.geometry is None or not anatomy.n_layers:
        raise GarageError(f"'{loaded.name}' has no attention heads this garage knows how to address; "
                          "attribution needs a transformer family the garage has a table for")
    if not loaded.is_causal_lm:
        raise GarageError(f"attribution needs a causal language model with an LM head; '{loaded.name}' has none")

    def path(address: str, point: str) -> str:
        return site_for(anatomy, Target(anatomy.by_address[address], point)).module_path

    pre_norm = table.layout == "pre_norm" and "norm1" in table.norms and "norm2" in table.norms
    layers = []
    for layer in range(anatomy.n_layers):
        norm1 = anatomy.module_path_of(layer, table.norms["norm1"]) if pre_norm else None
        norm2 = anatomy.module_path_of(layer, table.norms["norm2"]) if pre_norm else None
        layers.append(LayerSites(
            z=path(f"L{layer}.attn", "z"), attn_out=path(f"L{layer}.attn", "out"),
            mlp_out=path(f"L{layer}.mlp", "out"), resid_out=path(f"L{layer}", "out"),
            attn_in=norm1, mlp_in=norm2,
        ))
    base = f"{anatomy.base_path}." if anatomy.base_path else ""
    final_norm = f"{base}{table.final_norm}" if pre_norm and table.final_norm else None
    embed = anatomy.by_address["embed"].module_path if "embed" in anatomy.by_address else None
    if embed is None:
        raise GarageError(f"'{loaded.name}' has no token embedding the garage can address")
    head = anatomy.by_address.get("lm_head")
    geometry = anatomy.geometry
    return Graph(tuple(layers), geometry.n_heads, geometry.head_dim, embed, final_norm,
                 head.module_path if head is not None else None)
