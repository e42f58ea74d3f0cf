"""Captured states on disk: safetensors files with JSON metadata, never pickle.

``save_tensors``/``load_tensors`` are the raw layer (used by ``garage run --logits-out`` and
``garage capture``); a *snapshot* is one run's captured states plus the metadata needed to
compare it with another run: model name and config hash, prompt, token ids, addresses,
interventions, dtype and creation time. ``diff_snapshots`` compares two runs address by address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import Tensor

from engine.errors import GarageError, StorageError
from engine.storage import atomic_output_path

META_KEY = "garage"
SNAPSHOT_FORMAT = "garage-snapshot/1"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` (names kept as given) and ``metadata`` atomically to ``path``."""
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise StorageError(f"output {target} should end in .safetensors")
    plain = independent_tensors(tensors)
    with atomic_output_path(target) as staging:
        save_file(plain, str(staging), metadata={META_KEY: json.dumps(metadata)})
    return target


def independent_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses shared storage).

    Overlapping capture points are one tensor seen twice (``L10.out`` is ``L11.in``) or a view
    of another (a head's pattern inside the layer's): any tensor whose storage was already
    taken is cloned, so the file holds independent copies whatever the addresses.
    """
    plain: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        value = tensor.detach().contiguous().cpu()
        if value.untyped_storage().data_ptr() in storages:
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        plain[name] = value
    return plain


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata written by ``save_tensors``; refuses anything else clearly."""
    from safetensors import safe_open

    from engine.checks import check_safetensors

    source = Path(path)
    if not source.is_file():
        raise StorageError(f"no such file: {source}")
    check_safetensors(source)
    with safe_open(str(source), framework="pt") as handle:
        raw_meta = (handle.metadata() or {}).get(META_KEY, "{}")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    from engine.safe_parse import loads_json

    metadata = loads_json(raw_meta, f"the metadata of {source}")
    if not isinstance(metadata, dict):
        raise StorageError(f"{source} has garage metadata that is not an object; it was not written by the garage")
    return tensors, metadata


@dataclass
class Snapshot:
    tensors: dict[str, Tensor]  # canonical address → captured value
    metadata: dict[str, Any]

    @property
    def addresses(self) -> list[str]:
        return list(self.metadata.get("addresses") or self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata, "shapes": {a: list(t.shape) for a, t in self.tensors.items()}}


def all_points(anatomy) -> list[str]:
    """The residual-stream story of a run: embedding, then each layer's attention, MLP and output."""
    points = ["embed.out"] if "embed" in anatomy.by_address else []
    for layer in range(anatomy.n_layers):
        points += [f"L{layer}.attn.out", f"L{layer}.mlp.out", f"L{layer}.out"]
    return points


def take_snapshot(
    loaded, prompt: str, addresses: Sequence[str] | None = None, interventions: Sequence = ()
) -> Snapshot:
    """Run ``prompt`` once and keep the states at ``addresses`` (default: ``all_points``)."""
    from engine.capture import capture_prompt

    wanted = list(addresses) if addresses else all_points(loaded.anatomy)
    captured, token_ids = capture_prompt(loaded, prompt, wanted, interventions)
    metadata = {
        "format": SNAPSHOT_FORMAT, "model": loaded.name, "config_hash": loaded.config_hash,
        "prompt": prompt, "token_ids": token_ids, "addresses": list(captured),
        "interventions": [i.to_dict() for i in interventions], "dtype": str(loaded.dtype).replace("torch.", ""),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Snapshot(captured, metadata)


def save_snapshot(path: str | Path, snapshot: Snapshot) -> Path:
    return save_tensors(path, snapshot.tensors, snapshot.metadata)


def load_snapshot(path: str | Path) -> Snapshot:
    """A snapshot written by ``save_snapshot`` (or ``garage capture``, which has the same layout)."""
    tensors, metadata = load_tensors(path)
    if "model" not in metadata:
        raise StorageError(f"{path} is a safetensors file but not a garage snapshot (no model in its metadata)")
    metadata.setdefault("addresses", list(tensors))
    return Snapshot(tensors, metadata)


@dataclass
class AddressDiff:
    address: str
    max_abs: float
    relative_l2: float  # ‖b − a‖ / ‖a‖
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "max_abs_diff": self.max_abs, "relative_l2": self.relative_l2,
                "cosine": self.cosine}


@dataclass
class SnapshotDiff:
    model: str
    prompt_a: str
    prompt_b: str
    interventions_a: list[dict[str, Any]]
    interventions_b: list[dict[str, Any]]
    entries: list[AddressDiff] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    def changed(self, tolerance: float = 0.0) -> list[str]:
        """Addresses whose max abs difference exceeds ``tolerance``, in run order."""
        return [entry.address for entry in self.entries if entry.max_abs > tolerance]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_a": self.prompt_a, "prompt_b": self.prompt_b,
                "interventions_a": self.interventions_a, "interventions_b": self.interventions_b,
                "entries": [entry.to_dict() for entry in self.entries],
                "only_in_a": self.only_in_a, "only_in_b": self.only_in_b}


def _run_order(address: str) -> tuple[int, int, str]:
    match = re.match(r"^L(\d+)\.(.*)$", address)
    if match is None:
        return (-1 if address.startswith("embed") else 10**9, 0, address)
    rest = match.group(2)
    stage = 0 if rest == "in" else 3 if rest == "out" else 2 if rest.startswith("mlp") else 1
    return (int(match.group(1)), stage, rest)


def diff_snapshots(a: Snapshot, b: Snapshot) -> SnapshotDiff:
    """Per shared address: max abs difference, relative L2 change and cosine similarity of b vs a."""
    import torch

    meta_a, meta_b = a.metadata, b.metadata
    if meta_a.get("config_hash") and meta_b.get("config_hash") and meta_a["config_hash"] != meta_b["config_hash"]:
        raise GarageError(
            f"the snapshots come from different models ({meta_a.get('model')} vs {meta_b.get('model')}); "
            "diff two runs of the same model"
        )
    shared = sorted(set(a.tensors) & set(b.tensors), key=_run_order)
    report = SnapshotDiff(str(meta_a.get("model")), str(meta_a.get("prompt", "")), str(meta_b.get("prompt", "")),
                          list(meta_a.get("interventions", [])), list(meta_b.get("interventions", [])),
                          only_in_a=sorted(set(a.tensors) - set(b.tensors), key=_run_order),
                          only_in_b=sorted(set(b.tensors) - set(a.tensors), key=_run_order))
    for address in shared:
        left, right = a.tensors[address].double(), b.tensors[address].double()
        if left.shape != right.shape:
            raise GarageError(
                f"'{address}' has shape {list(left.shape)} in A and {list(right.shape)} in B; "
                "diff runs of prompts with the same token length"
            )
        delta = right - left
        cosine = torch.nn.functional.cosine_similarity(left.flatten(), right.flatten(), dim=0)
        report.entries.append(AddressDiff(address, float(delta.abs().max()) if delta.numel() else 0.0,
                                          float(delta.norm() / left.norm().clamp_min(1e-30)), float(cosine)))
    return report
