"""JSON and YAML read with limits: size, UTF-8, nesting depth and alias expansion.

Every document the garage reads from disk (recipes, sessions, keymap, settings, the parts
catalog, a build's ``recipe.yaml``, configs) goes through here, so a file nested tens of
thousands deep, a billion-laughs alias bomb, a recursive anchor or bytes that are not UTF-8
end as one ``BadDocumentError`` naming the file, never as a hang, a crash or a traceback.
YAML is composed into nodes first; the node graph is measured (aliases counted as the
copies they would expand to, cycles refused) before anything is constructed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import GarageError
from engine.limits import MAX_DOC_BYTES, MAX_DOC_DEPTH, MAX_DOC_NODES


class BadDocumentError(GarageError):
    """A JSON/YAML document that is too big, too deep, an alias bomb, not UTF-8 or not parseable."""


def read_text_limited(path: Path, what: str = "file", max_bytes: int = MAX_DOC_BYTES) -> str:
    """The UTF-8 text of ``path``, refusing more than ``max_bytes`` before reading it all."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise BadDocumentError(f"{what} {path} does not exist; check the path") from exc
    except IsADirectoryError as exc:
        raise BadDocumentError(f"{what} {path} is a folder, not a file; pass the file") from exc
    except OSError as exc:
        raise BadDocumentError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        raise BadDocumentError(f"{what} {path} is larger than the limit of {max_bytes:,} bytes; "
                               "is it the right file?")
    return decode_utf8(raw, f"{what} {path}")


def decode_utf8(raw: bytes, label: str) -> str:
    """``raw`` as UTF-8 (a BOM is dropped), or one error naming the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadDocumentError(f"{label} is not UTF-8 text (bad byte at offset {exc.start}); "
                               "save it as UTF-8") from exc


def _too_deep(label: str) -> BadDocumentError:
    return BadDocumentError(f"{label} is nested deeper than the limit of {MAX_DOC_DEPTH} levels; "
                            "is it the right file?")


def check_depth(value: Any, label: str, max_depth: int = MAX_DOC_DEPTH, *, finite: bool = False) -> None:
    """Refuse a parsed value nested deeper than ``max_depth`` (iterative; no recursion).

    With ``finite``, a NaN or ±inf anywhere in it is refused too (YAML spells them ``.nan``/``.inf``).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_DOC_NODES:
            raise BadDocumentError(f"{label} has more than {MAX_DOC_NODES:,} values; is it the right file?")
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            if finite and isinstance(item, float) and not math.isfinite(item):
                raise BadDocumentError(f"{label} holds the number {item}; only finite numbers are accepted")
            continue
        if depth + 1 > max_depth:
            raise _too_deep(label)
        stack.extend((child, depth + 1) for child in children)


def loads_json(text: str | bytes, label: str, max_depth: int = MAX_DOC_DEPTH) -> Any:
    """Parse JSON text with the depth and size limits; ``label`` names the file in errors."""
    if isinstance(text, bytes):
        if len(text) > MAX_DOC_BYTES:
            raise BadDocumentError(f"{label} is larger than the limit of {MAX_DOC_BYTES:,} bytes")
        text = decode_utf8(text, label)
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise _too_deep(label) from exc
    except ValueError as exc:  # JSONDecodeError and our constant refusal
        raise BadDocumentError(f"{label} is not valid JSON ({str(exc).splitlines()[0]}); fix or replace it") from exc
    check_depth(value, label, max_depth)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} overflows to infinity; only finite numbers are accepted")
    return value


def load_json(path: Path, what: str = "file", max_bytes: int = MAX_DOC_BYTES) -> Any:
    """Read and parse a JSON file with every limit."""
    return loads_json(read_text_limited(path, what, max_bytes), f"{what} {path}")


def _measure(node: Any, label: str) -> None:
    """Refuse a YAML node graph that is cyclic, too deep, or expands (through aliases) past the limit."""
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(current: Any, depth: int) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise BadDocumentError(f"{label} refers to itself through a YAML alias (a recursive anchor); "
                                   "write the value out instead")
        if depth > MAX_DOC_DEPTH:
            raise _too_deep(label)
        total = 1
        if isinstance(current, (yaml.SequenceNode, yaml.MappingNode)):
            on_path.add(key)
            children = current.value if isinstance(current, yaml.SequenceNode) else [
                child for pair in current.value for child in pair]
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_DOC_NODES:
                    raise BadDocumentError(
                        f"{label} expands to more than {MAX_DOC_NODES:,} values (YAML aliases repeat their "
                        "anchors); write the values out or use fewer aliases")
            on_path.discard(key)
        sizes[key] = total
        return total

    size(node, 0)


def loads_yaml(text: str | bytes, label: str) -> Any:
    """Parse YAML (safe tags only) after measuring it; JSON is YAML, so this reads both."""
    import yaml

    if isinstance(text, bytes):
        if len(text) > MAX_DOC_BYTES:
            raise BadDocumentError(f"{label} is larger than the limit of {MAX_DOC_BYTES:,} bytes")
        text = decode_utf8(text, label)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, label)
        return loader.construct_document(node)
    except RecursionError as exc:
        raise _too_deep(label) from exc
    except yaml.YAMLError as exc:
        raise BadDocumentError(f"{label} is not valid YAML ({str(exc).splitlines()[0]}); fix or replace it") from exc
    finally:
        loader.dispose()


def compose_yaml(text: str, label: str) -> Any:
    """The measured YAML node graph of ``text`` (for callers that map values to line numbers)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _measure(node, label)
        return node
    except RecursionError as exc:
        raise _too_deep(label) from exc
    finally:  # a syntax error stays a yaml.YAMLError, so callers can name its line
        loader.dispose()


def load_yaml(path: Path, what: str = "file", max_bytes: int = MAX_DOC_BYTES) -> Any:
    """Read and parse a YAML (or JSON) file with every limit."""
    return loads_yaml(read_text_limited(path, what, max_bytes), f"{what} {path}")


LINE_MAP_BYTES = 64 * 1024  # YAML nodes (for line numbers) only for documents this small: PyYAML is slow


def loads_document(text: str, label: str) -> tuple[Any, Any]:
    """A JSON-or-YAML document and, when cheap, its YAML node graph (for line numbers).

    JSON text is parsed by ``json`` (fast; a 100,000-entry list takes milliseconds, PyYAML
    takes a minute); YAML is composed once, measured, then constructed from the same nodes.
    """
    import yaml

    if text.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        except RecursionError as exc:
            raise _too_deep(label) from exc
        except ValueError:
            value = None  # not JSON: flow-style YAML, read below
        else:
            check_depth(value, label)
            return value, (compose_yaml(text, label) if len(text) <= LINE_MAP_BYTES else None)
    node = compose_yaml(text, label)
    if node is None:
        return None, None
    loader = yaml.SafeLoader("")
    try:
        value = loader.construct_document(node)
        check_depth(value, label, finite=True)
        return value, node
    except yaml.YAMLError as exc:
        raise BadDocumentError(f"{label} is not valid YAML ({str(exc).splitlines()[0]}); fix or replace it") from exc
    finally:
        loader.dispose()
