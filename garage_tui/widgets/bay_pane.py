"""Pane 1, the engine bay: the part tree beside the selected part's detail and the run's norms."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Sparkline, Static

from garage_tui.render import human_count
from garage_tui.widgets.part_tree import PartTree

# Parts an intervention can act on (mirrors engine.interventions.EDITABLE_KINDS without torch).
ABLATABLE = ("head", "attn", "mlp", "layer")
SCALABLE = ("head", "attn", "mlp", "layer", "norm", "final_norm", "embed", "lm_head", "proj")


def detail_text(part: Any, interventions: list[dict[str, Any]], report: dict[str, Any] | None) -> Text:
    """The detail pane's text for ``part``: what it is, where it lives, what is done to it."""
    text = Text()
    text.append(f"{part.address}", style="bold")
    text.append(f"  {part.kind}\n", style="italic")
    if part.module_path is not None:
        text.append(f"module  {part.module_path or '(root)'}\n")
    text.append(f"params  {human_count(part.params)} ({part.params:,})\n")
    if part.dtype:
        text.append(f"dtype   {part.dtype}\n")
    info = part.info or {}
    if part.kind == "head":
        text.append(f"head {info.get('head')} · KV group {info.get('kv_group')} · d_head {info.get('head_dim')}\n")
    elif part.kind == "attn":
        gqa = " (GQA)" if info.get("gqa") else ""
        text.append(f"{info.get('heads')} heads · {info.get('kv_heads')} KV heads{gqa} · "
                    f"d_head {info.get('head_dim')}\n")
    elif part.kind == "model":
        for key in ("family", "layers", "hidden_size", "heads", "kv_heads", "norm", "layout"):
            if key in info:
                text.append(f"{key:<12}{info[key]}\n")
    for name, shape in list(part.shapes.items())[:6]:
        text.append(f"  {name}  {'×'.join(map(str, shape))}\n", style="dim")
    if len(part.shapes) > 6:
        text.append(f"  … {len(part.shapes) - 6} more tensors\n", style="dim")
    if part.points:
        text.append("points  " + " ".join(f"{part.address}.{p}" for p in part.points) + "\n", style="dim")
    here = [item for item in interventions if item["address"] == part.address]
    if here:
        text.append("active  " + ", ".join(item["describe"] for item in here) + "\n", style="bold")
    if report and report.get("top"):
        text.append(f"\nnext token for “{report.get('prompt', '')}”\n", style="bold")
        baseline = {row[0]: row[1] for row in report.get("baseline_top") or []}
        for token, prob in report["top"]:
            before = f"  (before {baseline[token]:.3f})" if token in baseline and report.get("baseline_top") else ""
            text.append(f"  {token!r:<14} {prob:.3f}{before}\n")
    return text


class BayPane(Vertical):
    """Tree plus detail; intervention keys act on the highlighted part."""

    BINDINGS = [
        Binding("a", "app.toggle_intervention('ablate')", "Ablate", id="bay.ablate"),
        Binding("m", "app.toggle_intervention('mean')", "Mean-ablate", id="bay.mean_ablate"),
        Binding("s", "app.toggle_intervention('scale')", "Scale ×0.5", id="bay.scale"),
        Binding("v", "app.steer_part", "Steer", id="bay.steer"),
        Binding("c", "app.clear_interventions", "Clear edits", id="bay.clear"),
        Binding("x", "app.extract_part", "Extract", id="bay.extract"),
        Binding("slash", "app.goto_part", "Go to", id="bay.goto"),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield PartTree(id="part-tree")
            with Vertical(id="bay-side"):
                with VerticalScroll(id="detail-scroll"):
                    yield Static("Opening the model…", id="part-detail")
                yield Static("residual norm per layer (last run)", id="norms-caption")
                yield Sparkline([], id="norms")

    def focus_main(self) -> None:
        self.screen.set_focus(self.query_one(PartTree))
