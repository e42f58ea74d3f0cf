"""Build a validated recipe tensor by tensor into an HF model folder, atomically.

Each shard's safetensors header is written first (every output shape and dtype is known
from the plan), then each tensor is computed from its sources, written and dropped, so
peak memory is about the largest tensor and its inputs, not the model. Everything goes
into a temporary folder that is renamed onto the output only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.build.ops import apply_op
from engine.build.out_folder import check_out_folder
from engine.build.plan import Plan, TensorPlan
from engine.build.recipe import Recipe
from engine.build.recipe_parse import dump_recipe
from engine.build.sources import ST_DTYPES, TOKENIZER_FILES, Source, digest_sources, file_digest, read_tensor
from engine.build.validate import ValidationReport, require_valid
from engine.errors import StorageError
from engine.storage import atomic_output_dir, sweep_stale_staging

Progress = Callable[[str, float | None], None]
Fetch = Callable[[str, str], Tensor]
DEFAULT_SHARD_BYTES = 2 * 1024**3
EXTRA_FILES = ("generation_config.json",)


@dataclass
class BuildResult:
    out_dir: Path
    recipe: Recipe
    report: ValidationReport
    shards: list[str]
    tensors: int
    bytes_written: int
    seconds: float
    provenance: list[dict[str, Any]] = field(default_factory=list)
    finish: list[dict[str, Any]] = field(default_factory=list)  # one record per whole-model op applied

    def to_dict(self) -> dict[str, Any]:
        parameters = self.report.plan.param_count if self.report.plan is not None else None
        return {"out_dir": str(self.out_dir), "recipe": self.recipe.name, "shards": self.shards,
                "tensors": self.tensors, "bytes": self.bytes_written, "seconds": round(self.seconds, 3),
                "parameters": parameters, "layers": len(self.recipe.layers),
                "warnings": [w.to_dict() for w in self.report.warnings], "finish": self.finish}


def materialize(entry: TensorPlan, fetch: Fetch) -> Tensor:
    """One output tensor: its op over its inputs, then any head rows transplanted in."""
    inputs = [fetch(alias, name) for alias, name in entry.inputs]
    tensor = apply_op(entry.op, inputs, entry.params)
    if entry.transplants:
        if entry.op == "copy":
            tensor = tensor.clone()
        for move in entry.transplants:
            donor = fetch(move.alias, move.tensor).to(tensor.dtype)
            for (dst_start, dst_stop), (src_start, src_stop) in zip(move.dst, move.src, strict=True):
                tensor.narrow(move.dim, dst_start, dst_stop - dst_start).copy_(
                    donor.narrow(move.dim, src_start, src_stop - src_start))
    target = ST_DTYPES[entry.dtype]
    if tensor.dtype != target:
        tensor = tensor.to(target)
    return tensor.contiguous()


def disk_fetch(sources: dict[str, Source]) -> Fetch:
    from engine.build.parts_heads import PART_ALIAS, PartTensors

    parts = PartTensors()

    def fetch(alias: str, name: str) -> Tensor:
        if alias.startswith(PART_ALIAS):
            return parts.get(alias, name)
        return read_tensor(sources[alias].tensors[name])

    return fetch


def _shards(tensors: list[TensorPlan], shard_bytes: int) -> list[list[TensorPlan]]:
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for entry in tensors:
        if shards[-1] and size + entry.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _header(entries: list[TensorPlan]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    payload = json.dumps(header, separators=(",", ":")).encode()
    payload += b" " * (-len(payload) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(payload)) + payload


def _tensor_bytes(tensor: Tensor) -> memoryview:
    array: Any = tensor.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        from engine.loading import Cancelled

        raise Cancelled("the build was cancelled; no output folder was written")


def write_shards(folder: Path, plan: Plan, fetch: Fetch, shard_bytes: int, progress: Progress | None,
                 cancel: threading.Event | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Stream every planned tensor into safetensors shards under ``folder``."""
    groups = _shards(plan.tensors, shard_bytes)
    names = ["model.safetensors"] if len(groups) == 1 else [
        f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    rows: list[dict[str, Any]] = []
    done, total = 0, len(plan.tensors)
    for file_name, entries in zip(names, groups, strict=True):
        with (folder / file_name).open("wb") as handle:
            handle.write(_header(entries))
            for entry in entries:
                _check_cancel(cancel)
                tensor = materialize(entry, fetch)
                if tuple(tensor.shape) != tuple(entry.shape):
                    raise StorageError(f"{entry.name} came out {list(tensor.shape)}, planned {list(entry.shape)}")
                data = _tensor_bytes(tensor)
                handle.write(data)
                row = entry.provenance()
                row.update(shard=file_name, digest=hashlib.sha256(data).hexdigest()[:32])
                rows.append(row)
                del tensor, data
                done += 1
                if progress is not None:
                    progress(f"writing {entry.name}", done / total)
    if len(groups) > 1:
        weight_map = {entry.name: name for name, entries in zip(names, groups, strict=True) for entry in entries}
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}, indent=2))
    return names, rows


def output_config_doc(plan: Plan) -> dict[str, Any]:
    doc = plan.config.to_dict()
    for key in ("_name_or_path", "_commit_hash", "transformers_version"):
        doc.pop(key, None)
    doc["architectures"] = [plan.model_class]
    floats = [t.dtype for t in plan.tensors if t.dtype in ("F32", "F16", "BF16")]
    if floats:
        doc["dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[max(set(floats), key=floats.count)]
    return doc


def finish_folder(folder: Path, recipe: Recipe, progress: Progress | None,
                  cancel: threading.Event | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Apply the recipe's whole-model ops to the model assembled in ``folder`` and rewrite its
    weights and config there; returns the new shard names and one provenance record per op."""
    import transformers

    from engine.build.model_ops import apply_steps, write_attached
    from engine.loading import model_class

    config = json.loads((folder / "config.json").read_text())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        str(config.get("dtype") or "float32"), torch.float32)
    model_config: Any = transformers.AutoConfig.from_pretrained(str(folder))
    model = model_class(model_config).from_pretrained(str(folder), dtype=dtype, trust_remote_code=False).eval()
    model, records = apply_steps(model, recipe.finish, progress, cancel)
    _check_cancel(cancel)
    for old in [*folder.glob("model*.safetensors"), folder / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "generation_config.json").unlink(missing_ok=True)  # the source's copy is put back by the caller
    shards = sorted(p.name for p in folder.glob("model*.safetensors"))
    del model
    write_attached(folder, recipe.finish, records)  # parts beside the weights (a blade); opening attaches them
    return shards, records


def resolved_sources(sources: dict[str, Source]) -> dict[str, Any]:
    digests = digest_sources(sources)
    return {alias: {**source.describe(), "weight_files": digests[alias]} for alias, source in sources.items()}


def build(
    recipe: Recipe | str,
    out_dir: str | Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> BuildResult:
    """Validate ``recipe``, then build it into ``out_dir`` (which appears only when complete)."""
    import transformers

    started = time.perf_counter()
    report = require_valid(recipe)
    recipe, plan, sources = report.recipe, report.plan, report.sources
    assert plan is not None and recipe.embed is not None  # require_valid guarantees both
    target = Path(out_dir).expanduser()
    if target.parent.is_dir():
        sweep_stale_staging(target.parent, target.name)  # a killed earlier build: old folder back, staging gone
    check_out_folder(target, overwrite)
    if progress is not None:
        progress("hashing source weights", 0.0)
    resolved = resolved_sources(sources)
    embed_source = sources[recipe.embed]
    with atomic_output_dir(target) as staging:
        shards, rows = write_shards(staging, plan, disk_fetch(sources), shard_bytes, progress, cancel)
        _check_cancel(cancel)
        (staging / "config.json").write_text(json.dumps(output_config_doc(plan), indent=2) + "\n")
        finished: list[dict[str, Any]] = []
        if recipe.finish:
            shards, finished = finish_folder(staging, recipe, progress, cancel)
        for name in (*TOKENIZER_FILES, *EXTRA_FILES):
            if (embed_source.folder / name).is_file():
                shutil.copyfile(embed_source.folder / name, staging / name)
        document = recipe.to_dict()
        document["resolved"] = {"sources": resolved, "transformers": str(transformers.__version__),
                                "torch": str(torch.__version__), "layer_origins": plan.layer_origins}
        from engine.build.parts_heads import parts_used

        parts = parts_used(recipe)
        if parts:
            document["resolved"]["parts"] = parts
        if finished:
            document["resolved"]["finish"] = finished
        (staging / "recipe.yaml").write_text(dump_recipe(document))
        provenance = {"recipe": recipe.name, "sources": resolved, "parts": parts, "parameters": plan.param_count,
                      "tied_embeddings": plan.tied, "recomputed_config": plan.recomputed,
                      "warnings": [w.to_dict() for w in report.warnings], "tensors": rows}
        if finished:
            # the rows above are the assembled layers; the finish ops rewrote the weights after them
            provenance["finish"] = finished
            provenance["weights"] = {name: file_digest(staging / name) for name in shards}
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        check_out_folder(target, overwrite)  # again: the folder may have changed during the build
    written = sum((target / name).stat().st_size for name in shards) if finished else plan.total_bytes
    return BuildResult(target, recipe, report, shards, len(rows), written, time.perf_counter() - started, rows,
                       finished)
