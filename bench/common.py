"""Shared by the benchmarks: a mixed-length data set built from the demo audio, timing, the results file."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from asr_workbench import datadir, paths

__all__ = ["mixed_set", "machine", "append_results", "Timer"]


def mixed_set(out: Path, n: int, min_s: float = 1.0, max_s: float = 20.0, seed: int = 0,
              sources: tuple[str, ...] = ("demo/data/base/test", "demo/data/target/test")) -> Path:
    """``n`` utterances of 1-20 s (uniform), each a concatenation of demo clips with their transcripts."""
    if (out / "wav.scp").is_file() and len((out / "wav.scp").read_text().splitlines()) == n:
        return out
    clips = []
    for src in sources:
        d = paths.resolve(src)
        wavs, texts = datadir.read_table(d / "wav.scp"), datadir.read_table(d / "text")
        clips += [(sf.read(str(d / p), dtype="float32")[0], texts[k]) for k, p in wavs.items()]
    rng = random.Random(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    scp, txt = [], []
    for i in range(n):
        target, parts, words = rng.uniform(min_s, max_s) * 16000, [], []
        while sum(len(p) for p in parts) < target - 8000 or not parts:
            x, t = rng.choice(clips)
            if parts and sum(len(p) for p in parts) + len(x) > max_s * 16000:
                break
            parts.append(x)
            words.append(t)
        key = f"mix{i:04d}"
        sf.write(str(out / "audio" / f"{key}.wav"), np.concatenate(parts), 16000, subtype="PCM_16")
        scp.append(f"{key} audio/{key}.wav")
        txt.append(f"{key} {''.join(words)}")
    (out / "wav.scp").write_text("\n".join(scp) + "\n")
    (out / "text").write_text("\n".join(txt) + "\n", encoding="utf-8")
    return out


def machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:
        gpu = "?"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


def _commit() -> str:
    """The checkout's commit, marked when tracked files differ from it; on a machine without the git folder
    (the GPU machine gets a copy of the work tree) ``$BENCH_COMMIT``, which bench/gpu.sh reads from .gpu/commit."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    git = ["git", "-C", str(paths.repo_root())]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "lib", "bench/*.py", "bench/*.sh"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "?"
    return (head + (" + uncommitted changes" if dirty else "")) if head else "?"


def append_results(section: str, command: str, rows: list[dict], note: str = "") -> None:
    """Append a dated table to bench/RESULTS.md (and print it)."""
    if not rows:
        return
    cols = list(dict.fromkeys(c for r in rows for c in r))  # every column any row has, in first-seen order
    lines = [f"\n### {section} - {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"machine: {machine()}; commit {_commit()}; command: `{command}`" + (f"\n{note}" if note else ""), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    results = paths.repo_root() / "bench" / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n\nEvery table: when, where, the command, the numbers. "
                           "Ratios are measured in the same run.\n", encoding="utf-8")
    with open(results, "a", encoding="utf-8") as f:
        f.write(text)
    json_line = {"section": section, "command": command, "machine": machine(), "rows": rows, "note": note}
    with open(paths.repo_root() / "bench" / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(json_line, ensure_ascii=False) + "\n")


class Timer:
    def __enter__(self) -> "Timer":
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t
