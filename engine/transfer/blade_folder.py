"""A blade baked into a hybrid: the part beside the built weights, attached whenever the folder opens.

A blade adds ``gate · map(h_A)`` to B's residual, so it needs A's stream on the same text; a
standard architecture cannot hold a second model, so a build (the recipe op ``blade``,
``engine.plugins.blade_op``) copies the part file next to B's weights and lists it in
``garage_attached.json`` with A's recorded source. Opening the folder opens A from there and
attaches a ``StandingBlade``: an intervention that, in every pass of B, reads the pass's own token
ids, runs A over them (or over their text, when the tokenizers differ) and adds the blade's output
at B's address — the same numbers as the runtime blade (``engine.transfer.blade_parts``) on that
text. Plain transformers loads only the weights: B without the blade. Widening the opened model
(``engine.transfer.widen.widened_loaded``) keeps the blade, its output mapped like the residual.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from engine.attached import ATTACHED_FORMAT, ATTACHED_MANIFEST, CARRIED_FILE, OpenOptions, read_manifest
from engine.errors import GarageError, InterventionError
from engine.interventions import EditPlan, Intervention, RunMask
from engine.safe_text import shown
from engine.tensors import placed_tensors
from engine.transfer.blade import Blade
from engine.transfer.blade_parts import BLADE_FORMAT, check_blade_model
from engine.transfer.pairs import ALIGN_SAME_TOKENS, TransferError

__all__ = ["BLADE_FILE", "StandingBlade", "attach_from_bin", "attach_from_folder", "blade_record",
           "config_hash_of", "write_blade", "write_record"]

BLADE_FILE = CARRIED_FILE  # the only kind of carried part so far


@dataclass
class _Pass:
    """What one forward pass of B has shown so far: its token ids, read where they enter the embedding."""

    ids: Tensor | None = None

    def record(self, value: Tensor) -> None:
        self.ids = value


@dataclass
class StandingBlade(Intervention):
    """A blade that prepares itself for every pass: A runs over the pass's own text, then the blade adds.

    ``loaded_a`` is model A, opened alongside; ``alignment`` is the part's pairing rule (same token
    positions, or shared token-end character offsets, for which ``tokenizer_b`` reads B's ids back as
    text). Each row's first real position is left out, as in training.
    """

    blade: Blade | None = None
    loaded_a: Any = None
    address_a: str = ""
    alignment: str = ALIGN_SAME_TOKENS
    tokenizer_b: Any = None
    part: str | None = None
    carried_by: str = ""  # the built folder, for descriptions
    rows_read: list[int] = field(default_factory=list)  # A's rows each pass paired (a test can see them)
    # exact residual maps of widenings B went through since (``engine.transfer.widen.KnownMap``), in order:
    # the blade's output is mapped like the residual it is added to, so the wide model stays the same function
    out_maps: tuple[Any, ...] = ()
    # those maps composed into one [width_b, width_out] float32 matrix when the blade is widened, so a pass
    # does one matmul on the blade's device instead of rebuilding float64 maps on the host
    out_matrix: Tensor | None = None

    @property
    def width_out(self) -> int:
        assert self.blade is not None
        return int(self.out_maps[-1].width_to) if self.out_maps else self.blade.width_b

    def widened(self, known_map: Any) -> StandingBlade:
        """This blade for B widened by ``known_map`` (``h_wide = map(h_B)``, linear): it adds ``map(out)``."""
        if self.blade is None:
            raise InterventionError(f"the blade at '{self.address}' needs its blade and model A")
        if int(known_map.width_from) != self.width_out:
            raise InterventionError(f"{self.describe()} writes {self.width_out} values per token and the widening "
                                    f"starts from {known_map.width_from}; widen the model it is attached to")
        composed = known_map.matrix()  # float64, exact: compose in it, round to float32 once
        if self.out_maps:
            previous = self.out_maps[0].matrix()
            for earlier in self.out_maps[1:]:
                previous = previous @ earlier.matrix()
            composed = previous @ composed
        return replace(self, out_maps=(*self.out_maps, known_map), out_matrix=composed.to(torch.float32),
                       rows_read=[])

    def describe(self) -> str:
        name = getattr(self.loaded_a, "name", "A")
        return f"blade {self.part or 'part'} into {self.address} (reads {name} at {self.address_a})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "part": self.part, "address_a": self.address_a,
                "model_a": getattr(self.loaded_a, "name", None), "carried_by": self.carried_by}

    def plan_edits(self, anatomy: Any, mask: RunMask | None = None) -> list[EditPlan]:
        """Read the pass's ids at the embedding's input, then add the blade at B's residual point."""
        from engine.addresses import resolve_point
        from engine.sites import Site, site_for

        if self.blade is None or self.loaded_a is None:
            raise InterventionError(f"the blade at '{self.address}' needs its blade and model A")
        target = resolve_point(anatomy, self.address)
        if target.part.kind != "layer" or target.point not in (None, "out", "in"):
            raise InterventionError(f"cannot attach a blade at '{target.address}': use a residual point such as L10")
        hidden = anatomy.root.info.get("hidden_size")
        if hidden is not None and hidden != self.width_out:
            raise InterventionError(f"the blade writes {self.width_out} values per token but '{target.address}' "
                                    f"has {hidden}; attach it to the model it was trained for")
        embed = resolve_point(anatomy, "embed").part.module_path
        if embed is None:
            raise InterventionError("this model has no embedding module where a blade could read its tokens")
        seen = _Pass()
        return [EditPlan(Site(embed, "pre"), seen.record, observe=True),
                EditPlan(site_for(anatomy, target), lambda value: self._edit(value, seen, mask))]

    def _edit(self, value: Tensor, seen: _Pass, mask: RunMask | None) -> Tensor:
        assert self.blade is not None
        ids = seen.ids
        if ids is None or ids.dtype not in (torch.long, torch.int) or tuple(ids.shape) != tuple(value.shape[:2]):
            raise InterventionError(f"{self.describe()} reads the pass's token ids and this pass gave none (it "
                                    "started from embeddings or a cache); run it on token ids")
        present = _present(ids, None if mask is None else mask.value)
        if self.alignment == ALIGN_SAME_TOKENS:
            rows, batch_index, position_index = self._same_tokens(ids, present, mask)
        else:
            rows, batch_index, position_index = self._by_offsets(ids, present)
        self.rows_read.append(int(rows.shape[0]))
        if rows.shape[0] == 0:
            return value
        device = value.device
        blade = self.blade.to(device)
        added = blade(rows.to(device).clone())  # a clone: A ran in inference mode
        if self.out_matrix is not None:
            if self.out_matrix.device != device:  # moved once, kept there for the passes after
                self.out_matrix = self.out_matrix.to(device)
            added = added.float() @ self.out_matrix
        added = added.to(value.dtype)
        return value.index_put((batch_index.to(device), position_index.to(device)), added, accumulate=True)

    def _same_tokens(self, ids: Tensor, present: Tensor, mask: RunMask | None) -> tuple[Tensor, Tensor, Tensor]:
        from engine.run import run

        loaded_a = self.loaded_a
        attention = None if mask is None or mask.value is None else mask.value.to(loaded_a.input_device)
        captured = run(loaded_a, ids.to(loaded_a.input_device), capture=[self.address_a], attention_mask=attention,
                       stop_after_capture=True, last_logits_only=True).tap[self.address_a]
        real = present.clone()
        first = present.int().argmax(1)
        real[torch.arange(ids.shape[0]), first] = False  # each row's first token: the BOS / attention sink
        batch_index, position_index = real.nonzero(as_tuple=True)
        rows = captured[batch_index.to(captured.device), position_index.to(captured.device)].float().cpu()
        return rows, batch_index.cpu(), position_index.cpu()

    def _by_offsets(self, ids: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """B's ids read back as text, paired with A's tokens of it by shared token-end offsets."""
        from engine.transfer.blade_data import encode_texts

        if self.tokenizer_b is None:
            raise InterventionError(f"{self.describe()} pairs tokens by text and B has no tokenizer")
        starts, texts, wanted = [], [], []
        for row in range(ids.shape[0]):
            where = present[row].nonzero()[:, 0]
            start, end = int(where[0]), int(where[-1]) + 1
            row_ids = ids[row, start:end].tolist()
            starts.append(start)
            wanted.append(row_ids)
            texts.append(self.tokenizer_b.decode(row_ids, skip_special_tokens=True))
        ids_b, _, donor, _ = encode_texts(self.loaded_a, SimpleNamespace(tokenizer=self.tokenizer_b), self.address_a,
                                          texts)
        for row, row_ids in enumerate(wanted):
            if ids_b[row, :len(row_ids)].tolist() != row_ids:
                raise InterventionError(f"{self.describe()} pairs A and B by character offsets, and row {row}'s "
                                        "tokens do not read back as the same text; run it on text B's tokenizer "
                                        "round-trips (plain prompts)")
        offset = torch.tensor(starts, dtype=torch.long)
        return donor.rows, donor.batch_index, donor.position_index + offset[donor.batch_index]


def _present(ids: Tensor, attention: Tensor | None) -> Tensor:
    """``[B, T]`` bool: the positions holding real tokens (not padding); every row must hold one."""
    present = torch.ones(ids.shape, dtype=torch.bool) if attention is None else attention.detach().cpu().bool()
    if not bool(present.any(1).all()):
        raise InterventionError("a blade cannot read a row that is all padding; drop empty rows")
    return present


def plan_standing_blade(anatomy: Any, item: Intervention, mask: RunMask | None) -> list[EditPlan]:
    """The registry's planner for ``standing-blade``."""
    if not isinstance(item, StandingBlade):
        raise InterventionError(f"a standing blade at '{item.address}' is made by opening a folder that carries one")
    return item.plan_edits(anatomy, mask)


# --- the part, its checks and its files ------------------------------------------------------


def blade_record(ref: str) -> Any:
    """The blade part called ``ref``, or whose sha256 starts with ``ref`` (catalog only, no tensor)."""
    from engine.parts import PartsBin

    record = PartsBin().find(ref, "blade")
    if record.kind != "blade" or record.config.get("format") != BLADE_FORMAT:
        raise TransferError(f"part '{record.name}' is a {record.kind}, not a blade; `garage parts list --kind "
                            "blade` shows the blades")
    return record


def config_hash_of(doc: Mapping[str, Any]) -> str:
    """``engine.loading.config_hash`` of the model a config document describes (as the built folder will load it)."""
    import transformers

    from engine.loading import config_hash

    document = {key: value for key, value in doc.items() if not key.startswith("_")}
    try:
        config = transformers.AutoConfig.for_model(**document)
    except (ValueError, TypeError, KeyError) as exc:
        raise GarageError(f"the recipe's output config does not instantiate ({str(exc).splitlines()[0]})") from None
    return config_hash(config)


def mismatch(record: Any, config_hash: str) -> str | None:
    """Why ``record``'s blade cannot go into a model with ``config_hash``, or None."""
    made_for = record.config.get("model_b") or {}
    expected = made_for.get("config_hash") or record.config_hash
    if expected == config_hash:
        return None
    return (f"blade '{record.name}' was trained for '{made_for.get('name')}' (config {expected}) but this model has "
            f"config {config_hash}; build a hybrid with B's config, or train a blade for this one")


def write_record(record: Any) -> dict[str, Any]:
    """What the build's provenance says of the blade (the part, both models, both addresses)."""
    config = record.config
    return {"part": record.name, "part_sha256": record.sha256, "address_a": config["address_a"],
            "address_b": config["address_b"], "alignment": config["alignment"], "model_a": dict(config["model_a"]),
            "model_b": dict(config["model_b"]), "task": config.get("task"),
            "changed": [], "attached": "beside the weights; opening the folder in the garage attaches it"}


def write_blade(folder: Path, part: str, record_doc: dict[str, Any]) -> list[str]:
    """Copy blade ``part``'s file into the built ``folder`` and list it in the folder's manifest."""
    from engine.parts import PartIntegrityError, PartsBin
    from engine.parts.file_record import digest_matches

    record = blade_record(part)
    path = record.path or PartsBin().parts_dir / record.file
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise PartIntegrityError(f"blade '{record.name}' has no readable file at {path} ({exc.strerror}); "
                                 "`garage parts verify` checks the bin") from None
    if not digest_matches(record.sha256, payload):
        raise PartIntegrityError(f"blade file {path} was altered since it was saved (sha256 differs); train it again")
    entries = read_manifest(folder)
    name = f"blade-{len(entries):02d}.safetensors"
    (folder / name).write_bytes(payload)  # the folder is the build's staging copy, renamed whole at the end
    config = record.config
    entries.append({"kind": "blade", "file": name, "sha256": record.sha256, "part": record.name,
                    "address_a": config["address_a"], "address_b": config["address_b"],
                    "alignment": config["alignment"], "blade": config["blade"], "model_a": config["model_a"],
                    "model_b": config["model_b"]})
    (folder / ATTACHED_MANIFEST).write_text(json.dumps({"format": ATTACHED_FORMAT, "attached": entries}, indent=2)
                                            + "\n")
    record_doc.update(file=name, file_sha256=hashlib.sha256(payload).hexdigest())
    return [name, ATTACHED_MANIFEST]


# --- attaching ---------------------------------------------------------------------------


def _open_a(made_for: Mapping[str, Any], part: str, where: str, options: OpenOptions) -> Any:
    """Model A from its recorded source (or its recorded name), refused in one line when neither opens."""
    from engine.loading import open_model

    tried: list[str] = []
    first_error = ""
    budget = dict(options.max_memory) if options.max_memory is not None else None
    for spec in dict.fromkeys(str(made_for.get(key)) for key in ("source", "name") if made_for.get(key)):
        try:
            return open_model(spec, device=options.device, dtype=options.dtype, max_memory=budget,
                              offload_folder=options.offload_folder)
        except GarageError as exc:
            tried.append(spec)
            first_error = first_error or str(exc)
    raise TransferError(f"{shown(where)} carries blade '{shown(part)}', which reads model A "
                        f"'{shown(made_for.get('name'))}' from {shown(' or '.join(tried)) or 'nowhere recorded'}, "
                        f"and it cannot be opened ({first_error}); put A "
                        f"back there, or delete {ATTACHED_MANIFEST} to open the weights without the blade")


def _device_key(device: Any) -> int | str:
    """A placement's device as ``max_memory`` names it: a GPU index, or ``cpu`` / ``disk`` / ``mps``."""
    text = str(device)
    if text.startswith("cuda:"):
        text = text.split(":", 1)[1]
    return int(text) if text.isdigit() else text


def _held_models(loaded: Any) -> list[Any]:
    """``loaded``'s model and every model A its blades opened, theirs included (an A may carry a blade)."""
    models = [loaded.model]
    for item in loaded.standing:
        if getattr(item, "loaded_a", None) is not None:
            models += _held_models(item.loaded_a)
    return models


def _placed_bytes(models: list[Any]) -> dict[int | str, int]:
    """Bytes of weights each device holds for ``models`` (their accelerate placement; a tensor tied
    between modules counted once), keyed as ``max_memory`` keys them."""
    used: dict[int | str, int] = {}
    seen: set[int] = set()
    for model in models:
        # transformers records no map when everything landed on one device: the tensors say where
        placement = getattr(model, "hf_device_map", None) or {"": next(model.parameters()).device}
        for name, device in placement.items():
            for tensor in placed_tensors(model, name):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    key = _device_key(device)
                    used[key] = used.get(key, 0) + tensor.numel() * tensor.element_size()
    return used


def _options_for_a(loaded: Any, options: OpenOptions, file: str) -> OpenOptions:
    """``options`` for the A of the part in ``file``: the budget less what B (and the A's already attached)
    hold on each device, so both models together stay within it, and an offload folder of A's own (accelerate
    writes its files by tensor name, and A's names are B's when the architectures match)."""
    if options.device != "auto":
        return options
    budget = None
    if options.max_memory is not None:
        from accelerate.utils import convert_file_size_to_int

        used = _placed_bytes(_held_models(loaded))
        budget = {}
        for key, size in options.max_memory.items():
            total = convert_file_size_to_int(size) if isinstance(size, str) else int(size)
            budget[key] = max(0, total - used.get(_device_key(key), 0))
    offload = None
    if options.offload_folder is not None:
        offload = str(Path(options.offload_folder) / f"model-a-for-{Path(file).stem}")
    return replace(options, max_memory=budget, offload_folder=offload)


def _check_model(part: str, role: str, made_for: Mapping[str, Any], loaded: Any) -> None:
    check_blade_model(part, role, made_for, loaded, "rebuild with the right model or train a blade for it")


def _standing(loaded_b: Any, loaded_a: Any, blade: Blade, entry: Mapping[str, Any], where: str) -> StandingBlade:
    if entry["alignment"] == ALIGN_SAME_TOKENS and loaded_a.tokenizer is not None and loaded_b.tokenizer is not None \
            and loaded_a.tokenizer.get_vocab() != loaded_b.tokenizer.get_vocab():
        raise TransferError(f"blade '{shown(entry['part'])}' pairs A and B by token positions, but "
                            f"{shown(where)}'s tokenizer differs from {shown(loaded_a.name)}'s; build the hybrid with "
                            "B's tokenizer")
    return StandingBlade("standing-blade", str(entry["address_b"]), blade=blade.eval().requires_grad_(False),
                         loaded_a=loaded_a, address_a=str(entry["address_a"]), alignment=str(entry["alignment"]),
                         tokenizer_b=loaded_b.tokenizer, part=str(entry["part"]), carried_by=where)


def attach_from_folder(loaded: Any, folder: Path, entry: dict[str, Any], options: OpenOptions) -> None:
    """Attach the blade a built folder's manifest lists (file checked, both models checked, A opened)."""
    from engine.parts.extract import read_part_file
    from engine.parts.file_record import digest_matches

    name = str(entry.get("file", ""))
    part = str(entry.get("part", name))
    if not BLADE_FILE.fullmatch(name) or not isinstance(entry.get("blade"), dict) or \
            not all(isinstance(entry.get(key), str) for key in ("address_a", "address_b", "alignment")) or \
            not all(isinstance(entry.get(key), dict) for key in ("model_a", "model_b")):
        raise TransferError(f"{folder / ATTACHED_MANIFEST} lists blade '{shown(part)}' without its file, settings or "
                            "models; rebuild the folder")
    try:
        payload = (folder / name).read_bytes()
    except OSError as exc:
        raise TransferError(f"{folder} lists blade file {name}, which cannot be read ({exc.strerror}); rebuild the "
                            "folder") from None
    if not digest_matches(str(entry.get("sha256", "")), payload):
        raise TransferError(f"{folder / name} was altered since the build (sha256 differs); rebuild the folder")
    _check_model(part, "B", entry["model_b"], loaded)
    tensors, _ = read_part_file(payload)
    blade = Blade.from_tensors(entry["blade"], tensors)
    loaded_a = _open_a(entry["model_a"], part, folder.name, _options_for_a(loaded, options, name))
    _check_model(part, "A", entry["model_a"], loaded_a)
    loaded.standing.append(_standing(loaded, loaded_a, blade, entry, folder.name))


def attach_from_bin(loaded: Any, part: str) -> None:
    """Attach blade ``part`` from the bin to an in-memory model (the build bench's preview)."""
    from engine.parts import PartsBin
    from engine.transfer.blade_parts import load_blade

    record = blade_record(part)
    found = load_blade(PartsBin(), record.name, loaded_b=loaded)
    loaded_a = _open_a(found.model_a, record.name, loaded.name, OpenOptions(str(loaded.device), loaded.dtype))
    _check_model(record.name, "A", found.model_a, loaded_a)
    entry = {"part": record.name, "address_a": found.address_a, "address_b": found.address_b,
             "alignment": found.alignment}
    loaded.standing.append(_standing(loaded, loaded_a, found.blade, entry, loaded.name))
