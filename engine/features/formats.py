"""Reading and writing sparse coders in the formats people publish them in — never a pickle.

* SAELens: a folder with ``cfg.json`` + ``sae_weights.safetensors`` (+ optional
  ``sparsity.safetensors``), architectures standard, topk, batchtopk, jumprelu, gated,
  transcoder, skip_transcoder (and jumprelu_transcoder).
* EleutherAI sparsify: a folder with ``cfg.json`` + ``sae.safetensors`` (TopK), one per hookpoint.

Export writes the SAELens layout. A SAELens import keeps its exact tensors and cfg.json, so
import → export is byte-identical in tensors and equal in config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import ARCHITECTURES, CoderConfig, SparseCoder
from engine.features.errors import FeatureFormatError
from engine.storage import atomic_output_dir

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CFG = "cfg.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


@dataclass
class ImportedCoder:
    """A coder read from disk, with the sparsity log it came with (if any)."""

    coder: SparseCoder
    path: Path
    sparsity: Tensor | None = None


def refuse_pickle(path: Path) -> None:
    """Tensors stored as a pickle could run code when read; say how to convert instead."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FeatureFormatError(
            f"{path.name} is a pickle ({path.suffix}); the garage never unpickles files. Convert it first, e.g. "
            "python -c \"import torch, safetensors.torch as s; "
            f"s.save_file(torch.load('{path.name}', weights_only=True), 'sae_weights.safetensors')\""
        )


def read_coder(path: str | Path) -> ImportedCoder:
    """Read a SAELens or sparsify folder (told apart by its weights file)."""
    folder = Path(path).expanduser()
    refuse_pickle(folder)
    if not folder.exists():
        raise FeatureFormatError(f"{folder} does not exist; pass a folder holding cfg.json and the weights")
    if folder.is_file():
        folder = folder.parent
    pickles = [p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES] if folder.is_dir() else []
    if (folder / SAELENS_WEIGHTS).is_file():
        return read_saelens(folder)
    if (folder / SPARSIFY_WEIGHTS).is_file():
        return read_sparsify(folder)
    if pickles:
        refuse_pickle(pickles[0])
    raise FeatureFormatError(f"{folder} holds neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} "
                             "(sparsify); point at the folder with cfg.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FeatureFormatError(f"{path} is missing; a coder folder needs its cfg.json") from exc
    except (OSError, ValueError) as exc:
        raise FeatureFormatError(f"{path} is not readable JSON ({exc}); fix or re-download it") from exc
    if not isinstance(doc, dict):
        raise FeatureFormatError(f"{path} is not a JSON object")
    return doc


def _read_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.safetensors_check import check_file

    if path.is_file():
        check_file(path)  # a lying header (dtype/span, overflowing shape, bad offsets) is one named error
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FeatureFormatError(f"{path} is not a readable safetensors file ({exc})") from exc


def saelens_config(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> CoderConfig:
    """Our view of a SAELens cfg.json (v5 flat or v6 with ``metadata``)."""
    architecture = str(cfg.get("architecture", "standard"))
    k = cfg.get("k")
    if architecture == "standard" and cfg.get("activation_fn_str") == "topk":
        architecture = "topk"  # SAELens v5 kept TopK as an activation of the standard architecture
        k = (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    if architecture not in ARCHITECTURES:
        raise FeatureFormatError(f"SAELens architecture '{architecture}' is not supported; "
                                 f"this garage reads: {', '.join(ARCHITECTURES)}")
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        raise FeatureFormatError("this topk SAE rescales activations by decoder norm (a training-time form); "
                                 "save it for inference in SAELens first (it folds the norms)")
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    d_in = int(cfg.get("d_in", tensors["W_enc"].shape[0] if "W_enc" in tensors else 0))
    d_sae = int(cfg.get("d_sae", tensors["W_enc"].shape[-1] if "W_enc" in tensors else 0))
    d_out = int(cfg.get("d_out", d_in)) if architecture in ("transcoder", "skip_transcoder",
                                                            "jumprelu_transcoder") else d_in
    return CoderConfig(
        architecture=architecture, d_in=d_in, d_sae=d_sae, d_out=d_out,
        k=float(k) if k is not None else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=str(cfg.get("normalize_activations") or "none"),
        reshape_activations=str(cfg.get("reshape_activations") or "none"),
        hook_name=cfg.get("hook_name") or meta.get("hook_name"),
        hook_name_out=cfg.get("hook_name_out"),
        source_format="saelens", raw=cfg,
    )


def read_saelens(folder: Path) -> ImportedCoder:
    cfg = _read_json(folder / CFG)
    tensors = _read_tensors(folder / SAELENS_WEIGHTS)
    config = saelens_config(cfg, tensors)
    sparsity = None
    if (folder / SAELENS_SPARSITY).is_file():
        sparsity = _read_tensors(folder / SAELENS_SPARSITY).get("sparsity")
    try:
        coder = SparseCoder(config, tensors)
    except FeatureFormatError:
        raise
    except Exception as exc:  # a FeatureError with shapes named
        raise FeatureFormatError(f"{folder}: {exc}") from exc
    return ImportedCoder(coder, folder, sparsity)


def read_sparsify(folder: Path) -> ImportedCoder:
    """A sparsify folder: ``encoder.weight`` [d_sae, d_in], ``encoder.bias``, ``W_dec`` [d_sae, d_in], ``b_dec``."""
    cfg = _read_json(folder / CFG)
    raw = _read_tensors(folder / SPARSIFY_WEIGHTS)
    activation = str(cfg.get("activation", "topk"))
    if activation != "topk":
        raise FeatureFormatError(f"sparsify activation '{activation}' is not supported; only TopK coders are read")
    if "W_dec" not in raw:
        raise FeatureFormatError(f"{folder / SPARSIFY_WEIGHTS} has no W_dec (an encoder-only save); re-save it "
                                 "with its decoder")
    for key in ("encoder.weight", "encoder.bias", "b_dec"):
        if key not in raw:
            raise FeatureFormatError(f"{folder / SPARSIFY_WEIGHTS} lacks {key}; it is not a sparsify SparseCoder")
    transcode = bool(cfg.get("transcode", False))
    d_in = int(cfg.get("d_in", raw["encoder.weight"].shape[1]))
    d_sae = int(raw["encoder.weight"].shape[0])
    tensors = {"W_enc": raw["encoder.weight"].T.contiguous(), "b_enc": raw["encoder.bias"],
               "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    if raw.get("W_skip") is not None:
        tensors["W_skip"] = raw["W_skip"]
    architecture = ("skip_transcoder" if "W_skip" in tensors else "transcoder") if transcode else "topk"
    if "W_skip" in tensors and not transcode:
        architecture = "skip_transcoder"  # a skip connection on an autoencoder is still input → output
    k = cfg.get("k")
    if not k:
        raise FeatureFormatError(f"{folder / CFG} has no k; a sparsify TopK coder needs it")
    config = CoderConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, d_out=int(tensors["W_dec"].shape[1]),
                         k=float(k), apply_b_dec_to_input=not transcode, hook_name=folder.name,
                         source_format="sparsify", activation=activation, raw=cfg)
    return ImportedCoder(SparseCoder(config, tensors), folder)


def saelens_cfg_of(coder: SparseCoder) -> dict[str, Any]:
    """The SAELens cfg.json for ``coder``: the original one when it came from SAELens."""
    config = coder.config
    if config.source_format == "saelens" and config.raw:
        return dict(config.raw)
    architecture = config.architecture
    if config.source_format == "sparsify":
        # sparsify subtracts b_dec before encoding unless transcoding, and has ReLU-then-TopK (equal
        # dense output to SAELens's TopK-then-ReLU), so it maps onto SAELens topk/transcoder.
        architecture = "topk" if not config.is_transcoder else config.architecture
    doc: dict[str, Any] = {
        "architecture": architecture, "d_in": config.d_in, "d_sae": config.d_sae, "dtype": _dtype_name(coder),
        "device": "cpu", "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": config.normalize_activations, "reshape_activations": config.reshape_activations,
        "metadata": {"hook_name": config.hook_name},
    }
    if config.k is not None and architecture in ("topk", "batchtopk"):
        doc["k"] = int(config.k) if float(config.k).is_integer() else config.k
    if config.is_transcoder:
        doc["d_out"] = config.d_out
        doc["hook_name_out"] = config.hook_name_out or ""
    return doc


def _dtype_name(coder: SparseCoder) -> str:
    return str(coder.W_enc.dtype).replace("torch.", "")


def saelens_tensors_of(coder: SparseCoder) -> dict[str, Tensor]:
    """The tensors SAELens expects in ``sae_weights.safetensors`` (contiguous, SAELens names)."""
    return {name: t.contiguous() for name, t in coder.tensors.items()}


def export_saelens(coder: SparseCoder, folder: str | Path, sparsity: Tensor | None = None) -> Path:
    """Write ``coder`` as a SAELens folder (atomically: the folder appears whole or not at all)."""
    from safetensors.torch import save_file

    target = Path(folder).expanduser()
    if coder.config.source_format == "sparsify" and coder.config.architecture == "skip_transcoder" \
            and coder.config.apply_b_dec_to_input:
        raise FeatureFormatError("a sparsify autoencoder with a skip connection has no SAELens equivalent; "
                                 "keep it in the sparsify layout")
    with atomic_output_dir(target) as tmp:
        save_file(saelens_tensors_of(coder), str(tmp / SAELENS_WEIGHTS))
        (tmp / CFG).write_text(json.dumps(saelens_cfg_of(coder), indent=2) + "\n", encoding="utf-8")
        if sparsity is not None:
            save_file({"sparsity": sparsity.contiguous()}, str(tmp / SAELENS_SPARSITY))
    return target


def write_saelens_folder(folder: Path, cfg: dict[str, Any], tensors: dict[str, Tensor],
                         sparsity: Tensor | None = None) -> Path:
    """Write a raw SAELens folder (tests and the trainer use it to make fixtures and checkpoints)."""
    from safetensors.torch import save_file

    with atomic_output_dir(folder) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / SAELENS_WEIGHTS))
        (tmp / CFG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if sparsity is not None:
            save_file({"sparsity": sparsity}, str(tmp / SAELENS_SPARSITY))
    return folder


def tensors_equal_bytes(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Same names, dtypes, shapes and bytes."""
    if a.keys() != b.keys():
        return False
    return all(a[n].dtype == b[n].dtype and a[n].shape == b[n].shape
               and bytes(a[n].contiguous().view(torch.uint8).flatten().numpy())
               == bytes(b[n].contiguous().view(torch.uint8).flatten().numpy()) for n in a)
