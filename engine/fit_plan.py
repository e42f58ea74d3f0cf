"""The fit planner: how much memory a model needs, and where it would go, before any weight is read.

Everything comes from the structure-only open (``config.json`` on the meta device): weight
bytes are the meta model's parameters and buffers at the chosen dtype; the placement is the
``device_map`` transformers itself computes for ``device_map="auto"`` with the same
``max_memory``; the cost of captures is measured by running the meta model through the very
hooks a real capture installs (shapes propagate on the meta device, no memory is used).

What "peak" means here, so that the numbers can be checked against ``ru_maxrss``:

* transformers memory-maps safetensors files, so weights become resident as they are first read
  (the first forward pass). ``load_peak_bytes`` is the weights resident at the model's dtype;
  loading at a dtype other than the checkpoint's also keeps the mapped checkpoint pages while
  converting, so the checkpoint's bytes are added.
* a GGUF file is dequantised once into the conversion cache (``engine.gguf_cache``); that one-off
  step holds the dequantised float32 model, its state dict while saving, and the mapped GGUF
  file: ``gguf.conversion_peak_bytes``. Later opens read the cached float32 safetensors.
* the process's own baseline (interpreter, imports) is not part of any figure. A fixed
  ``RUNTIME_ALLOWANCE_BYTES`` covers what an open model costs beside its tensors and tokenizer:
  module objects, the CPU kernels' workspaces, a small tokenizer's fixed part (5–11 MiB measured
  on SmolLM2 and MiniLM); it only matters for tiny models.
* the tokenizer is sized from its ``tokenizer.json`` (when one is at hand: a folder, a converted
  GGUF): the tokenizers library keeps about 4× the file's bytes and, while parsing, allocates about
  6× more that it frees again (measured: Gemma's 32 MiB file → 139 MiB kept, 329 MiB at the peak;
  SmolLM2's 3.4 MiB → 12 and 38 MiB). That parse is the load's transient.
* memory freed after loading stays in the C heap, and later allocations below glibc's mmap
  threshold (32 MiB) reuse it before the process grows; bigger tensors (Gemma's 128 MiB of
  logits) are fresh mappings. So a pass peaks at ``resident + large tensors + max(freed heap,
  small tensors)`` (``_pass_peak``), not at the load peak plus everything the pass allocates.
* a capture of ``lm_head.out`` keeps the logits tensor the forward returns anyway: the logits
  are counted once (in the forward), not again as a capture.
* a folder that carries a blade (``engine.attached``) opens its model A after B's weights are in
  and runs A inside every pass of B (last-position logits only, one captured point): A is planned
  from its recorded source's config alone, and its resident bytes, load peak and pass are added to
  B's peaks (``FitPlan.attached``). A opens on B's device, so its weights are added to the per-device
  shares too (``FitPlan.devices``): a GPU line that leaves A out would say B fits where B and A do not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import GarageError
from engine.safe_text import shown
from engine.stats_device import QUEUE_BYTES
from engine.tensors import placed_tensors

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Points a whole-model capture keeps: every part's input/output, head inputs (z) and MLP hidden.
# Per-head points are views of their block's z, and patterns need eager attention; both are left out.
CAPTURE_ALL_POINTS = ("in", "out", "z", "hidden")
RUNTIME_ALLOWANCE_BYTES = 16 * 2**20
# The tokenizers library's memory per byte of tokenizer.json: kept after loading, and allocated
# while parsing then freed (measured on Gemma-3's, SmolLM2's and MiniLM's tokenizers; see above).
TOKENIZER_RESIDENT_PER_BYTE = 4
TOKENIZER_TRANSIENT_PER_BYTE = 6
# glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): a tensor at
# least this big is a fresh mapping; smaller ones may reuse heap the load freed.
MMAP_THRESHOLD_BYTES = 32 * 2**20


class PlanError(GarageError):
    """A plan request that cannot be answered (bad --max-memory, unknown address…)."""


@dataclass
class DeviceShare:
    """Weight bytes one device (a GPU index, ``cpu`` or ``disk``) would hold."""

    device: str
    weight_bytes: int
    budget_bytes: int | None = None  # the --max-memory entry, when given


@dataclass
class Placement:
    """One entry of the device map: a module (a layer, the embedding…) and where it goes."""

    module: str
    device: str
    weight_bytes: int


@dataclass
class GgufWeights:
    """A GGUF checkpoint's tensors as stored (quantised) and once dequantised."""

    path: str
    quantised_bytes: int
    dequantised_bytes: int  # at the plan's dtype
    tensor_types: dict[str, int]  # GGML type name -> number of tensors
    # the one-off dequantisation into the cache: the weights' part only; converting the GGUF
    # tokenizer (vocabulary-sized, not in config.json) comes on top
    conversion_peak_bytes: int


@dataclass
class AttachedPlan:
    """A model a carried part opens alongside (a blade's model A) and what it adds to the peaks."""

    part: str
    model: str
    source: str
    weight_bytes: int
    resident_bytes: int  # kept while the model is open: A's host weights, allowance, tokenizer (and its own parts)
    load_peak_bytes: int  # A's own load peak, reached once B's weights are in
    pass_bytes: int  # A's forward inside each pass of B: its working tensors and the point the blade reads
    devices: list[DeviceShare] = field(default_factory=list)  # A's weights per device, added into FitPlan.devices


@dataclass
class FitPlan:
    """Memory a model needs on each device for a given dtype, sequence and captures."""

    model: str
    model_type: str
    dtype: str
    device: str
    seq: int
    batch: int
    n_parameters: int
    weight_bytes: int
    checkpoint_dtype: str
    devices: list[DeviceShare]
    placement: list[Placement]
    kv_cache_bytes: int
    logits_bytes: int
    layer_working_bytes: int  # the distinct tensors one layer has alive during its forward
    forward_transient_bytes: int
    captured_points: int
    capture_bytes: int  # distinct tensors a capture of the requested points keeps
    stats_points: int
    stats_transient_bytes: int  # the float64 working copies of the largest stats site
    stats_state_bytes: int  # what the accumulators keep (a few numbers and bins per point)
    runtime_allowance_bytes: int
    tokenizer_bytes: int  # what the loaded tokenizer keeps (0 when no tokenizer.json is at hand)
    tokenizer_transient_bytes: int  # what parsing it allocates and frees again during the load
    load_peak_bytes: int
    forward_peak_bytes: int
    capture_peak_bytes: int
    gguf: GgufWeights | None = None
    notes: list[str] = field(default_factory=list)
    attached: list[AttachedPlan] = field(default_factory=list)  # counted in the peaks and device shares above

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(text: str) -> int:
    """``20GiB``, ``512MB``, ``1000`` (bytes) → bytes."""
    cleaned = text.strip().upper().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if cleaned.endswith(unit):
            number = cleaned[: -len(unit)]
            break
    else:
        number, unit = cleaned, "B"
    try:
        value = float(number)
    except ValueError:
        raise PlanError(f"cannot read the size '{text}'; write it like 20GiB, 512MB or 1000") from None
    if value < 0:
        raise PlanError(f"size '{text}' is negative; give a memory budget of 0 or more")
    return int(value * _UNITS[unit])


def parse_max_memory(text: str | None) -> dict[int | str, int] | None:
    """``0=20GiB,1=20GiB,cpu=30GiB`` → ``{0: bytes, 1: bytes, 'cpu': bytes}``."""
    if not text:
        return None
    budget: dict[int | str, int] = {}
    for item in text.split(","):
        key, sep, size = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise PlanError(f"--max-memory entry '{item}' is not DEVICE=SIZE; write e.g. 0=20GiB,cpu=30GiB")
        if key.isdigit():
            budget[int(key)] = parse_size(size)
        elif key in ("cpu", "disk", "mps"):
            budget[key] = parse_size(size)
        else:
            raise PlanError(f"--max-memory device '{key}' is not a GPU index, cpu or disk")
    return budget


def plan_fit(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    max_memory: dict[int | str, int] | None = None,
    seq: int = 128,
    batch: int = 1,
    captures: Sequence[str] = (),
    capture_all: bool = False,
    stats: Sequence[str] = (),
    stats_bins: int = 64,
) -> FitPlan:
    """Plan ``spec`` (anything ``open_model`` accepts) without reading its weights."""
    from engine.loading import DTYPES, open_model

    if dtype not in DTYPES:
        raise PlanError(f"unknown dtype '{dtype}'; use one of: {', '.join(DTYPES)}")
    if seq < 1 or batch < 1:
        raise PlanError(f"--seq and --batch must be at least 1 (got {seq} and {batch})")
    return plan_structure(open_model(spec, structure_only=True, dtype=dtype), device=device, dtype=dtype,
                          max_memory=max_memory, seq=seq, batch=batch, captures=captures,
                          capture_all=capture_all, stats=stats, stats_bins=stats_bins)


def plan_for_loaded(loaded: Any, **options: Any) -> FitPlan:
    """The plan of a model that is already open (the bay's model card), from its config alone."""
    import dataclasses

    from engine.anatomy import build_anatomy
    from engine.loading import model_class
    from engine.tensors import dtype_from_name

    options.setdefault("dtype", loaded.dtype)
    options.setdefault("device", loaded.device if loaded.device in ("cpu", "cuda", "auto") else "cpu")
    if not loaded.structure_only:
        with torch.device("meta"):
            meta = model_class(loaded.config).from_config(loaded.config, dtype=dtype_from_name(options["dtype"]))
        loaded = dataclasses.replace(loaded, model=meta, anatomy=build_anatomy(meta, loaded.config),
                                     device="meta", structure_only=True)
    return plan_structure(loaded, **options)


def plan_structure(
    loaded: Any,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    max_memory: dict[int | str, int] | None = None,
    seq: int = 128,
    batch: int = 1,
    captures: Sequence[str] = (),
    capture_all: bool = False,
    stats: Sequence[str] = (),
    stats_bins: int = 64,
) -> FitPlan:
    """Plan a structure-only open (``open_model(..., structure_only=True)``)."""
    model, config = loaded.model, loaded.config
    notes: list[str] = []
    weight_bytes = _tensor_bytes(model)
    n_parameters = sum(p.numel() for p in model.parameters())
    checkpoint_dtype = _checkpoint_dtype(loaded)
    placement, devices = _placement(model, device, max_memory, notes)

    from engine.addresses import all_addresses, resolve_point

    points = list(captures)
    if capture_all:
        points += [a for a in all_addresses(loaded.anatomy)
                   if "." in a and a.rsplit(".", 1)[1] in CAPTURE_ALL_POINTS and ".attn.h" not in a]
    points = list(dict.fromkeys(resolve_point(loaded.anatomy, a).address for a in points))
    stats_points = list(dict.fromkeys(resolve_point(loaded.anatomy, a).address for a in stats))
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    element = DTYPE_BYTES[dtype]
    # attention weights grow with seq², so they are sized here rather than traced
    patterns = [a for a in points if a.endswith(".pattern")]
    points = [a for a in points if a not in patterns]
    layer_points = [a for a in all_addresses(loaded.anatomy)
                    if a.startswith("L0.") and a.rsplit(".", 1)[1] in CAPTURE_ALL_POINTS and ".attn.h" not in a]
    if points or stats_points:
        shapes, output = _meta_shapes(loaded, list(dict.fromkeys(points + stats_points + layer_points)), seq, batch)
    else:  # layers are alike: a one-layer copy sizes a layer's working set in a fraction of the time
        shapes, output = _meta_shapes(_one_layer(loaded), layer_points, seq, batch)
    # the logits are the forward's own output (counted there): capturing them keeps nothing more
    captured = _distinct_sizes(shapes, points, skip=output if loaded.is_causal_lm else None)
    captured += [batch * (1 if ".attn.h" in a else heads) * seq * seq * element for a in patterns]
    capture_bytes = sum(captured)
    layer_sizes = _distinct_sizes(shapes, layer_points)
    layer_working = sum(layer_sizes)

    kv_cache = _kv_cache_bytes(config, seq, batch, element, loaded.is_causal_lm)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    logits = batch * seq * vocab * element if loaded.is_causal_lm else 0
    scores = batch * heads * seq * seq * element  # one layer's attention weights, softmaxed in place
    forward_sizes = [logits, scores, *layer_sizes]
    largest_site = max((numel for address, (numel, _, _) in shapes.items() if address in stats_points), default=0)
    stats_transient = 5 * largest_site * 8  # at most: the float64 scratch works in row chunks of the site
    # each point's total, and the updates its accumulator queues before merging them in
    stats_state = len(stats_points) * (stats_bins * 8 + 256 + QUEUE_BYTES)

    # With --device auto the peaks are the host's: the CPU share of the weights, plus one
    # disk-offloaded layer at a time, which accelerate reads in for its forward and drops again.
    on_host = weight_bytes
    if device == "auto":
        on_host = sum(share.weight_bytes for share in devices if share.device == "cpu")
        forward_sizes.append(max((p.weight_bytes for p in placement if p.device == "disk"), default=0))
    forward_transient = sum(forward_sizes)
    tokenizer_file = _tokenizer_file_bytes(loaded, dtype)
    if not tokenizer_file:
        notes.append("no tokenizer.json at hand (a hub id, a GGUF not converted yet): the tokenizer's memory "
                     "is not counted (Gemma-3's: ~330 MiB while loading, 139 MiB kept)")
    tokenizer_bytes = TOKENIZER_RESIDENT_PER_BYTE * tokenizer_file
    tokenizer_transient = TOKENIZER_TRANSIENT_PER_BYTE * tokenizer_file
    base = on_host + RUNTIME_ALLOWANCE_BYTES + tokenizer_bytes  # what stays resident once loaded
    load_peak = base + tokenizer_transient
    if checkpoint_dtype != dtype and not loaded.source_kind.endswith("gguf"):
        ckpt_bytes = n_parameters * DTYPE_BYTES.get(checkpoint_dtype, 4)
        load_peak += ckpt_bytes
        notes.append(f"the checkpoint is {checkpoint_dtype}: loading at {dtype} converts every tensor, "
                     f"holding the mapped checkpoint ({_gib(ckpt_bytes)}) until done")
    gguf = _gguf_weights(loaded, dtype, n_parameters) if loaded.source_kind.endswith("gguf") else None
    if device == "auto" and any(share.device == "disk" for share in devices):
        notes.append("layers on disk are read back at every forward pass (slow, but exact)")
    plan = FitPlan(
        model=loaded.name, model_type=str(getattr(config, "model_type", "?")), dtype=dtype, device=device,
        seq=seq, batch=batch, n_parameters=n_parameters, weight_bytes=weight_bytes,
        checkpoint_dtype=checkpoint_dtype, devices=devices, placement=placement, kv_cache_bytes=kv_cache,
        logits_bytes=logits, layer_working_bytes=layer_working, forward_transient_bytes=forward_transient,
        captured_points=len(points) + len(patterns), capture_bytes=capture_bytes, stats_points=len(stats_points),
        stats_transient_bytes=stats_transient, stats_state_bytes=stats_state,
        runtime_allowance_bytes=RUNTIME_ALLOWANCE_BYTES, tokenizer_bytes=tokenizer_bytes,
        tokenizer_transient_bytes=tokenizer_transient, load_peak_bytes=load_peak,
        forward_peak_bytes=max(load_peak, _pass_peak(base, tokenizer_transient, forward_sizes)),
        capture_peak_bytes=max(load_peak, _pass_peak(base, tokenizer_transient, forward_sizes + captured)),
        gguf=gguf, notes=notes,
    )
    _add_attached(plan, loaded, device=device, dtype=dtype, seq=seq, batch=batch, max_memory=max_memory)
    return plan


def _resident(plan: FitPlan) -> int:
    """What stays resident once the planned model is loaded (``base`` in ``plan_structure``)."""
    on_host = plan.weight_bytes
    if plan.device == "auto":  # the cpu share less what the plan's own attached models put there
        on_host = sum(share.weight_bytes for share in plan.devices if share.device == "cpu") - sum(
            share.weight_bytes for item in plan.attached for share in item.devices if share.device == "cpu")
    return on_host + plan.runtime_allowance_bytes + plan.tokenizer_bytes


# sources being planned in this thread: a part whose model A carries a part reading the first is a loop
_planning = threading.local()


def _add_attached(plan: FitPlan, loaded: Any, *, device: str, dtype: str, seq: int, batch: int,
                  max_memory: dict[int | str, int] | None = None) -> None:
    """Fold the models that carried parts open alongside into ``plan``'s peaks."""
    folder = _carrying_folder(loaded)
    key = str(folder.resolve()) if folder is not None else str(loaded.source)
    planning: set[str] = _planning.__dict__.setdefault("sources", set())
    if key in planning:
        plan.notes.append(f"{key} carries a part whose model A needs {key} itself opened first: it will not open")
        return
    planning.add(key)
    try:
        _add_found(plan, _attached_models(loaded, dtype, plan.notes), device=device, dtype=dtype, seq=seq,
                   batch=batch, max_memory=max_memory)
    finally:
        planning.discard(key)


def _left_over(budget: dict[int | str, int] | None, devices: list[DeviceShare]) -> dict[int | str, int] | None:
    """What ``budget`` leaves on each device after the weights already placed there: model A opens
    in that (``engine.transfer.blade_folder``), so B and A together stay within the user's budget."""
    if budget is None:
        return None
    held = {share.device: share.weight_bytes for share in devices}
    return {key: max(0, size - held.get(str(key), 0)) for key, size in budget.items()}


def _add_found(plan: FitPlan, found: list[tuple[str, Any, str]], *, device: str, dtype: str, seq: int,
               batch: int, max_memory: dict[int | str, int] | None = None) -> None:
    kept = _resident(plan)
    for part, other, address in found:
        budget = _left_over(max_memory, plan.devices) if device == "auto" else None
        try:
            sub = plan_for_loaded(other, device=device, dtype=dtype, seq=seq, batch=batch, captures=[address],
                                  max_memory=budget)
        except GarageError as exc:
            plan.notes.append(f"carries {part}, whose model A '{shown(other.name)}' cannot be planned ({exc}); A is "
                              "not counted")
            continue
        resident = _resident(sub) + sum(item.resident_bytes for item in sub.attached)
        # A runs with last-position logits only, so one position of its logits, not seq of them
        pass_bytes = sub.forward_transient_bytes - sub.logits_bytes + sub.logits_bytes // sub.seq + sub.capture_bytes
        plan.load_peak_bytes = max(plan.load_peak_bytes, kept + sub.load_peak_bytes)
        kept += resident
        plan.forward_peak_bytes = max(plan.load_peak_bytes, plan.forward_peak_bytes + resident + pass_bytes)
        plan.capture_peak_bytes = max(plan.load_peak_bytes, plan.capture_peak_bytes + resident + pass_bytes)
        shares = _own_shares(sub)
        _add_shares(plan.devices, shares)
        plan.attached.append(AttachedPlan(part, other.name, str(other.source), sub.weight_bytes, resident,
                                          sub.load_peak_bytes, pass_bytes, shares))
        plan.notes.append(f"carries {part}: model A '{shown(other.name)}' ({_gib(sub.weight_bytes)} of weights) "
                          "opens alongside on the same device and runs inside every pass; the peaks and the "
                          "per-device shares include it")
        if budget is not None:
            plan.notes.append(f"model A '{shown(other.name)}' opens within what B leaves of --max-memory")


def _own_shares(sub: FitPlan) -> list[DeviceShare]:
    """``sub``'s weights per device, its own attached models' included (they open on the same device)."""
    return [DeviceShare(share.device, share.weight_bytes) for share in sub.devices]


def _add_shares(devices: list[DeviceShare], shares: list[DeviceShare]) -> None:
    """Add ``shares`` into ``devices``, device by device (a device B does not use gets its own entry)."""
    for share in shares:
        same = next((item for item in devices if item.device == share.device), None)
        if same is None:
            devices.append(DeviceShare(share.device, share.weight_bytes))
        else:
            same.weight_bytes += share.weight_bytes


def _carrying_folder(loaded: Any) -> Path | None:
    """The folder whose manifest ``open_model`` would attach for ``loaded``: the folder itself, or the folder
    holding the single weight file it was opened through (``open_model("built/model.safetensors")``)."""
    if loaded.source_kind in ("folder", "bundled-folder"):
        return Path(str(loaded.source))
    if loaded.source_kind == "safetensors":
        return Path(str(loaded.source)).parent
    return None


def _attached_models(loaded: Any, dtype: str, notes: list[str]) -> list[tuple[str, Any, str]]:
    """``(part, model A, A's address)`` for each part that opens a second model: the attached ones of an
    open model, else those the folder's manifest lists, A opened structure-only from its recorded source."""
    standing = list(getattr(loaded, "standing", None) or [])
    if standing or getattr(loaded, "detached", None):  # an open model: what it attached is what it holds
        return [(f"{item.kind} {item.part}", item.loaded_a, str(item.address_a)) for item in standing
                if getattr(item, "loaded_a", None) is not None]
    folder = _carrying_folder(loaded)
    if folder is None:
        return []
    from engine.attached import read_manifest
    from engine.loading import open_model

    try:
        entries = read_manifest(folder)
    except GarageError as exc:  # the plan still sizes B; the open itself will refuse the folder
        notes.append(f"{exc} (the parts it carries are not counted, and opening it will fail the same way)")
        return []
    found: list[tuple[str, Any, str]] = []
    for entry in entries:
        made = entry.get("model_a")
        if not isinstance(made, dict):
            continue
        part = shown(f"{entry['kind']} {entry.get('part') or entry.get('file')}")
        error = ""
        for spec in dict.fromkeys(str(made[key]) for key in ("source", "name") if made.get(key)):
            try:
                found.append((part, open_model(spec, structure_only=True, dtype=dtype),
                              str(entry.get("address_a", ""))))
                break
            except GarageError as exc:
                error = error or str(exc)
        else:
            notes.append(f"carries {part}, whose model A '{shown(made.get('name'))}' cannot be found "
                         f"({shown(error) if error else 'no source recorded'}): the folder will not open until it "
                         "is back, and A is not counted")
    return found


def _tensor_bytes(module: nn.Module) -> int:
    # parameters() and buffers() yield a tied tensor once, as it is stored once
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _checkpoint_dtype(loaded: Any) -> str:
    if loaded.source_kind.endswith("gguf"):
        return "float32"  # the conversion cache holds float32 safetensors
    stored = getattr(loaded.config, "dtype", None) or getattr(loaded.config, "torch_dtype", None) or "float32"
    return str(stored).removeprefix("torch.")


def _placement(model: nn.Module, device: str, max_memory: dict[int | str, int] | None,
               notes: list[str]) -> tuple[list[Placement], list[DeviceShare]]:
    """Where each top-level block goes: ``device_map="auto"`` as transformers computes it."""
    if device != "auto":
        if max_memory:
            notes.append("--max-memory only shapes --device auto; every weight goes to " + device)
        where = "0" if device == "cuda" else device.removeprefix("cuda:")
        total = _tensor_bytes(model)
        return [Placement("", where, total)], [DeviceShare(where, total)]
    from transformers.integrations.accelerate import _get_device_map

    if max_memory:
        visible = torch.cuda.device_count()
        missing = [key for key in max_memory if isinstance(key, int) and key >= visible]
        if missing:
            notes.append(f"GPU {', '.join(map(str, missing))} not visible on this machine; "
                         "planned without it (run the plan on the GPU box)")
    device_map = _get_device_map(model, "auto", dict(max_memory) if max_memory else None, None)  # type: ignore[arg-type]
    placement = [Placement(name, str(where), 0) for name, where in device_map.items()]
    stored: set[int] = set()  # a tied weight (embedding = lm_head) is stored once, where it first lands
    for item in placement:
        for tensor in placed_tensors(model, item.module):
            if id(tensor) not in stored:
                stored.add(id(tensor))
                item.weight_bytes += tensor.numel() * tensor.element_size()
    totals: dict[str, int] = {}
    for item in placement:
        totals[item.device] = totals.get(item.device, 0) + item.weight_bytes
    budget = {str(key): value for key, value in (max_memory or {}).items()}
    return placement, [DeviceShare(name, total, budget.get(name)) for name, total in totals.items()]


def _meta_shapes(loaded: Any, points: list[str], seq: int,
                 batch: int) -> tuple[dict[str, tuple[int, int, int]], int | None]:
    """``{address: (numel, element bytes, identity)}`` from a meta-device forward with capture hooks,
    and the identity of the forward's logits (``None`` when it returns none).

    The identity groups points that see one tensor object (``L3.out`` is ``L4.in``), which a real
    capture keeps once. The trace runs 2 rows of 4 tokens and scales by ``batch × seq``: every
    point counted here is ``[batch, seq, width]`` (attention patterns are sized separately), and
    a short trace keeps a 70B plan under a second. Two rows, because transformers reads a value
    off batch-1 position ids (packed-sequence detection), which a meta tensor has not.
    """
    from engine.addresses import resolve_point
    from engine.hooks import SiteHooks, installed
    from engine.sites import head_view, site_for

    kept: dict[str, Tensor] = {}
    bundles: dict[Any, SiteHooks] = {}
    for address in points:
        target = resolve_point(loaded.anatomy, address)
        site = site_for(loaded.anatomy, target)
        bundle = bundles.setdefault(site, SiteHooks(site))
        bundle.observers.append(head_view(target, loaded.anatomy, _keeper(kept, address)))
    rows, tokens = 2, 4
    ids = torch.zeros((rows, tokens), dtype=torch.long, device="meta")
    with torch.no_grad(), installed(loaded.model, bundles):
        try:
            output = loaded.model(input_ids=ids)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            raise PlanError(f"cannot trace {loaded.name} on the meta device to size its captures: "
                            f"{str(exc).splitlines()[0]}; plan without --at/--capture-all") from exc
    # a view (lm_head's input is a slice of the final norm's output) shares its base's storage
    bases = {address: value if value._base is None else value._base for address, value in kept.items()}
    logits = getattr(output, "logits", None)
    logits_id = None if logits is None else id(logits if logits._base is None else logits._base)
    return {address: (base.numel() * batch * seq // (rows * tokens), base.element_size(), id(base))
            for address, base in bases.items()}, logits_id


def _keeper(kept: dict[str, Tensor], address: str) -> Callable[[Tensor], None]:
    """An observer that keeps the value it sees under ``address`` (alive, so ids stay unique)."""

    def keep(value: Tensor) -> None:
        kept[address] = value

    return keep


def _one_layer(loaded: Any) -> Any:
    """The same architecture with one layer, on the meta device (for tracing a layer's shapes)."""
    import copy
    from types import SimpleNamespace

    from engine.anatomy import build_anatomy
    from engine.loading import model_class as _model_class

    config = copy.deepcopy(loaded.config)
    config.num_hidden_layers = 1
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:1]
    with torch.device("meta"):
        model = _model_class(config).from_config(config, dtype=next(loaded.model.parameters()).dtype)
    return SimpleNamespace(name=loaded.name, model=model, anatomy=build_anatomy(model, config))


def _distinct_sizes(shapes: dict[str, tuple[int, int, int]], points: Sequence[str],
                    skip: int | None = None) -> list[int]:
    """Bytes of each distinct tensor ``points`` see, leaving out the tensor ``skip`` identifies."""
    seen: dict[int, int] = {}
    for address in points:
        if address in shapes:
            numel, size, identity = shapes[address]
            if identity != skip:
                seen[identity] = numel * size
    return list(seen.values())


def _pass_peak(resident: int, reusable: int, sizes: Sequence[int]) -> int:
    """Peak RSS of a pass allocating tensors of ``sizes`` on top of ``resident`` bytes, in a process
    whose heap still holds ``reusable`` freed bytes (the load's transient).

    Tensors below the C allocator's largest mmap threshold are carved from the heap, so they fill
    the freed bytes before the process grows; larger ones are always fresh mappings.
    """
    large = sum(size for size in sizes if size >= MMAP_THRESHOLD_BYTES)
    small = sum(size for size in sizes if size < MMAP_THRESHOLD_BYTES)
    return resident + large + max(reusable, small)


def _tokenizer_file_bytes(loaded: Any, dtype: str) -> int:
    """The size of the ``tokenizer.json`` the model would load (0 when none is at hand: a hub id,
    a GGUF not converted yet); only the file's size is read, never its content."""
    folders: list[Path] = []
    if getattr(loaded, "weights_path", None) is not None:
        weights = Path(loaded.weights_path)
        folders.append(weights if weights.is_dir() else weights.parent)
    source = Path(str(loaded.source))
    if loaded.source_kind.endswith("gguf"):
        from engine.gguf_cache import cached_folder_for

        folders += [cached_folder_for(source, dtype), cached_folder_for(source)]
    elif loaded.source_kind != "hub":
        folders.append(source if source.is_dir() else source.parent)
    for folder in folders:
        try:
            return (folder / "tokenizer.json").stat().st_size
        except OSError:
            continue
    return 0


def _kv_cache_bytes(config: Any, seq: int, batch: int, element: int, causal: bool) -> int:
    """Keys and values for every layer: 2 × layers × batch × seq × kv_heads × head_dim."""
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    if not causal or not layers or not heads:
        return 0  # an encoder keeps no cache
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * layers * batch * seq * kv_heads * head_dim * element


def _gguf_weights(loaded: Any, dtype: str, n_parameters: int) -> GgufWeights:
    """Tensor types and byte counts from the GGUF header; the tensor data is mapped, never read."""
    from engine.gguf_header import tensor_infos

    path = Path(loaded.source)
    infos = tensor_infos(path)
    types: dict[str, int] = {}
    for info in infos:
        types[info.type_name] = types.get(info.type_name, 0) + 1
    from engine.gguf_cache import _ROW_INDEPENDENT, ROW_BLOCK_BYTES

    # the cache streams tensor by tensor (large row-independent ones in blocks): the mapped file,
    # plus one tensor in flight as float32, its converted copy and the bytes written
    in_flight = max((min(info.n_elements * 4, ROW_BLOCK_BYTES) if info.name in _ROW_INDEPENDENT
                     else info.n_elements * 4 for info in infos), default=0)
    return GgufWeights(
        path=str(path), quantised_bytes=sum(info.n_bytes for info in infos),
        dequantised_bytes=n_parameters * DTYPE_BYTES[dtype], tensor_types=dict(sorted(types.items())),
        conversion_peak_bytes=path.stat().st_size + 3 * in_flight,
    )


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"
