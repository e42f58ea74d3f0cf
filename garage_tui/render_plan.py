"""A fit plan (``engine.fit_plan.FitPlan``) as a rich table and as short lines for the bay card."""

from __future__ import annotations

from typing import Any


def human_bytes(count: int) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def plan_lines(plan: Any) -> list[str]:
    """The plan's headline figures, one per line (the model card shows these)."""
    shares = ", ".join(f"{share.device} {human_bytes(share.weight_bytes)}" for share in plan.devices)
    lines = [
        f"weights ({plan.dtype}): {human_bytes(plan.weight_bytes)} · {plan.n_parameters / 1e6:,.1f}M parameters",
        f"placement ({plan.device}): {shares}",
        f"KV cache ({plan.batch}×{plan.seq} tokens): {human_bytes(plan.kv_cache_bytes)}",
        f"peak: load {human_bytes(plan.load_peak_bytes)} · forward {human_bytes(plan.forward_peak_bytes)}",
    ]
    for item in plan.attached:
        lines.append(f"with {item.part}: model A '{item.model}' {human_bytes(item.weight_bytes)} on the same "
                     "device, in the placement and peaks above")
    if plan.captured_points:
        lines.append(f"captures ({plan.captured_points} points): {human_bytes(plan.capture_bytes)} · "
                     f"peak {human_bytes(plan.capture_peak_bytes)}")
    if plan.gguf is not None:
        types = ", ".join(f"{name}×{count}" for name, count in plan.gguf.tensor_types.items())
        lines.append(f"GGUF as stored: {human_bytes(plan.gguf.quantised_bytes)} ({types}); "
                     f"dequantised {human_bytes(plan.gguf.dequantised_bytes)}")
    return lines


def plan_table(plan: Any):
    """Every figure of the plan, then the device map grouped into runs of one device."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"fit plan: {plan.model} ({plan.model_type}, {plan.dtype}, device {plan.device})")
    table.add_column("item")
    table.add_column("bytes", justify="right")
    rows = [
        ("weights", plan.weight_bytes),
        # the model A a carried blade opens goes on the same devices, so the shares below include it
        *((escape(f"model A '{item.model}' ({item.part})"), item.weight_bytes) for item in plan.attached),
        *((f"  on {share.device}" + (" with model A" if plan.attached else "")
           + (f" (budget {human_bytes(share.budget_bytes)})" if share.budget_bytes is not None else ""),
           share.weight_bytes)
          for share in plan.devices),
        (f"KV cache ({plan.batch}×{plan.seq})", plan.kv_cache_bytes),
        ("logits", plan.logits_bytes),
        ("one layer's activations", plan.layer_working_bytes),
        ("forward working memory", plan.forward_transient_bytes),
        (f"captures ({plan.captured_points} points)", plan.capture_bytes),
        (f"streaming stats ({plan.stats_points} points, working)", plan.stats_transient_bytes),
        ("runtime allowance", plan.runtime_allowance_bytes),
        ("tokenizer (kept)", plan.tokenizer_bytes),
        ("tokenizer (parsing, freed after the load)", plan.tokenizer_transient_bytes),
        ("peak: load", plan.load_peak_bytes),
        ("peak: forward", plan.forward_peak_bytes),
        ("peak: forward with captures", plan.capture_peak_bytes),
    ]
    if plan.gguf is not None:
        rows += [("GGUF as stored (quantised)", plan.gguf.quantised_bytes),
                 ("GGUF dequantised", plan.gguf.dequantised_bytes),
                 ("peak: one-off GGUF dequantisation", plan.gguf.conversion_peak_bytes)]
    for label, count in rows:
        table.add_row(label, human_bytes(count))
    for start, end, device in _runs(plan.placement):
        label = start if start == end else f"{start} … {end}"
        table.add_row(f"  {label or '(whole model)'}", f"→ {device}")
    return table


def _runs(placement: list[Any]) -> list[tuple[str, str, str]]:
    """Consecutive device-map entries on one device, as (first module, last module, device)."""
    runs: list[tuple[str, str, str]] = []
    for item in placement:
        if runs and runs[-1][2] == item.device:
            runs[-1] = (runs[-1][0], item.module, item.device)
        else:
            runs.append((item.module, item.module, item.device))
    return runs
