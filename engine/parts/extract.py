"""Pull a part's tensors out of a loaded model or a safetensors checkpoint, and serialise it.

The file is deterministic: tensors sorted by name, contiguous, one metadata key holding
sorted JSON with no timestamps or paths. So the same part extracted from a loaded model or
straight from its checkpoint gives the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.attached import weight_files
from engine.parts.errors import PartError
from engine.parts.record import TensorEntry

if TYPE_CHECKING:  # annotations only: hashing and reading part files must not pay the torch import
    from torch import Tensor, nn

    from engine.parts.plan import PartPlan

META_KEY = "garage_part"


def _cut(tensor: Tensor, entry: TensorEntry) -> Tensor:
    if entry.slice is None:
        return tensor
    dim, start, stop = entry.slice
    return tensor.narrow(dim, start, stop - start)


def tensors_from_model(plan: PartPlan, model: nn.Module) -> dict[str, Tensor]:
    """The part's tensors copied out of a loaded model (CPU, contiguous, owning their memory)."""
    state: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors: dict[str, Tensor] = {}
    for entry in plan.tensors:
        source = state.get(entry.source)
        if source is None:
            raise PartError(f"the loaded model has no tensor {entry.source}; reopen the model and try again")
        if source.device.type == "meta":
            from engine.devices import offloaded_tensor

            source = offloaded_tensor(model, entry.source)  # disk-offloaded by accelerate: read it back
            if source is None:
                raise PartError("this model was opened structure-only (no weights); open it with weights to extract")
        tensors[entry.name] = _cut(source.detach(), entry).to("cpu").contiguous().clone()
    return tensors


class CheckpointIndex:
    """Which safetensors file of a checkpoint holds which tensor; reads headers only."""

    def __init__(self, location: Path):
        from engine.checks import check_safetensors

        files = [location] if location.is_file() else weight_files(location)
        if not files:
            raise PartError(f"{location} holds no .safetensors file; pass a model folder or .safetensors file")
        self.where: dict[str, Path] = {}
        for path in files:
            header = check_safetensors(path)
            for key in header:
                if key != "__metadata__":
                    self.where.setdefault(key, path)
        self.location = location

    def key_for(self, source: str, base_path: str, tied_to: str | None) -> str:
        """The checkpoint's name for model tensor ``source`` (checkpoints may drop or add the base prefix)."""
        candidates = [source]
        if base_path and source.startswith(base_path + "."):
            candidates.append(source[len(base_path) + 1:])
        candidates += [f"{prefix}.{source}" for prefix in ("model", "bert", "transformer")]
        for candidate in candidates:
            if candidate in self.where:
                return candidate
        if tied_to is not None:
            return self.key_for(tied_to, base_path, None)
        raise PartError(f"checkpoint {self.location} has no tensor {source}; is it the checkpoint of this config?")


def tensors_from_checkpoint(plan: PartPlan, index: CheckpointIndex, base_path: str,
                            tied: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The part's tensors read through ``safe_open``: only their bytes (only the slice, for heads)."""
    from safetensors import safe_open

    tensors: dict[str, Tensor] = {}
    by_file: dict[Path, list[tuple[TensorEntry, str]]] = {}
    for entry in plan.tensors:
        key = index.key_for(entry.source, base_path, (tied or {}).get(entry.source))
        by_file.setdefault(index.where[key], []).append((entry, key))
    for path, wanted in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            for entry, key in wanted:
                piece = handle.get_slice(key)
                if entry.slice is None:
                    tensor = piece[:]
                else:
                    dim, start, stop = entry.slice
                    index_tuple = tuple(slice(None) for _ in range(dim)) + (slice(start, stop),)
                    tensor = piece[index_tuple]
                if tuple(tensor.shape) != entry.shape:
                    raise PartError(f"{key} in {path} has shape {list(tensor.shape)}, expected {list(entry.shape)}; "
                                    "the checkpoint does not match its config")
                tensors[entry.name] = tensor.contiguous()
    return tensors


def file_metadata(plan: PartPlan, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """What goes inside the file: enough to rebuild the part without the catalog."""
    return {
        "format": plan.fragment["format"], "address": plan.address, "kind": plan.kind,
        "family": plan.family, "model_type": plan.model_type, "config_hash": plan.config_hash,
        "dtype": _dtype_of(tensors), "tensors": [entry.to_dict() for entry in plan.tensors],
        "fragment": plan.fragment,
    }


def _dtype_of(tensors: dict[str, Tensor]) -> str:
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    return dtypes[0] if len(dtypes) == 1 else "+".join(dtypes)


def serialize(plan: PartPlan, tensors: dict[str, Tensor]) -> tuple[bytes, dict[str, Any]]:
    """The part file's bytes (deterministic) and the metadata written inside it."""
    from safetensors.torch import save

    metadata = file_metadata(plan, tensors)
    ordered = {name: tensors[name].contiguous() for name in sorted(tensors)}
    payload = save(ordered, metadata={META_KEY: json.dumps(metadata, sort_keys=True, separators=(",", ":"))})
    return payload, metadata


def sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_part_file(payload: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a part file's bytes (safetensors only; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from engine.safe_parse import BadDocumentError, loads_json
    from engine.safetensors_check import BadSafetensorsError, check_bytes

    try:
        header = check_bytes(payload, "part file")
        metadata = loads_json((header.get("__metadata__") or {}).get(META_KEY, "{}"), "part metadata")
        if not isinstance(metadata, dict):
            raise ValueError("its metadata is not an object")
        tensors = load(payload)
    except (BadSafetensorsError, BadDocumentError) as exc:
        detail = str(exc).split(": ", 1)[-1].removesuffix("; re-download or re-export it")
        raise PartError(f"part file is not a readable safetensors file ({detail}); run `garage parts verify`") from exc
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise PartError(f"part file is not a readable safetensors file ({exc}); run `garage parts verify`") from exc
    return tensors, metadata


def params_of(tensors: dict[str, Tensor]) -> int:
    return int(sum(t.numel() for t in tensors.values()))


def dtype_name(tensors: dict[str, Tensor]) -> str:
    return _dtype_of(tensors)


__all__ = ["CheckpointIndex", "read_part_file", "serialize", "sha256_file", "tensors_from_checkpoint",
           "tensors_from_model", "params_of", "dtype_name"]
