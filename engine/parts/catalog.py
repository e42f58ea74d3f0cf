"""The parts bin: part files under ``GARAGE_HOME/parts`` indexed by a TinyDB catalog.

Every change happens under one inter-process file lock: part file first (atomic), then the
catalog (atomic); if the catalog write fails the new file is removed again, so the two never
disagree and nothing already in the bin is touched.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinydb import Query

from engine.errors import StorageError
from engine.parts.errors import CatalogCorruptError, PartError, PartIntegrityError, PartNameError, PartNotFoundError
from engine.parts.extract import (
    CheckpointIndex,
    params_of,
    read_part_file,
    serialize,
    sha256_file,
    tensors_from_checkpoint,
    tensors_from_model,
)
from engine.parts.file_record import content_digest, content_digest_file, digest_matches, with_record
from engine.parts.naming import check_name, default_name, part_file
from engine.parts.record import PartRecord, VerifyResult
from engine.parts.store import CATALOG_FILE, TABLE, locked, open_db, record_doc
from engine.storage import atomic_write_bytes, garage_home

_DIGEST = re.compile(r"[0-9a-f]{8,64}")  # a sha256 prefix long enough to mean one part

if TYPE_CHECKING:  # torch stays unimported for the catalog-only verbs (parts list/show/tag/note/rename/rm)
    from torch import Tensor, nn

    from engine.parts.plan import PartPlan


class PartsBin:
    """The registry of extracted parts. ``home`` defaults to ``GARAGE_HOME``."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else garage_home()
        self.parts_dir = self.home / "parts"
        self.notes: builtins.list[str] = []  # what a reading call noticed (a corrupted catalog kept aside)

    @property
    def catalog_path(self) -> Path:
        return self.parts_dir / CATALOG_FILE

    # --- adding -------------------------------------------------------------------------
    def add_from_model(self, loaded: Any, address: str, name: str | None = None, tags: tuple[str, ...] | list[str] = (),
                       notes: str = "") -> PartRecord:
        """Extract ``address`` from an open model (with weights) and catalog it."""
        _check_request(name, tags)
        from engine.quantised import refuse_quantised

        refuse_quantised(loaded, "extract parts from")
        from engine.parts.plan import plan_part

        plan = plan_part(loaded.model, loaded.config, loaded.anatomy, address)
        tensors = tensors_from_model(plan, loaded.model)
        source = {"name": loaded.name, "path": loaded.source, "kind": loaded.source_kind,
                  "weights_path": str(loaded.weights_path) if loaded.weights_path else None,
                  "config_hash": plan.config_hash}
        return self._add(plan, tensors, source, name, tags, notes)

    def add_from_checkpoint(self, path_or_folder: str | Path, address: str, name: str | None = None,
                            tags: tuple[str, ...] | list[str] = (), notes: str = "") -> PartRecord:
        """Extract ``address`` straight from a safetensors checkpoint, reading only its tensors.

        ``path_or_folder`` is a model folder, a ``.safetensors`` file (with config.json beside
        it), a ``.gguf`` file or a bundled name (both read through the conversion cache).
        """
        from engine.parts.sources import checkpoint_source

        _check_request(name, tags)
        checkpoint = checkpoint_source(path_or_folder)
        structure = checkpoint.loaded
        from engine.parts.plan import plan_part
        from engine.quantised import refuse_quantised

        refuse_quantised(structure, "extract parts from")

        plan = plan_part(structure.model, structure.config, structure.anatomy, address)
        tensors = tensors_from_checkpoint(plan, CheckpointIndex(checkpoint.weights), structure.anatomy.base_path,
                                          _tied_sources(structure, plan))
        source = {"name": checkpoint.name, "path": checkpoint.path, "kind": "checkpoint",
                  "weights_path": str(checkpoint.weights), "config_hash": plan.config_hash}
        return self._add(plan, tensors, source, name, tags, notes)

    def add_planned(self, plan: PartPlan, tensors: dict[str, Tensor], source: dict[str, Any],
                    name: str | None = None, tags: tuple[str, ...] | list[str] = (), notes: str = "",
                    base_name: str | None = None) -> PartRecord:
        """Catalog tensors made elsewhere (SAEs, transcoders, directions) under a plan the caller wrote;
        without ``name``, the first free one of ``base_name``, ``base_name-2``, ... (taken under the bin's lock)."""
        return self._add(plan, tensors, source, name, tags, notes, base_name)

    def _add(self, plan: PartPlan, tensors: dict[str, Tensor], source: dict[str, Any], name: str | None,
             tags: tuple[str, ...] | list[str], notes: str, base_name: str | None = None) -> PartRecord:
        _check_request(name, tags)
        bare, _ = serialize(plan, tensors)
        with locked(self.parts_dir), open_db(self.parts_dir) as db:
            table = db.table(TABLE)
            final_name = name or _free_name(table, base_name or default_name(source["name"], plan.address))
            if table.contains(Query().name == final_name):
                raise PartNameError(f"a part named '{final_name}' is already in the bin; pass another --name "
                                    "or remove the old one with `garage parts rm`")
            path = part_file(self.parts_dir, final_name)
            if path.exists():
                raise PartNameError(f"{path} exists but is not in the catalog; move it away or choose another name")
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            # the catalog record travels inside the file too, so `parts reindex` can recover all of it
            payload = with_record(bare, {"source": source, "tags": sorted(set(tags)), "notes": notes,
                                         "created_at": created})
            record = PartRecord(
                name=final_name, kind=plan.kind, address=plan.address, source=source, family=plan.family,
                model_type=plan.model_type, tensors=list(plan.tensors), dtype=_dtype(tensors),
                params=params_of(tensors), sha256=content_digest(payload), size_bytes=len(payload),
                created_at=created, file=path.name, config=plan.fragment, signature=plan.signature,
                tags=sorted(set(tags)), notes=notes, path=path,
            )
            atomic_write_bytes(path, payload)
            try:
                table.insert(_doc(record))
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
        return record

    # --- reading ------------------------------------------------------------------------
    def _all(self) -> builtins.list[PartRecord]:
        if not self.catalog_path.exists():
            return []
        with open_db(self.parts_dir) as db:
            return [PartRecord.from_dict(doc, self.parts_dir) for doc in db.table(TABLE).all()]

    def file_path(self, file: object, name: object) -> Path:
        """The part file a catalog record names, refused unless it stays inside ``parts/``.

        The catalog is data from disk: a record may name ``../../x``, an absolute path or a
        symlink out of the folder. Resolved (symlinks too), the file must sit directly in it.
        """
        root = self.parts_dir.resolve()
        if isinstance(file, str) and file and os.path.basename(file) == file and file not in (".", ".."):
            path = self.parts_dir / file
            if path.resolve().parent == root:
                return path
        raise PartIntegrityError(
            f"catalog record '{name}' names the file {file!r}, which is not inside {self.parts_dir}; refused, "
            "nothing was changed; fix that record in catalog.json or move catalog.json away and run "
            "`garage parts reindex`")

    def list(self, source: str | None = None, kind: str | None = None, family: str | None = None,
             tag: str | None = None, text: str | None = None,
             shape: str | builtins.list[int] | None = None,
             keep_going: bool = False) -> builtins.list[PartRecord]:
        """Parts matching every filter given; ``shape`` is ``[576, 1536]`` or ``"576x1536"``.

        A corrupted catalog is kept aside and raises ``CatalogCorruptError``; with
        ``keep_going`` it lists as empty instead and the error's line goes to ``self.notes``.
        """
        wanted_shape = _parse_shape(shape) if shape is not None else None
        found = []
        try:
            records = self._all()
        except CatalogCorruptError as exc:
            if not keep_going:
                raise
            self.notes.append(str(exc))
            records = []
        for record in records:
            origin = f"{record.source.get('name') or ''}\n{record.source.get('path') or ''}"
            if source and source not in origin:
                continue
            if kind and record.kind != kind:
                continue
            if family and family not in (record.family, record.model_type):
                continue
            if tag and tag not in record.tags:
                continue
            if text and text.lower() not in f"{record.name} {record.address} {record.notes}".lower():
                continue
            if wanted_shape is not None and wanted_shape not in [list(e.shape) for e in record.tensors]:
                continue
            found.append(record)
        return sorted(found, key=lambda r: r.name)

    def get(self, name: str) -> PartRecord:
        check_name(name)
        for record in self._all():
            if record.name == name:
                return record
        raise PartNotFoundError(f"no part named '{name}' in the bin; `garage parts list` shows what is there")

    def find(self, ref: str, kind: str) -> PartRecord:
        """The part called ``ref``, or the one ``kind`` part whose sha256 starts with ``ref`` (8+ hex digits)."""
        try:
            return self.get(ref)
        except PartNotFoundError:
            if not _DIGEST.fullmatch(ref):
                raise
        found = [record for record in self.list(kind=kind) if record.sha256.startswith(ref)]
        if len(found) != 1:
            raise PartNotFoundError(f"{'no' if not found else len(found)} {kind} part(s) with sha256 starting "
                                    f"{ref}; `garage parts list --kind {kind}` shows them") from None
        return found[0]

    # --- changing -----------------------------------------------------------------------
    def _update(self, name: str, change) -> PartRecord:
        """Change a record's tags or notes: the copy inside the part file first (atomic), then the catalog."""
        check_name(name)
        with locked(self.parts_dir), open_db(self.parts_dir) as db:
            table = db.table(TABLE)
            doc = table.get(Query().name == name)
            if doc is None:
                raise PartNotFoundError(f"no part named '{name}' in the bin; `garage parts list` shows what is there")
            updated = dict(doc)
            change(updated)
            path = self.file_path(doc.get("file"), name)
            old = self._checked_bytes(path, name, str(doc.get("sha256")))
            new = with_record(old, updated)
            updated["sha256"], updated["size_bytes"] = content_digest(new), len(new)
            atomic_write_bytes(path, new)
            try:
                table.update(updated, Query().name == name)
            except BaseException:
                atomic_write_bytes(path, old)  # the file and the catalog never disagree
                raise
        return PartRecord.from_dict(updated, self.parts_dir)

    def _checked_bytes(self, path: Path, name: str, expected: str) -> bytes:
        """A part file's bytes, refused when missing or no longer what the catalog says."""
        try:
            payload = path.read_bytes()
        except FileNotFoundError as exc:
            raise PartIntegrityError(
                f"part '{name}' has no file at {path}; remove it with `garage parts rm {name}`") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        if not digest_matches(expected, payload):
            raise PartIntegrityError(f"part file {path} was altered since extraction (sha256 differs); "
                                     "re-extract it or remove it with `garage parts rm`")
        return payload

    def tag(self, name: str, tag: str) -> PartRecord:
        _check_tag(tag)
        return self._update(name, lambda doc: doc.__setitem__("tags", sorted(set(doc.get("tags", [])) | {tag})))

    def untag(self, name: str, tag: str) -> PartRecord:
        return self._update(name, lambda doc: doc.__setitem__("tags", sorted(set(doc.get("tags", [])) - {tag})))

    def note(self, name: str, text: str) -> PartRecord:
        return self._update(name, lambda doc: doc.__setitem__("notes", text))

    def rename(self, old: str, new: str) -> PartRecord:
        """Rename a part and its file; refuses a name already taken."""
        check_name(old)
        check_name(new)
        with locked(self.parts_dir), open_db(self.parts_dir) as db:
            table = db.table(TABLE)
            doc = table.get(Query().name == old)
            if doc is None:
                raise PartNotFoundError(f"no part named '{old}' in the bin; `garage parts list` shows what is there")
            new_path = part_file(self.parts_dir, new)
            if table.contains(Query().name == new) or new_path.exists():
                raise PartNameError(f"a part named '{new}' already exists; choose another name")
            old_path = self.file_path(doc.get("file"), old)
            os.replace(old_path, new_path)
            try:
                table.update({"name": new, "file": new_path.name}, Query().name == old)
            except BaseException:
                os.replace(new_path, old_path)
                raise
            renamed = dict(table.get(Query().name == new) or {})
        return PartRecord.from_dict(renamed, self.parts_dir)

    def remove(self, name: str) -> PartRecord:
        """Drop a part from the catalog and delete its file."""
        check_name(name)
        with locked(self.parts_dir), open_db(self.parts_dir) as db:
            table = db.table(TABLE)
            doc = table.get(Query().name == name)
            if doc is None:
                raise PartNotFoundError(f"no part named '{name}' in the bin; `garage parts list` shows what is there")
            path = self.file_path(doc.get("file"), name)
            if any(other.get("file") == doc.get("file") and other.get("name") != name for other in table.all()):
                raise PartIntegrityError(f"catalog record '{name}' names {doc.get('file')}, which another record "
                                         "also names; refused, nothing was changed; fix catalog.json by hand")
            table.remove(Query().name == name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return PartRecord.from_dict(dict(doc), self.parts_dir)

    def reindex(self) -> builtins.list[PartRecord]:
        """Catalog part files that the catalog lacks (after a corrupted catalog was kept aside)."""
        from engine.parts.reindex import reindex

        return reindex(self)

    # --- checking and using -------------------------------------------------------------
    def verify(self, name: str | None = None) -> builtins.list[VerifyResult]:
        """Recompute each part file's sha256; flag files that are missing or altered."""
        records = [self.get(name)] if name else self._all()
        results = []
        for record in records:
            path = self.file_path(record.file, record.name)
            if not path.is_file():
                results.append(VerifyResult(record.name, "missing", str(path), record.sha256))
                continue
            actual = _file_digest(path, record.sha256)
            status = "ok" if actual == record.sha256 else "altered"
            results.append(VerifyResult(record.name, status, str(path), record.sha256, actual))
        return results

    def fits(self, loaded: Any, address: str) -> builtins.list[PartRecord]:
        """Parts in the bin that fit slot ``address`` of ``loaded`` (structure-only models work)."""
        from engine.parts.fits import fitting

        return fitting(self._all(), loaded, address)

    def load_tensors(self, name: str) -> dict[str, Tensor]:
        """The part's tensors, after checking the file still has its catalogued sha256."""
        record = self.get(name)
        payload = self._checked_bytes(self.file_path(record.file, record.name), name, record.sha256)
        tensors, _ = read_part_file(payload)
        return tensors

    def load_module(self, name: str, attn_implementation: str | None = None) -> nn.Module:
        """The part as a runnable module, built from its config fragment and its tensors."""
        from engine.parts.rebuild import build_module

        record = self.get(name)
        return build_module(record.config, self.load_tensors(name), attn_implementation=attn_implementation)


def _file_digest(path: Path, expected: str) -> str:
    """The file's content digest; its whole-file sha256 when that is what the catalog holds (older parts)."""
    whole = sha256_file(path)
    if whole == expected:
        return whole
    try:
        return content_digest_file(path)
    except PartError:
        return whole


def _doc(record: PartRecord) -> dict[str, Any]:
    return record_doc(record)


def _dtype(tensors: dict[str, Tensor]) -> str:
    from engine.parts.extract import dtype_name

    return dtype_name(tensors)


def _free_name(table, base: str) -> str:
    taken = {doc["name"] for doc in table.all()}
    if base not in taken:
        return base
    counter = 2
    while f"{base}-{counter}" in taken:
        counter += 1
    return f"{base}-{counter}"


def _check_request(name: str | None, tags) -> None:
    """Refuse a bad name or tag before any tensor is read."""
    if name is not None:
        check_name(name)
    for tag in tags:
        _check_tag(tag)


def _check_tag(tag: str) -> None:
    if not tag or not tag.strip() or len(tag) > 64 or any(c in tag for c in "\n\r\t,"):
        raise PartNameError(f"tag '{tag}' is not allowed: 1-64 characters, no commas, tabs or newlines")


def _parse_shape(shape: str | list[int]) -> list[int]:
    if isinstance(shape, str):
        try:
            return [int(n) for n in shape.lower().replace(",", "x").split("x") if n.strip()]
        except ValueError as exc:
            raise PartNameError(f"shape '{shape}' is not like 576x1536") from exc
    return [int(n) for n in shape]


def _tied_sources(structure: Any, plan: PartPlan) -> dict[str, str]:
    """For tied embeddings, where the checkpoint keeps the LM head's weight (under the embedding)."""
    if not getattr(structure.config, "tie_word_embeddings", False) or plan.kind != "lm_head":
        return {}
    embed = structure.anatomy.by_address.get("embed")
    if embed is None:
        return {}
    return {entry.source: f"{embed.module_path}.weight" for entry in plan.tensors}
