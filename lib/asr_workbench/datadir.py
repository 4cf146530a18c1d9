"""Kaldi-style data folders (``wav.scp``, ``text``) and funasr jsonl lists."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import soundfile as sf

__all__ = ["read_table", "write_jsonl_from_dir", "atomic_write_text"]

_SPLIT = re.compile(r"\s+")


def read_table(path: str | Path) -> dict[str, str]:
    """Read ``key value`` lines (tabs or spaces; CRLF, BOM and blank lines tolerated).

    Raises ``ValueError`` naming ``file:line`` for a line without a value or a duplicate key.
    """
    out: dict[str, str] = {}
    with open(path, encoding="utf-8-sig", newline=None) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = _SPLIT.split(line, maxsplit=1)
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected 'key value', got {line!r}")
            key, value = parts
            if key in out:
                raise ValueError(f"{path}:{n}: duplicate id {key!r}")
            out[key] = value
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_jsonl_from_dir(data_dir: str | Path, out: str | Path) -> Path:
    """funasr training jsonl (key, source, source_len in 10 ms frames, target, target_len).

    Audio paths are made absolute (resolved against ``data_dir``), so the list works from any folder.
    """
    data_dir = Path(data_dir).resolve()
    wavs = read_table(data_dir / "wav.scp")
    texts = read_table(data_dir / "text")
    lines = []
    for key, rel in wavs.items():
        audio = (data_dir / rel).resolve()
        info = sf.info(str(audio))
        target = texts[key].replace(" ", "")
        lines.append(json.dumps({"key": key, "source": str(audio), "source_len": int(info.duration * 100),
                                 "target": target, "target_len": len(target)}, ensure_ascii=False))
    out = Path(out)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
