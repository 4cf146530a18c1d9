"""Files other people read: written atomically (temporary file + rename); numbers YAML 1.1 leaves as strings."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "atomic_write_json", "jsonl_line", "read_jsonl", "yaml_number", "load_yaml_strict"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shared results should be readable
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash leaves the old file or the new, never an empty one
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON (UTF-8, indented, non-ASCII kept) written atomically."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def jsonl_line(obj: Any) -> str:
    """One JSON Lines record with its newline: non-ASCII kept, but U+2028, U+2029 and NEL escaped. JSON allows
    them raw, and ``str.splitlines`` (what many readers use) would cut a record that holds one in a transcript."""
    return json.dumps(obj, ensure_ascii=False, default=str).translate(_LINE_BREAKS) + "\n"


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line of a JSON Lines file; the record is None for a line that is
    not JSON. Read as bytes, line by line: a crash mid-write that cut a character in half spoils its line only
    (reading the whole file as UTF-8 failed on it)."""
    for n, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            yield n, None


_YAML11_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def yaml_number(value: Any) -> Any:
    """A string that means a number as that number: YAML 1.1 (PyYAML) reads ``1e-4`` and ``3e3`` as strings.
    An int when written without a point or exponent, else a float; any other value as it is."""
    if isinstance(value, str) and _YAML11_NUMBER.fullmatch(value.strip()):
        return float(value) if any(c in value for c in ".eE") else int(value.strip())
    return value


def load_yaml_strict(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, but a key given twice in one mapping is an error naming its line
    (safe_load keeps the last one silently: ``batch_size: 8`` further down a params file wins unseen)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *anchor, merged by safe_load's own constructor
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: safe_load's own error follows
                pass
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass

