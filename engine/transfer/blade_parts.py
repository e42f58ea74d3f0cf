"""Blades as parts of the bin, and a blade attached to a pair of open models at run time.

A blade part is catalogued under model B (the model it writes into) at its address; its
provenance names both models (name, source, config hash), A's address, the position-pairing
rule, the task and its digest, the settings, the held-out numbers and the date. Loading it for a
model whose config hash differs from the one it was trained on is refused in one line.

A's weights are identified too (``weights``: each file's size, mtime and sha256): a config hash
tells a retrained or fine-tuned A of the same architecture from the original no better than a
name does, and a blade reads A's stream, so another A feeds it other numbers. The check re-hashes
a file only when its size or mtime differs from the record (as the GGUF cache checks large files),
so opening a folder with a blade costs a stat of A's files, not a read of them. A file whose
mtime moved (copied, restored) is hashed once and its ``(path, size, mtime)`` → sha256 kept in
the cache folder (``weight-digests.json``), so the next process stats it again instead of reading
gigabytes; a damaged record file is ignored and rewritten.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from engine.interventions import Intervention
from engine.parts import PartRecord, PartsBin
from engine.parts.plan import PartPlan
from engine.parts.record import TensorEntry
from engine.safe_text import shown
from engine.transfer.blade import Blade, BladeInjection, inject
from engine.transfer.blade_train import BladeReport
from engine.transfer.pairs import TransferError

__all__ = ["BLADE_FORMAT", "AttachedBlade", "BladeMismatchError", "BladePart", "BladeRun", "attach_blade",
           "check_blade_weights", "load_blade", "run_blade", "save_blade", "stitch_from_part",
           "weight_digest", "weight_paths", "weights_record"]

BLADE_FORMAT = "garage-blade/1"
DIGESTS_FILE = "weight-digests.json"
DIGESTS_FORMAT = "garage-weight-digests/1"
MAX_DIGESTS = 512  # files remembered; the oldest go first, so the record stays a small read


class BladeMismatchError(TransferError):
    """A blade asked to run on a model other than the one it was trained for."""


def _model(loaded: Any, weights: bool = False) -> dict[str, Any]:
    doc = {"name": loaded.name, "source": loaded.source, "config_hash": loaded.config_hash,
           "model_type": getattr(loaded.config, "model_type", None)}
    if weights:
        doc["weights"] = weights_record(loaded)
    return doc


def _digests_path() -> Path:
    from engine.storage import cache_dir

    return cache_dir() / DIGESTS_FILE


def _read_digests() -> dict[str, dict[str, Any]]:
    """The persistent digest record; anything unreadable is an empty record (it only saves a re-hash)."""
    try:
        document = json.loads(_digests_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    files = document.get("files") if isinstance(document, dict) and document.get("format") == DIGESTS_FORMAT \
        else None
    return {key: entry for key, entry in files.items() if isinstance(entry, dict)} if isinstance(files, dict) else {}


def weight_digest(path: Path) -> str:
    """sha256 of weight file ``path``, read from the cache folder's record when its size and mtime match it,
    else hashed (``engine.build.sources.file_digest``) and recorded there for the next process."""
    from engine.build.sources import file_digest
    from engine.errors import StorageError
    from engine.storage import atomic_write_json

    stat = path.stat()
    key = str(path.resolve())
    files = _read_digests()
    entry = files.get(key)
    if entry is not None and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns and \
            isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = file_digest(path)
    files.pop(key, None)
    files[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    kept = dict(list(files.items())[-MAX_DIGESTS:])
    try:
        atomic_write_json(_digests_path(), {"format": DIGESTS_FORMAT, "files": kept})
    except (StorageError, OSError):
        pass  # a read-only cache folder costs the next process a re-hash, nothing more
    return digest


def weight_paths(loaded: Any) -> list[Path]:
    """The files ``loaded``'s weights were read from: a GGUF's own file (its dequantised cache differs
    per dtype), else the safetensors file or the folder's weight files; none for a hub model."""
    if str(loaded.source_kind).endswith("gguf"):
        return [Path(loaded.source)]
    if loaded.weights_path is None:
        return []
    where = Path(loaded.weights_path)
    if where.is_file():
        return [where]
    from engine.attached import weight_files

    return weight_files(where)


def weights_record(loaded: Any) -> dict[str, dict[str, Any]] | None:
    """``{file name: {size, mtime_ns, sha256}}`` of ``loaded``'s weight files (None for a hub model)."""
    paths = weight_paths(loaded)
    if not paths:
        return None
    record: dict[str, dict[str, Any]] = {}
    for path in paths:
        stat = path.stat()
        record[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": weight_digest(path)}
    return record


def check_blade_weights(part_name: str, made_for: Mapping[str, Any], loaded: Any, remedy: str) -> None:
    """Refuse ``loaded`` as model A when its weight files are not the ones the blade was trained on.

    A part saved before weights were recorded, or an A from the hub, carries no record: nothing to check.
    """
    recorded = made_for.get("weights")
    if recorded is None:
        return
    name = shown(made_for.get("name"))
    if not isinstance(recorded, dict) or not recorded or \
            not all(isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in recorded.values()):
        raise BladeMismatchError(f"blade '{shown(part_name)}' has a damaged record of model A '{name}'s weight files "
                                 "(each file needs its size, mtime and sha256); rebuild the folder or save the blade "
                                 "again")
    found = {path.name: path for path in weight_paths(loaded)}
    if set(found) != set(recorded):
        raise BladeMismatchError(
            f"blade '{shown(part_name)}' was trained with model A '{name}' stored as "
            f"{shown(', '.join(sorted(recorded)))}, but '{shown(loaded.name)}' is stored as "
            f"{shown(', '.join(sorted(found))) or 'no local file'}; put back the A it was trained with, or {remedy}")
    for file_name, entry in sorted(recorded.items()):
        path = found[file_name]
        stat = path.stat()
        if stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns"):
            continue  # untouched since the record was made: skip reading the file
        digest = weight_digest(path)
        expected = entry["sha256"]
        if digest != expected:
            raise BladeMismatchError(
                f"blade '{shown(part_name)}' was trained with model A '{name}' whose {shown(file_name)} had sha256 "
                f"{shown(expected[:12])}, but {shown(path)} now has {digest[:12]} (A's weights changed since); put "
                f"back the A it was trained with, or {remedy}")


def save_blade(bin_: PartsBin, loaded_a: Any, loaded_b: Any, report: BladeReport, *, name: str | None = None,
               tags: Sequence[str] = (), notes: str = "") -> PartRecord:
    """Catalog a trained blade as a part of B at its address, with A, the task and the numbers in its provenance."""
    if report.blade is None:
        raise TransferError("this report carries no blade to save (it was dropped); train it again")
    tensors = report.blade.tensors()
    metrics = report.to_dict()
    metrics["training"] = {key: value for key, value in metrics["training"].items() if key != "losses"}
    fragment = {"format": BLADE_FORMAT, "model_a": _model(loaded_a, weights=True), "model_b": _model(loaded_b),
                "address_a": report.address_a, "address_b": report.address_b, "alignment": report.alignment,
                "task": report.task, "task_digest": report.task_digest, "blade": report.blade.settings(),
                "metrics": metrics, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    entries = [TensorEntry(key, tuple(t.shape), f"blade:{key}") for key, t in sorted(tensors.items())]
    plan = PartPlan(address=report.address_b, kind="blade", tensors=entries, fragment=fragment,
                    signature={"kind": "blade", "map": report.blade.map_kind, "gate": report.blade.gate_kind,
                               "shapes": {key: list(t.shape) for key, t in sorted(tensors.items())}},
                    family=loaded_b.anatomy.family.name if loaded_b.anatomy.family is not None else None,
                    model_type=getattr(loaded_b.config, "model_type", None), config_hash=loaded_b.config_hash)
    source = {"name": loaded_b.name, "path": loaded_b.source, "kind": "blade",
              "weights_path": str(loaded_b.weights_path) if loaded_b.weights_path else None,
              "config_hash": loaded_b.config_hash}
    return bin_.add_planned(plan, tensors, source, name, list(tags), notes)


@dataclass
class BladePart:
    """A blade read back from the bin with where it reads (A) and writes (B)."""

    record: PartRecord
    blade: Blade
    address_a: str
    address_b: str
    model_a: dict[str, Any]
    model_b: dict[str, Any]
    alignment: str


def check_blade_model(part_name: str, role: str, made_for: Mapping[str, Any], loaded: Any,
                      remedy: str = "open that model or train a blade for this one") -> None:
    """Refuse ``loaded`` as model ``role`` (A or B) when its config hash is not the one the blade was trained
    with, or, as A, when its weight files are not (B's weights may differ: a hybrid built to B's config)."""
    expected = made_for.get("config_hash")
    if expected and expected != loaded.config_hash:
        raise BladeMismatchError(
            f"blade '{shown(part_name)}' was trained with '{shown(made_for.get('name'))}' (config {shown(expected)}) "
            f"as model {role}, but '{shown(loaded.name)}' has config {loaded.config_hash}; {remedy}")
    if role == "A":
        check_blade_weights(part_name, made_for, loaded, remedy)


def load_blade(bin_: PartsBin, name: str, *, loaded_a: Any | None = None, loaded_b: Any | None = None) -> BladePart:
    """A blade part; with ``loaded_a``/``loaded_b``, refuse it unless they are the models it was trained with."""
    record = bin_.get(name)
    if record.kind != "blade" or record.config.get("format") != BLADE_FORMAT:
        raise TransferError(f"part '{name}' is a {record.kind}, not a blade; `garage parts list --kind blade` "
                            "shows the blades")
    config = record.config
    if loaded_b is not None:
        check_blade_model(name, "B", config["model_b"], loaded_b)
    if loaded_a is not None:
        check_blade_model(name, "A", config["model_a"], loaded_a)
    blade = Blade.from_tensors(config["blade"], bin_.load_tensors(name))
    blade.eval()
    return BladePart(record, blade, config["address_a"], config["address_b"], config["model_a"], config["model_b"],
                     config["alignment"])


@dataclass
class AttachedBlade:
    """A blade ready to run on some texts: B's tokens of them and the intervention carrying A's rows."""

    ids: Tensor  # [N, T] B's tokens
    mask: Tensor  # [N, T]
    intervention: BladeInjection
    alignment: str


def attach_blade(part: BladePart, loaded_a: Any, loaded_b: Any, texts: Sequence[str], *,
                 cancel: threading.Event | None = None) -> AttachedBlade:
    """Run A over ``texts`` and return the blade as an intervention for B on the same texts (models checked)."""
    from engine.transfer.blade_data import encode_texts

    check_blade_model(part.record.name, "B", part.model_b, loaded_b)
    check_blade_model(part.record.name, "A", part.model_a, loaded_a)
    ids, mask, donor, alignment = encode_texts(loaded_a, loaded_b, part.address_a, list(texts), cancel=cancel)
    intervention = inject(part.blade, part.address_b, donor.rows, donor.batch_index, donor.position_index,
                          part=part.record.name)
    return AttachedBlade(ids, mask, intervention, alignment)


@dataclass
class BladeRun:
    """B's next-token guesses on a prompt with the blade off and on (and A's own), with probabilities."""

    prompt: str
    off: list[tuple[str, float]]
    on: list[tuple[str, float]]
    model_a: list[tuple[str, float]]
    alignment: str
    interventions: list[str]


def _top(tokenizer: Any, logits: Tensor, count: int) -> list[tuple[str, float]]:
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(count)
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)]


def run_blade(part: BladePart, loaded_a: Any, loaded_b: Any, prompt: str, *, top: int = 5,
              interventions: Sequence[Intervention] = ()) -> BladeRun:
    """B's top next tokens for ``prompt`` without and with the blade (other ``interventions`` apply to both)."""
    from engine.limits import check_count
    from engine.run import run

    top = check_count(top, "--top", 1000, minimum=1)
    attached = attach_blade(part, loaded_a, loaded_b, [prompt])
    ids = attached.ids.to(loaded_b.input_device)
    off = run(loaded_b, ids, interventions=list(interventions), last_logits_only=True).logits[0, -1]
    on = run(loaded_b, ids, interventions=[*interventions, attached.intervention], last_logits_only=True).logits[0, -1]
    ids_a = loaded_a.tokenizer(prompt, return_tensors="pt").input_ids.to(loaded_a.input_device)
    own = run(loaded_a, ids_a, last_logits_only=True).logits[0, -1]
    return BladeRun(prompt, _top(loaded_b.tokenizer, off, top), _top(loaded_b.tokenizer, on, top),
                    _top(loaded_a.tokenizer, own, top), attached.alignment,
                    [item.describe() for item in [*interventions, attached.intervention]])


def stitch_from_part(bin_: PartsBin, name: str, *, loaded_a: Any | None = None,
                     loaded_b: Any | None = None) -> tuple[Any, str, str]:
    """A stitch part (``garage stitch``) read back as a ``Stitch``, with its two addresses (models checked)."""
    from engine.transfer.parts import load_stitch

    part = load_stitch(bin_, name, loaded_a, loaded_b)
    return part.stitch, part.address_a, part.address_b
