"""Decode audio with a funasr model: length-sorted batches, input order restored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

__all__ = ["Hypothesis", "load_model", "length_sorted_batches", "transcribe"]


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance."""

    key: str
    text: str
    duration_s: float


def load_model(model_dir: str, device: str = "cpu", ncpu: int | None = None, **kwargs: Any) -> Any:
    """A ``funasr.AutoModel`` on ``device`` with updates disabled (never touches the hub)."""
    from funasr import AutoModel

    extra = {"ncpu": ncpu} if ncpu else {}
    return AutoModel(model=model_dir, device=device, disable_update=True, disable_pbar=True,
                     log_level="ERROR", **extra, **kwargs)


def length_sorted_batches(durations: Sequence[float], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    for start in range(0, len(order), max(1, batch_size)):
        yield order[start : start + batch_size]


def transcribe(model: Any, items: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Hypothesis]:
    """Decode ``(key, audio_path)`` pairs; results come back in input order."""
    audio = [sf.read(path, dtype="float32", always_2d=True) for _, path in items]
    for (key, path), (_, sr) in zip(items, audio):
        if sr != 16000:
            raise ValueError(f"{path}: sample rate {sr}, expected 16000 ({key})")
    waves = [x.mean(axis=1).astype(np.float32) for x, _ in audio]
    durations = [len(w) / 16000 for w in waves]
    texts: list[str] = [""] * len(items)
    for batch in length_sorted_batches(durations, batch_size):
        res = model.generate(input=[waves[i] for i in batch], batch_size=len(batch))
        for i, r in zip(batch, res):
            texts[i] = r.get("text", "")
    return [Hypothesis(k, t, d) for (k, _), t, d in zip(items, texts, durations)]
