"""The JSONL journal that makes a search resumable.

Line one is a header (spec fingerprint, batch size); every later line is one finished trial,
appended and fsynced as it arrives. A run killed mid-write leaves at most one torn last line,
which is dropped (the file rewritten atomically) before appending resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import GarageError
from engine.search.spec import SearchSpec
from engine.search.trial import TrialResult

JOURNAL_VERSION = 1


class JournalError(GarageError):
    """A journal that belongs to another search or is damaged beyond its last line."""


class Journal:
    """The finished trials of one search, by trial number."""

    def __init__(self, path: Path, spec: SearchSpec, batch: int) -> None:
        self.path = Path(path)
        self.results: dict[int, TrialResult] = {}
        header = {"journal_version": JOURNAL_VERSION, "search": spec.name, "fingerprint": spec.fingerprint(),
                  "batch": batch}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load(header)
        else:
            from engine.storage import atomic_write_text

            atomic_write_text(self.path, json.dumps(header) + "\n")

    def _load(self, header: dict) -> None:
        from engine.storage import atomic_write_text

        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            found = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError) as exc:
            raise JournalError(f"{self.path} is not a search journal; pass a new --journal file") from exc
        if found.get("fingerprint") != header["fingerprint"]:
            raise JournalError(f"{self.path} belongs to a different search (spec, seed or objectives changed); "
                               "pass a new --journal file to start over")
        if found.get("batch") != header["batch"]:
            raise JournalError(f"{self.path} was run with a batch of {found.get('batch')} "
                               f"(workers); resume with the same --workers to get the same trials")
        kept = [lines[0]]
        for number, line in enumerate(lines[1:], start=2):
            try:
                result = TrialResult.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if number == len(lines):  # torn by a kill mid-write: that trial simply runs again
                    atomic_write_text(self.path, "\n".join(kept) + "\n")
                    break
                raise JournalError(f"{self.path} line {number} is damaged; fix or remove that line") from exc
            kept.append(line)
            self.results[result.number] = result

    def append(self, result: TrialResult) -> None:
        """Record one finished trial durably before anything else sees it."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(result.to_dict()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.results[result.number] = result
