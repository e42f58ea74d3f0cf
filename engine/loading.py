"""Open a model from a bundled name, local folder, .safetensors, .gguf or hub id.

Progress goes to an optional ``progress(stage, fraction)`` callback and cancellation comes
through an optional ``threading.Event``; the engine never draws anything itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from engine.anatomy import Anatomy, build_anatomy
from engine.bundled import BUNDLED
from engine.errors import (
    Cancelled,
    DeviceError,
    GarageError,
    HubUnreachableError,
    ModelLoadError,
)
from engine.folder_check import check_config_file, check_tokenizer_file, check_weights_present
from engine.gguf_cache import cached_folder_for, check_entry, converted_folder
from engine.limits import check_config_sizes
from engine.locate import ModelSource, locate  # noqa: F401  (locate: re-exported for the loader's callers)
from engine.tensors import dtype_from_name

Progress = Callable[[str, float | None], None]
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """An open model with everything the garage needs to talk about it."""

    name: str
    source: str
    source_kind: str  # bundled-gguf | bundled-folder | folder | safetensors | gguf | hub | config
    model: nn.Module
    config: Any
    tokenizer: Any
    anatomy: Anatomy
    device: str
    dtype: str
    structure_only: bool
    weights_path: Path | None = None  # the safetensors folder or file holding the weights
    extra: dict[str, Any] = field(default_factory=dict)
    # interventions every ``engine.run.run`` of this model applies first: parts its folder carries
    # beside the weights (a blade baked into a hybrid; ``engine.attached``)
    standing: list[Any] = field(default_factory=list)
    # parts the folder carries that this open left off (``attach=False``): ``engine.run`` refuses to run it
    detached: list[str] = field(default_factory=list)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @property
    def input_device(self) -> torch.device:
        model: Any = self.model  # an HF PreTrainedModel; nn.Module's typing would hide the method
        embeddings: Any = model.get_input_embeddings()
        hook: Any = getattr(embeddings, "_hf_hook", None)  # offloaded to disk: weights on meta, run elsewhere
        if embeddings.weight.device.type == "meta" and getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        return embeddings.weight.device

    @property
    def is_causal_lm(self) -> bool:
        family = self.anatomy.family
        return family is not None and family.lm_head is not None and hasattr(self.model, "lm_head")


def config_hash(config: Any) -> str:
    """A digest of the architecture-relevant config, stable across loads and file formats."""
    doc = config.to_dict()
    for key in ("transformers_version", "_name_or_path", "quantization_config", "dtype", "torch_dtype",
                "architectures", "_attn_implementation_autoset", "_commit_hash"):
        doc.pop(key, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _notify(progress: Progress | None, stage: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(stage, fraction)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("loading was cancelled; nothing was kept")


def check_device(device: str, dtype: str) -> None:
    """Refuse a device or dtype this machine cannot provide, before any weight is read."""
    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise DeviceError(f"unknown device '{device}'; use one of: {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype '{dtype}'; use one of: {', '.join(DTYPES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device '{device}' asked for, but no CUDA GPU is visible to torch; use --device cpu"
        )


def _placement(device: str, max_memory: dict[int | str, int | str] | None = None,
               offload_folder: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that place the weights."""
    if device == "auto":
        # accelerate spreads layers over every GPU, then CPU, then disk (the offload folder),
        # within max_memory; engine.fit_plan computes the same map before loading.
        budget = {"max_memory": dict(max_memory)} if max_memory else {}
        return {"device_map": "auto", **budget, **({"offload_folder": offload_folder} if offload_folder else {})}
    return {"device_map": {"": device}}


def _quiet_transformers() -> None:
    """transformers' own tqdm bars and warnings would scribble over the CLI and the TUI."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _model_class(config: Any):
    import transformers

    from engine.families import family_for

    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return transformers.AutoModelForCausalLM
    table = family_for(getattr(config, "model_type", None))
    if table is not None and table.lm_head is not None:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/", 1)[0]
    try:
        socket.getaddrinfo(host, 443)
        with socket.create_connection((host, 443), timeout=3):
            return True
    except OSError:
        return False


def _load_config(source: ModelSource) -> Any:
    import transformers

    try:
        if source.kind == "config":
            doc = check_config_file(source.path)
            if not isinstance(doc, dict):
                raise ModelLoadError(f"{source.file} is not a transformers config (expected a JSON object)")
            model_type = doc.pop("model_type", None)
            if not model_type:
                raise ModelLoadError(f"{source.file} has no model_type; it is not a transformers config")
            return transformers.AutoConfig.for_model(model_type, **doc)
        if source.kind in ("gguf", "bundled-gguf"):
            return transformers.AutoConfig.from_pretrained(source.local_folder, gguf_file=source.path.name)
        if source.kind == "hub":
            return transformers.AutoConfig.from_pretrained(str(source.hub_id))
        return transformers.AutoConfig.from_pretrained(source.local_folder)
    except GarageError:
        raise
    except (ValueError, KeyError, OSError, TypeError, StrictDataclassError) as exc:
        where = source.file or source.folder or source.hub_id
        raise ModelLoadError(f"cannot read the model config at {where}: {_summary(exc)}") from exc


def _summary(exc: BaseException, limit: int = 200) -> str:
    """One short line from a library error: its telling line, cut at ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[-1] if lines[0].endswith(":") else lines[0]
    line = line.removeprefix("ValueError: ")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def open_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    structure_only: bool = False,
    attn_implementation: str | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    attach: bool = True,
) -> LoadedModel:
    """Open ``spec`` with weights (or only its structure, on the meta device).

    With ``device="auto"``, ``max_memory`` (``{0: "20GiB", "cpu": "30GiB"}``) bounds each device
    and what does not fit is offloaded to ``offload_folder`` (default: under the cache folder).
    ``attach=False`` leaves off the parts the folder carries (``engine.attached``): for callers
    that read only the weights; the model then refuses to run.
    """
    check_device(device, dtype)
    _quiet_transformers()
    source = locate(spec)
    if source.kind == "hub" and not _hub_reachable():
        raise HubUnreachableError(
            f"cannot reach the model hub to fetch '{spec}' (offline); pass a local folder, "
            f".safetensors or .gguf path, or a bundled name ({', '.join(BUNDLED)})"
        )
    _notify(progress, "reading config", 0.0)
    weights_source = source
    if source.kind in ("gguf", "bundled-gguf"):
        cached = cached_folder_for(source.path, dtype)
        # Parsing GGUF metadata for the config takes seconds; the cached folder's config is instant.
        if not structure_only or check_entry(cached).ok:
            weights_source = ModelSource(source.name, "folder", folder=converted_folder(
                source.path, progress=progress, cancel=cancel, dtype=dtype), checked_cache=True)
    config = _load_config(weights_source)
    check_config_sizes(config, f"the config of {spec}")  # before any module is made, meta ones too
    _check_cancel(cancel)
    if structure_only or source.kind == "config":
        return _open_structure(source, config, dtype)
    _check_cancel(cancel)
    _notify(progress, "loading weights", 0.3)
    if device == "auto" and offload_folder is None:
        from engine.storage import cache_dir

        offload_folder = cache_dir() / "offload" / source.name
    model = _load_weights(weights_source, config, device, dtype, attn_implementation,
                          max_memory=max_memory, offload_folder=str(offload_folder) if offload_folder else None,
                          weights_only=not attach)
    _check_cancel(cancel)
    _notify(progress, "loading tokenizer", 0.8)
    tokenizer = _load_tokenizer(weights_source)
    model.eval()
    anatomy = build_anatomy(model, model.config)
    _notify(progress, "ready", 1.0)
    weights_path = weights_source.file if weights_source.kind == "safetensors" else weights_source.folder
    loaded = LoadedModel(
        name=source.name, source=str(source.hub_id or source.file or source.folder), source_kind=source.kind,
        model=model, config=model.config, tokenizer=tokenizer, anatomy=anatomy, device=device, dtype=dtype,
        structure_only=False, weights_path=weights_path,
    )
    if weights_source.folder is not None and weights_source.hub_id is None:
        from engine.attached import OpenOptions, attach_folder

        options = OpenOptions(device, dtype, max_memory=max_memory,
                              offload_folder=str(offload_folder) if offload_folder else None)
        attach_folder(loaded, weights_source.folder, options, attach=attach)
    return loaded


def _open_structure(source: ModelSource, config: Any, dtype: str) -> LoadedModel:
    model_class = _model_class(config)
    with torch.device("meta"):
        model = model_class.from_config(config, dtype=dtype_from_name(dtype))
    anatomy = build_anatomy(model, config)
    return LoadedModel(
        name=source.name, source=str(source.hub_id or source.file or source.folder), source_kind=source.kind,
        model=model, config=config, tokenizer=None, anatomy=anatomy, device="meta", dtype=dtype,
        structure_only=True,
    )


def _load_weights(source: ModelSource, config: Any, device: str, dtype: str, attn_implementation: str | None,
                  max_memory: dict[int | str, int | str] | None = None, offload_folder: str | None = None,
                  weights_only: bool = False) -> nn.Module:
    model_class = _model_class(config)
    kwargs: dict[str, Any] = {"dtype": dtype_from_name(dtype), **_placement(device, max_memory, offload_folder)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if source.kind == "safetensors":
            return _load_single_file(model_class, source.path, config, kwargs)
        where = source.hub_id or str(source.folder)
        if source.hub_id is None and source.folder is not None:
            # a pickle-only folder is named, never unpickled; weights-only callers pass a damaged parts manifest
            check_weights_present(source.folder, lenient=weights_only)
            if not source.checked_cache:  # parsing Gemma's 31 MB tokenizer.json in Python costs ~2 CPU-s
                check_tokenizer_file(source.folder)
        return model_class.from_pretrained(where, trust_remote_code=False, **kwargs)
    except GarageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load weights of '{source.name}': {str(exc).splitlines()[0]}") from exc


def _load_single_file(model_class, path: Path, config: Any, kwargs: dict[str, Any]) -> nn.Module:
    from safetensors.torch import load_file

    if path.name == "model.safetensors":
        return model_class.from_pretrained(path.parent, trust_remote_code=False, **kwargs)
    model = model_class.from_config(config, dtype=kwargs["dtype"])
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [key for key in missing if key not in tied and not key.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{path} does not match its config.json: {len(missing)} missing and {len(unexpected)} unexpected "
            f"tensors (first: {(missing + unexpected)[0]}); pass the checkpoint that belongs to this config"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    device_map = kwargs.get("device_map", {})
    if device_map == "auto":
        from accelerate import dispatch_model, infer_auto_device_map

        plan = infer_auto_device_map(model, max_memory=kwargs.get("max_memory"),
                                     no_split_module_classes=list(model._no_split_modules or []))
        return dispatch_model(model, plan, offload_dir=kwargs.get("offload_folder"))
    if isinstance(device_map, dict) and "" in device_map:
        model.to(device_map[""])
    return model


def _load_tokenizer(source: ModelSource) -> Any:
    import transformers

    where = source.hub_id or source.folder
    # Without an ``added_tokens_decoder`` in tokenizer_config.json, transformers parses the whole
    # tokenizer.json in Python only to read its added tokens (~1.3 CPU-s for Gemma's 262k vocab),
    # then the tokenizers library reads the same file, added tokens included. A cache entry's
    # tokenizer.json is complete (written by save_pretrained), so the Python pass is skipped;
    # tests/test_gemma.py checks the result equals the plain load on Gemma.
    fast: dict[str, Any] = {"added_tokens_decoder": {}} if source.checked_cache else {}
    try:
        return transformers.AutoTokenizer.from_pretrained(where, **fast)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a model without tokenizer files still opens; prompts then need token ids


# Public names for what other rooms reuse (the build bench, the parts bin, the fit planner).
model_class = _model_class
quiet_transformers = _quiet_transformers


def hub_reachable() -> bool:
    """Whether the model hub answers (looked up at call time, so tests can stand in for it)."""
    return _hub_reachable()
