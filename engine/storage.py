"""Where lasting data lives, and atomic writes into it.

Every write goes through a *staging* file or folder beside its target, named
``.<target>.<pid>.<random>.garage.tmp`` so it can be recognised; a folder being replaced is
moved aside as ``.<target>.<pid>.<random>.garage.old``. A kill leaves at most those behind,
and the next write of the same target (or ``sweep_stale_staging`` on the folder) removes the
ones whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import StorageError

STAGING_SUFFIX = ".garage.tmp"
ASIDE_SUFFIX = ".garage.old"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[A-Za-z0-9_]+)\.garage\.(?P<kind>tmp|old)$")


def garage_home() -> Path:
    """GARAGE_HOME, or the XDG data folder's ``model-garage``."""
    explicit = os.environ.get("GARAGE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "model-garage"


def cache_dir() -> Path:
    """Conversion cache; GARAGE_CACHE lets tests and CI share one across homes."""
    explicit = os.environ.get("GARAGE_CACHE")
    return Path(explicit).expanduser() if explicit else garage_home() / "cache"


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create folder {path}: {exc.strerror}; set GARAGE_HOME to a writable folder"
        ) from exc
    return path


# --- staging: recognisable names, swept when their writer is gone -------------------------
def _staging_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def staging_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh, unused staging name beside ``target`` (``kind`` is ``tmp`` or ``old``); nothing is created."""
    import secrets  # here, not at the top: the TUI's first frame imports this module

    token = secrets.token_hex(4)
    return target.parent / f"{_staging_prefix(target)}{token}.garage.{kind}"


def is_staging(path: Path) -> bool:
    """Whether ``path`` is named like garage staging (a half-made write or a replaced folder)."""
    return _STAGING_RE.match(path.name) is not None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_stale_staging(folder: Path, target_name: str | None = None) -> list[Path]:
    """Remove staging in ``folder`` left by writers that no longer run; returns what was removed.

    Only names this module makes are touched (``.<name>.<pid>.<random>.garage.tmp|old``), only
    when their process is gone, and, with ``target_name``, only those of that target. If a
    target is missing but a dead writer had moved its old folder aside (a kill between the two
    renames of a replacement), the old folder is put back first, so the state is the old one.
    """
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    removed: list[Path] = []
    stale = []
    for entry in entries:
        match = _STAGING_RE.match(entry.name)
        if match is None or (target_name is not None and match["name"] != target_name):
            continue
        if _process_alive(int(match["pid"])):
            continue
        stale.append((entry, match))
    for entry, match in stale:
        original = folder / match["name"]
        if match["kind"] == "old" and not original.exists() and not original.is_symlink():
            with contextlib.suppress(OSError):
                os.replace(entry, original)
                continue
        _remove(entry)
        removed.append(entry)
    return removed


# --- atomic writes -------------------------------------------------------------------------
def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write through a staging file in the same folder and rename, so readers never see half a file."""
    ensure_dir(path.parent)
    sweep_stale_staging(path.parent, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_staging_prefix(path), suffix=STAGING_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}; check the folder is writable") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, document: Any) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_output_path(path: Path) -> Iterator[Path]:
    """Yield a staging path beside ``path``; rename it onto ``path`` only if the block succeeds.

    For writers (safetensors' ``save_file``) that want a file name rather than bytes.
    """
    ensure_dir(path.parent)
    sweep_stale_staging(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=_staging_prefix(path), suffix=STAGING_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes  # here, not at the top: the TUI's first frame imports this module

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; an existing ``target`` is swapped out and deleted last.

    Where the system can swap two paths in one step there is no moment with neither folder;
    elsewhere the old folder is renamed aside first, and a kill between the two renames is
    undone by ``sweep_stale_staging`` (the old folder goes back).
    """
    if not target.exists() and not target.is_symlink():
        os.replace(new, target)
        return
    if _exchange(new, target):
        _remove(new)  # ``new`` now names the old folder
        return
    aside = staging_path(target, "old")
    os.replace(target, aside)
    os.replace(new, target)
    _remove(aside)


@contextlib.contextmanager
def atomic_output_dir(path: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; it becomes ``path`` only if the block succeeds.

    A failure or a kill leaves at most a hidden ``.name.<pid>.<random>.garage.tmp`` folder,
    never a half-made ``path``; an existing ``path`` is replaced by ``replace_dir``. Callers
    decide whether an existing ``path`` may be replaced at all.
    """
    ensure_dir(path.parent)
    sweep_stale_staging(path.parent, path.name)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_staging_prefix(path), suffix=STAGING_SUFFIX, dir=path.parent))
    try:
        yield tmp_dir
        replace_dir(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
