"""Reading audio for the models: 16 kHz mono float32, whatever the file holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["SAMPLE_RATE", "AudioInfo", "probe", "load"]

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    path: str
    samplerate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def probe(path: str | Path) -> AudioInfo:
    """Read the header only; raises ``RuntimeError`` (soundfile's) for non-audio or unreadable files."""
    info = sf.info(str(path))
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames), info.format)


def load(path: str | Path, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Samples as float32 mono at ``target_sr`` (channels averaged, resampled with torchaudio).

    Raises ``RuntimeError`` when the file cannot be decoded to the end (truncated data).
    """
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if sr != target_sr:
        import torch
        import torchaudio.functional as F

        mono = F.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, target_sr).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)
