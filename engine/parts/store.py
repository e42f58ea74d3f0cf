"""The TinyDB catalog file: atomic writes, a file lock, and corruption kept aside, never overwritten."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from engine.errors import StorageError
from engine.limits import MAX_DOC_BYTES
from engine.parts.errors import CatalogCorruptError
from engine.parts.record import PartRecord, catalog_problem
from engine.safe_parse import BadDocumentError, loads_json
from engine.storage import atomic_write_text, ensure_dir, sweep_stale_staging

CATALOG_FILE = "catalog.json"
TABLE = "parts"  # the catalog's one TinyDB table
LOCK_FILE = ".catalog.lock"
LOCK_TIMEOUT_S = 120.0


class AtomicJSONStorage(Storage):
    """TinyDB storage that writes through temp file + rename and refuses to guess at bad JSON.

    TinyDB's own ``JSONStorage`` truncates and rewrites in place, so a crash mid-write loses
    the catalog, and it would overwrite an unreadable file with an empty one.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_DOC_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read the parts catalog {self.path}: {exc.strerror}") from exc
        if not raw.strip():
            return None
        try:
            if len(raw) > MAX_DOC_BYTES:
                raise ValueError(f"larger than the limit of {MAX_DOC_BYTES:,} bytes")
            document = loads_json(raw, "catalog")
            problem = catalog_problem(document)
            if problem is not None:
                raise ValueError(problem)
        except (ValueError, BadDocumentError) as exc:
            kept = _keep_aside(self.path)
            reason = str(exc).splitlines()[0].removeprefix("catalog ")
            raise CatalogCorruptError(
                f"the parts catalog {self.path} is corrupted ({reason}); it was kept as {kept.name} "
                "and a fresh catalog will start next time; part files under parts/ are untouched "
                "(`garage parts reindex` catalogs them again)"
            ) from exc
        return document

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, sort_keys=True, indent=1) + "\n")

    def close(self) -> None:
        pass


def _keep_aside(path: Path) -> Path:
    """Rename an unreadable catalog to ``<file>.corrupt-<timestamp>`` so no byte of it is lost."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        raise CatalogCorruptError(
            f"the parts catalog {path} is corrupted and could not be moved aside ({exc.strerror}); "
            "fix or move it by hand"
        ) from exc
    return target


def check_writable(folder: Path) -> None:
    """Fail early, with the folder named, when GARAGE_HOME cannot take a write."""
    ensure_dir(folder)
    probe = folder / LOCK_FILE
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError as exc:
        raise StorageError(
            f"GARAGE_HOME is not writable: cannot write in {folder} ({exc.strerror}); "
            "set GARAGE_HOME to a writable folder"
        ) from exc


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the catalog's inter-process lock (filelock) for a read-modify-write."""
    from filelock import FileLock, Timeout

    check_writable(folder)
    lock = FileLock(str(folder / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout as exc:
        raise StorageError(f"the parts catalog in {folder} stayed locked for {LOCK_TIMEOUT_S:.0f}s; "
                           "is another garage stuck? remove the lock file if not") from exc
    except OSError as exc:
        raise StorageError(f"cannot lock the parts catalog in {folder} ({exc.strerror}); "
                           "set GARAGE_HOME to a writable folder") from exc
    try:
        sweep_stale_staging(folder)  # part and catalog writes killed earlier: their staging goes now
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def open_db(folder: Path) -> Iterator[TinyDB]:
    db = TinyDB(str(folder / CATALOG_FILE), storage=AtomicJSONStorage)
    try:
        yield db
    finally:
        db.close()


def record_doc(record: PartRecord) -> dict[str, Any]:
    """A part record as stored in the catalog table (its file path is derived, not stored)."""
    doc = record.to_dict()
    doc.pop("path", None)
    return doc
