"""Blades as parts of the bin, and a blade attached to a pair of open models at run time.

A blade part is catalogued under model B (the model it writes into) at its address; its
provenance names both models (name, source, config hash), A's address, the position-pairing
rule, the task and its digest, the settings, the held-out numbers and the date. Loading it for a
model whose config hash differs from the one it was trained on is refused in one line.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from engine.interventions import Intervention
from engine.parts import PartRecord, PartsBin
from engine.parts.plan import PartPlan
from engine.parts.record import TensorEntry
from engine.transfer.blade import Blade, BladeInjection, inject
from engine.transfer.blade_train import BladeReport
from engine.transfer.pairs import TransferError

__all__ = ["BLADE_FORMAT", "AttachedBlade", "BladeMismatchError", "BladePart", "BladeRun", "attach_blade",
           "load_blade", "run_blade", "save_blade", "stitch_from_part"]

BLADE_FORMAT = "garage-blade/1"


class BladeMismatchError(TransferError):
    """A blade asked to run on a model other than the one it was trained for."""


def _model(loaded: Any) -> dict[str, Any]:
    return {"name": loaded.name, "source": loaded.source, "config_hash": loaded.config_hash,
            "model_type": getattr(loaded.config, "model_type", None)}


def save_blade(bin_: PartsBin, loaded_a: Any, loaded_b: Any, report: BladeReport, *, name: str | None = None,
               tags: Sequence[str] = (), notes: str = "") -> PartRecord:
    """Catalog a trained blade as a part of B at its address, with A, the task and the numbers in its provenance."""
    if report.blade is None:
        raise TransferError("this report carries no blade to save (it was dropped); train it again")
    tensors = report.blade.tensors()
    metrics = report.to_dict()
    metrics["training"] = {key: value for key, value in metrics["training"].items() if key != "losses"}
    fragment = {"format": BLADE_FORMAT, "model_a": _model(loaded_a), "model_b": _model(loaded_b),
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
    """Refuse ``loaded`` as model ``role`` (A or B) when its config hash is not the one the blade was trained with."""
    expected = made_for.get("config_hash")
    if expected and expected != loaded.config_hash:
        raise BladeMismatchError(
            f"blade '{part_name}' was trained with '{made_for.get('name')}' (config {expected}) as model {role}, but "
            f"'{loaded.name}' has config {loaded.config_hash}; {remedy}")


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
