"""A transplant: rows of an output tensor replaced by rows of a source tensor (head moves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Transplant:
    """Rows (or columns) ``dst`` of an output tensor replaced by rows ``src`` of a source tensor."""

    alias: str
    tensor: str
    dim: int
    dst: list[tuple[int, int]]
    src: list[tuple[int, int]]
    head: int
    source_head: int | None = None
    part: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {"source": self.alias, "source_tensor": self.tensor, "dim": self.dim,
               "rows": [list(r) for r in self.dst], "source_rows": [list(r) for r in self.src], "head": self.head}
        if self.part is not None:
            doc["part"] = self.part
        else:
            doc["source_head"] = self.source_head
        return doc
