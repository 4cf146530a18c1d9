"""Reading audio for the models: 16 kHz mono float32, whatever the file holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["SAMPLE_RATE", "AudioError", "AudioInfo", "probe", "load", "load_checked", "level_warning", "PLAYER_SECONDS", "Playable", "playable"]

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file the model cannot hear: it stops decoding part-way (corrupt data) or holds NaN / infinite samples."""


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

    Raises :class:`AudioError` when the file cannot be decoded to the end (a damaged FLAC frame, a cut-off file)
    or holds samples that are not finite (a float WAV with NaN: the model's features would be NaN).
    """
    return load_checked(path, target_sr)[0]


def load_checked(path: str | Path, target_sr: int | None = SAMPLE_RATE) -> tuple[np.ndarray, str | None]:
    """:func:`load`, with :func:`level_warning` of the samples as the file holds them (``target_sr`` None: at the
    file's own rate)."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as e:  # libsndfile's and its codecs' errors
        if not Path(path).is_file():  # gone since the data check: no property of the audio, not to be recorded
            raise FileNotFoundError(f"audio file not found: {path}") from e
        raise AudioError(f"cannot be decoded to the end (corrupt or truncated data): {e}") from e
    if not np.isfinite(x.sum(dtype=np.float64)):  # one pass; NaN and inf carry through a sum
        finite = np.isfinite(x).all(axis=1)
        raise AudioError(f"{int(x.size - np.isfinite(x).sum())} sample(s) are NaN or infinite "
                         f"(the first at {int(np.argmin(finite)) / sr:.2f} s)")
    warning = level_warning(x)
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if warning is None and x.shape[1] > 1 and _peak(mono) < _CANCELLED * _peak(x):
        warning = (f"the {x.shape[1]} channels cancel out when averaged to mono (one is phase-inverted?): the model "
                   "hears near silence; keep one channel, e.g. sox in.wav out.wav remix 1")
    if target_sr and sr != target_sr:
        import torch
        import torchaudio.functional as F

        mono = F.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, target_sr).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32), warning


# a float file's samples belong in [-1, 1]: beyond 2 they are not a loud recording but another scale (int16 values
# stored as floats: the model, which scales by 2**15 itself, hears them 32768 times too loud)
_FULL_SCALE_FACTOR = 2.0
_CLIPPED_SHARE = 0.01  # clipping in more than 1 % of the samples is heard as distortion
_CODEC_FULL_SCALE = 0.97  # the largest value of the file's sample format: 1.0 for PCM, 0.98 for A-law and mu-law
_CANCELLED = 0.01  # a down-mix 40 dB below its loudest channel: the channels cancel (one is phase-inverted)


def _peak(samples: np.ndarray) -> float:
    """The largest absolute sample (0 for none), without an |x| copy: this runs on every decoded file."""
    return max(float(samples.max()), -float(samples.min())) if samples.size else 0.0


def level_warning(samples: np.ndarray) -> str | None:
    """What is wrong with a recording's level for an ASR model, or None (``samples``: float, full scale 1.0)."""
    peak = _peak(samples)
    if peak > _FULL_SCALE_FACTOR:
        return (f"samples reach {peak:.4g}, far beyond full scale (1.0): float audio stored at another scale "
                f"(int16 values as floats?); the model hears it {peak:.3g} times too loud; rescale it to [-1, 1]")
    if peak == 0.0 and samples.size:
        return "every sample is zero (digital silence): there is nothing to hear"
    # clipping flattens the wave at full scale (A-law's and mu-law's largest values are 0.984 and 0.980); a float
    # file louder than that is over-scaled, not clipped
    clipped = float(np.mean(np.abs(samples) >= peak * 0.999)) if _CODEC_FULL_SCALE <= peak <= 1.0 else 0.0
    if clipped > _CLIPPED_SHARE:
        return f"clipped: {clipped:.1%} of the samples sit at full scale; expect more errors on it"
    return None


PLAYER_SECONDS = 30.0  # what a report embeds of one file: 10 players of 10-minute files made a 256 MB report


@dataclass(frozen=True)
class Playable:
    """Audio for a player in a report: FLAC bytes (lossless: what was decoded, about half a WAV's size)."""

    data: bytes
    seconds: float  # the whole file's length
    clipped_to: float | None  # the player's length when shorter than the file

    mime = "audio/flac"


def playable(path: str | Path, max_seconds: float | None = PLAYER_SECONDS) -> Playable:
    """The file's first ``max_seconds`` (None: all of it) at 16 kHz, 16-bit FLAC, for a player in a report; samples
    beyond full scale (an over-scaled float file) scaled down to it, or they would play as a clipped full-volume
    square wave."""
    import io

    x = load(path)
    seconds = len(x) / SAMPLE_RATE
    keep = len(x) if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    clip = x[:keep]
    peak = _peak(clip)
    buf = io.BytesIO()
    sf.write(buf, clip / peak if peak > 1.0 else clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return Playable(buf.getvalue(), seconds, max_seconds if len(x) > keep else None)
