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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from engine.addresses import Target, resolve_point
from engine.anatomy import Anatomy
from engine.errors import InterventionError
from engine.interventions import Intervention, RunMask, edits_for
from engine.progress import Progress, check_cancel, notify
from engine.sites import Edit, Site, head_view, site_for
from engine.tensors import first_tensor, replace_first

Observer = Callable[[Tensor], None]

__all__ = ["Observer", "Edit", "Site", "SiteHooks", "Tap", "head_view", "hooked", "installed", "site_for"]


@dataclass
class SiteHooks:
    """Everything attached at one site: edits in order, then observers of the final value."""

    site: Site
    edits: list[Edit] = field(default_factory=list)
    observers: list[Edit] = field(default_factory=list)  # their return value is ignored

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

    def record(self, address: str, value: Tensor) -> None:
        """Keep ``value`` as this pass's capture at ``address`` (and in the history, if kept)."""
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
    *,
    observers: Mapping[str, Observer] | None = None,
    edits: Sequence[tuple[Target, Edit]] = (),
    progress: Progress | None = None,
    stop_after_capture: bool = False,
) -> Iterator[Tap]:
    """Hook ``model`` for the block: capture ``capture`` points, apply ``interventions``.

    At each site the interventions run first, then the raw ``edits`` (``(target, fn)``, as
    batched sweeps edit one row each), then ``observers`` (``{address: fn(value)}``, for
    streaming statistics that keep no tensor) and the captures, which see the final value.
    With ``cancel``, a forward pass stops with ``Cancelled`` at the next layer once the event
    is set, so Esc interrupts even one long pass; ``progress`` hears of each layer. With
    ``history``, the tap keeps every pass's capture (``tap.history``), as cached generation
    steps need. With ``stop_after_capture``, the pass raises ``PassComplete`` once every capture
    point and observer has its value (``stop_module``): the tap holds them all. Every hook, swapped module
    and attention-implementation change is undone on exit, also when the block raises.
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
                    setattr(parent, attr, _on_device_of(plan.swap[1], getattr(parent, attr)))
                    continue
                if plan.site is None or plan.edit is None:
                    raise InterventionError(f"{intervention.describe()} planned neither an edit nor a swap")
                bundle = bundle_for(plan.site)
                (bundle.observers if plan.observe else bundle.edits).append(plan.edit)
        for target, edit in edits:
            bundle_for(site_for(anatomy, target)).edits.append(edit)
        observed = [(resolve_point(anatomy, address), observe) for address, observe in (observers or {}).items()]
        for target, observe in observed:
            bundle_for(site_for(anatomy, target)).observers.append(head_view(target, anatomy, _returning_none(observe)))
        for target in capture_targets:
            address = target.address
            observer = head_view(target, anatomy, _recorder(tap, address))
            bundle_for(site_for(anatomy, target)).observers.append(observer)
        eager = _needs_eager([*capture_targets, *(target for target, _ in observed)])
        with installed(model, bundles, eager=eager) as handles:
            if cancel is not None or progress is not None:
                handles.extend(_layer_checks(model, anatomy, cancel, progress))
            if any(item.needs_mask() for item in interventions):
                handles.append(model.register_forward_pre_hook(_mask_recorder(mask), with_kwargs=True))
            stop = stop_module(anatomy, [*capture_targets, *(target for target, _ in observed)]) \
                if stop_after_capture else None
            if stop is not None:
                # registered after every site's hooks, so a pre-hook site on this module still runs first
                handles.append(model.get_submodule(stop).register_forward_pre_hook(_stop))
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
    config: Any = getattr(model, "config", None)
    set_impl: Callable[[str], None] = getattr(model, "set_attn_implementation", lambda name: None)
    try:
        if eager and config is not None:
            previous_impl = config._attn_implementation
            if previous_impl != "eager":
                set_impl("eager")
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
            set_impl(previous_impl)


def _on_device_of(replacement: nn.Module, original: nn.Module) -> nn.Module:
    """A replacing module moves to where the module it replaces runs (split models too)."""
    from engine.devices import execution_device

    device = execution_device(original)
    return replacement.to(device) if device is not None else replacement


def _mask_recorder(mask: RunMask):
    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        value = kwargs.get("attention_mask")
        mask.value = value if isinstance(value, Tensor) and value.dim() == 2 else None

    record._garage_hook = True  # type: ignore[attr-defined]
    return record


def _recorder(tap: Tap, address: str) -> Edit:
    def record(value: Tensor) -> None:
        tap.record(address, value)

    return record


def _returning_none(observe: Observer) -> Edit:
    def edit(value: Tensor) -> None:
        observe(value)
        return None

    return edit


class PassComplete(Exception):
    """Raised by the ``stop_after_capture`` hook: the rest of the pass is not needed (not an error)."""


def stop_module(anatomy: Anatomy, targets: Sequence[Target]) -> str | None:
    """The module before which a pass may stop once ``targets`` have their values: the layer
    after the last of them, or the final norm after the last layer; None when a point lies
    elsewhere (the final norm or head themselves, an extra part whose order is not known here)
    or the model has no final norm to stop at."""
    order = [-1 if target.part.kind == "embed" and target.part.address == "embed" else target.layer
             for target in targets]
    if not order or any(position is None for position in order):
        return None
    after = max(position for position in order if position is not None) + 1
    if after < anatomy.n_layers:
        return anatomy.module_path_of(after, "").rstrip(".")
    final = anatomy.by_address.get("final_norm")
    return final.module_path if final is not None else None


def _stop(module: nn.Module, args: tuple) -> None:
    raise PassComplete


_stop._garage_hook = True  # type: ignore[attr-defined]


def _layer_checks(model: nn.Module, anatomy: Anatomy, cancel: threading.Event | None,
                  progress: Progress | None) -> list:
    """Pre-hooks on every layer (or the whole model, without a family table): stop the pass
    once ``cancel`` is set, and tell ``progress`` which layer is starting."""
    modules = [model.get_submodule(anatomy.module_path_of(i, "").rstrip(".")) for i in range(anatomy.n_layers)]
    count = len(modules) or 1

    def check_at(index: int):
        def check(module: nn.Module, args: tuple) -> None:
            check_cancel(cancel, "the forward pass")
            notify(progress, f"layer {index + 1}/{count}", index / count)

        check._garage_hook = True  # type: ignore[attr-defined]
        return check

    return [module.register_forward_pre_hook(check_at(index)) for index, module in enumerate(modules or [model])]


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

