"""Capture and intervention on any address, as context managers that always clean up.

Every capture point maps onto one *site*: a module and whether the value is its input
(forward pre-hook) or its output (forward hook). Captures and interventions at the same site
share one torch hook; interventions run first, so a capture sees the edited value. Head
operations act on the output projection's input (``z``), where heads are separable, so they
are exact for MHA and GQA alike.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from engine.addresses import Target, resolve, resolve_point
from engine.anatomy import Anatomy
from engine.errors import AddressError, Cancelled, InterventionError
from engine.interventions import Intervention, RunMask, edits_for
from engine.tensors import first_tensor, replace_first, split_heads

Edit = Callable[[Tensor], Tensor | None]


@dataclass(frozen=True)
class Site:
    module_path: str
    phase: str  # "pre": the module's first input; "post": its output
    output_index: int = 0  # which output item, for modules returning tuples


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def site_for(anatomy: Anatomy, target: Target) -> Site:
    """Where a capture point's value flows: the module and hook phase."""
    part, point = target.part, target.point
    table = anatomy.family
    layer = target.layer
    if table is None or layer is None or part.kind in ("norm", "proj"):
        if part.module_path is None:
            raise AddressError(f"'{target.address}' has no module to hook")
        return Site(part.module_path, "pre" if point == "in" else "post")
    block = anatomy.module_path_of(layer, "").rstrip(".")
    attn, mlp = table.attention, table.mlp
    if part.kind == "layer":
        return Site(block, "pre" if point == "in" else "post")
    if part.kind in ("attn", "head"):
        if point == "in":
            return Site(_join(block, attn.module), "pre")
        if point == "out":
            return Site(_join(block, attn.out_module or attn.module), "post")
        if point == "z":
            return Site(_join(block, attn.o), "pre")
        if point == "pattern":
            return Site(_join(block, attn.pattern_module or attn.module), "post", 1)
    if part.kind == "mlp":
        if point == "in":
            return Site(_join(block, mlp.module or mlp.up or mlp.gate_up), "pre")
        if point == "out":
            return Site(_join(block, mlp.out_module or mlp.module), "post")
        if point == "hidden":
            return Site(_join(block, mlp.down), "pre")
    raise AddressError(f"'{target.address}' is not a capture point of this model")


def head_view(target: Target, anatomy: Anatomy, edit: Edit) -> Edit:
    """Lift an edit of one head's slice to an edit of the whole site value."""
    head = target.head
    if head is None:
        return edit
    n_heads = anatomy.geometry.n_heads

    def on_full(value: Tensor) -> Tensor:
        if target.point == "pattern":
            updated = edit(value[:, head])
            if updated is None:
                return value
            value = value.clone()
            value[:, head] = updated
            return value
        heads = split_heads(value, n_heads)
        updated = edit(heads[..., head, :])
        if updated is None:
            return value
        heads = heads.clone()
        heads[..., head, :] = updated
        return heads.flatten(-2)

    return on_full


@dataclass
class SiteHooks:
    """Everything attached at one site: edits in order, then observers of the final value."""

    site: Site
    edits: list[Edit] = field(default_factory=list)
    observers: list[Callable[[Tensor], None]] = field(default_factory=list)

    def apply(self, value: Tensor) -> Tensor:
        for edit in self.edits:
            updated = edit(value)
            if updated is not None:
                value = updated
        for observe in self.observers:
            observe(value)
        return value


class Tap:
    """What a hooked forward pass captured, by canonical address."""

    def __init__(self, history: bool = False) -> None:
        self.captured: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self.aliases: dict[str, str] = {}  # the address as given -> its canonical name
        # With history, every call's value is kept (one per generation step), not just the last.
        self.history: dict[str, list[Tensor]] | None = {} if history else None

    def __getitem__(self, address: str) -> Tensor:
        return self.captured[self.aliases.get(address, address)]

    def __contains__(self, address: str) -> bool:
        return self.aliases.get(address, address) in self.captured

    def keys(self):
        return self.captured.keys()

    def _record(self, address: str, value: Tensor) -> None:
        self.captured[address] = value.detach()
        self.calls[address] = self.calls.get(address, 0) + 1
        if self.history is not None:
            self.history.setdefault(address, []).append(self.captured[address])


def pre_hook(bundle: SiteHooks):
    """A forward pre-hook that runs ``bundle`` on the module's first input."""
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if args:
            updated = bundle.apply(args[0])
            return (updated, *args[1:]), kwargs
        updated = bundle.apply(kwargs["hidden_states"])
        return args, {**kwargs, "hidden_states": updated}

    hook._garage_hook = True  # type: ignore[attr-defined]
    return hook


def post_hook(bundle: SiteHooks):
    """A forward hook that runs ``bundle`` on the module's output (or one item of it)."""
    index = bundle.site.output_index

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if index == 0:
            return replace_first(output, bundle.apply(first_tensor(output)))
        if output[index] is None:
            raise InterventionError(
                "attention weights were not returned; the pattern needs eager attention"
            )
        items = list(output)
        items[index] = bundle.apply(items[index])
        return type(output)(items)

    hook._garage_hook = True  # type: ignore[attr-defined]
    return hook


def _needs_eager(targets: Sequence[Target]) -> bool:
    return any(target.point == "pattern" for target in targets)


@contextlib.contextmanager
def hooked(
    model: nn.Module,
    anatomy: Anatomy,
    capture: Sequence[str] = (),
    interventions: Sequence[Intervention] = (),
    cancel: threading.Event | None = None,
    history: bool = False,
) -> Iterator[Tap]:
    """Hook ``model`` for the block: capture ``capture`` points, apply ``interventions``.

    With ``cancel``, a forward pass stops with ``Cancelled`` at the next layer once the event
    is set, so Esc interrupts even one long pass. With ``history``, the tap keeps every
    pass's capture (``tap.history``), as cached generation steps need. Every hook, swapped
    module and attention-implementation change is undone on exit, also when the block raises.
    """
    tap = Tap(history=history)
    bundles: dict[Site, SiteHooks] = {}
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    mask = RunMask()

    def bundle_for(site: Site) -> SiteHooks:
        return bundles.setdefault(site, SiteHooks(site))

    capture_targets = [resolve_point(anatomy, address) for address in capture]
    tap.aliases.update({given: target.address for given, target in zip(capture, capture_targets, strict=True)})
    try:
        for intervention in interventions:
            for plan in edits_for(anatomy, intervention, mask):
                if plan.swap is not None:
                    parent_path, _, attr = plan.swap[0].rpartition(".")
                    parent = model.get_submodule(parent_path)
                    swaps.append((parent, attr, getattr(parent, attr)))
                    setattr(parent, attr, plan.swap[1])
                    continue
                bundle = bundle_for(plan.site)
                (bundle.observers if plan.observe else bundle.edits).append(plan.edit)
        for target in capture_targets:
            address = target.address
            observer = head_view(target, anatomy, lambda value, a=address: tap._record(a, value))
            bundle_for(site_for(anatomy, target)).observers.append(observer)
        with installed(model, bundles, eager=_needs_eager(capture_targets)) as handles:
            if cancel is not None:
                handles.extend(_cancel_checks(model, anatomy, cancel))
            if any(item.kind == "ablate" and item.mode == "mean" for item in interventions):
                handles.append(model.register_forward_pre_hook(_mask_recorder(mask), with_kwargs=True))
            yield tap
    finally:
        for parent, attr, original in reversed(swaps):
            setattr(parent, attr, original)


@contextlib.contextmanager
def installed(model: nn.Module, bundles: dict[Site, SiteHooks], *, eager: bool = False) -> Iterator[list]:
    """Register ``bundles`` on ``model`` for the block (eager attention if asked), then undo it all.

    Yields the list of hook handles; a caller may append more and they are removed too.
    """
    handles: list = []
    previous_impl = None
    try:
        if eager:
            previous_impl = model.config._attn_implementation
            if previous_impl != "eager":
                model.set_attn_implementation("eager")
        for site, bundle in bundles.items():
            module = model.get_submodule(site.module_path)
            if site.phase == "pre":
                handles.append(module.register_forward_pre_hook(pre_hook(bundle), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(post_hook(bundle)))
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        if previous_impl is not None and previous_impl != "eager":
            model.set_attn_implementation(previous_impl)


def _mask_recorder(mask: RunMask):
    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        value = kwargs.get("attention_mask")
        mask.value = value if isinstance(value, Tensor) and value.dim() == 2 else None

    record._garage_hook = True  # type: ignore[attr-defined]
    return record


def _cancel_checks(model: nn.Module, anatomy: Anatomy, cancel: threading.Event) -> list:
    """Pre-hooks on every layer (or the whole model, without a family table) that stop the pass."""

    def check(module: nn.Module, args: tuple) -> None:
        if cancel.is_set():
            raise Cancelled("the forward pass was cancelled")

    check._garage_hook = True  # type: ignore[attr-defined]
    modules = [model.get_submodule(anatomy.module_path_of(i, "").rstrip(".")) for i in range(anatomy.n_layers)]
    return [module.register_forward_pre_hook(check) for module in modules or [model]]


def hook_inventory(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward hook on every submodule, ours or transformers' own (which it installs
    for ``output_hidden_states`` and keeps); equal before and after a ``hooked`` block."""
    return {
        (name, phase, hook_id)
        for name, module in model.named_modules()
        for phase, hooks in (("pre", module._forward_pre_hooks), ("post", module._forward_hooks))
        for hook_id in hooks
    }


def count_garage_hooks(model: nn.Module) -> int:
    """Hooks this module installed that are still attached; zero after every ``hooked`` block."""
    return sum(
        getattr(hook, "_garage_hook", False)
        for module in model.modules()
        for hooks in (module._forward_pre_hooks, module._forward_hooks)
        for hook in hooks.values()
    )


def resolve_all(anatomy: Anatomy, addresses: Sequence[str]) -> list[Target]:
    return [resolve(anatomy, address) for address in addresses]
