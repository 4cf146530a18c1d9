"""Shared fixtures: repository paths, the shipped demo model, one torch thread per process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
DEMO_MODEL = DEMO / "model"
DEMO_DATA = DEMO / "data"


@pytest.fixture(scope="session")
def demo_model():
    """The shipped tiny Paraformer, loaded once through funasr.AutoModel on CPU."""
    from asr_workbench import decode

    return decode.load_model(str(DEMO_MODEL), device="cpu", ncpu=2)


def _read_table(path: Path) -> dict[str, str]:
    from asr_workbench import datadir

    return datadir.read_table(path)


def decode_items(split: str, n: int | None = None) -> list[tuple[str, str, float]]:
    """``(key, audio path, duration)`` of the first ``n`` utterances of a demo split (``"target/test"``), as
    ``decode.decode`` takes them."""
    from asr_workbench import audio

    d = DEMO_DATA / split
    return [(k, str(d / p), audio.probe(d / p).duration_s)
            for k, p in (line.split() for line in (d / "wav.scp").read_text().splitlines()[:n])]


def subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` utterances of a demo split, audio paths absolute."""
    wavs, texts = _read_table(src / "wav.scp"), _read_table(src / "text")
    keys = list(wavs)[:n]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "wav.scp").write_text("".join(f"{k} {(src / wavs[k]).resolve()}\n" for k in keys))
    (dst / "text").write_text("".join(f"{k} {texts[k]}\n" for k in keys), encoding="utf-8")
    return dst


def damaged_copies(src: Path, folder: Path) -> list[Path]:
    """A FLAC damaged mid-file (its header and last second read well) and float WAVs with a NaN sample and at
    int16 scale: faults only reading the whole file finds."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 2000] = b"\xff" * 2000
    (folder / "midcorrupt.flac").write_bytes(bytes(raw))
    x, sr = sf.read(src, dtype="float32")
    nan = x.copy()
    nan[1000:1010] = np.nan
    sf.write(folder / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(folder / "int16scale.wav", x * 32767, sr, subtype="FLOAT")
    return [folder / "midcorrupt.flac", folder / "nan.wav", folder / "int16scale.wav"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-target")
    subset(DEMO_DATA / "target/train", root / "train", 12)
    subset(DEMO_DATA / "target/dev", root / "validation", 4)  # FunASR 0.x's name for dev
    return root


@pytest.fixture(scope="session")
def notebook_finetune(tmp_path_factory, tiny_data):
    """One fine-tune through the notebook (papermill), from a copy of the base model that is then deleted."""
    work = tmp_path_factory.mktemp("finetune-notebook")
    base = work / "base-model"
    shutil.copytree(DEMO_MODEL, base)
    out = work / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(REPO / "notebooks/finetune.ipynb"), str(work / "out.ipynb"),
         "-f", str(REPO / "params/demo/finetune.yaml"), "-p", "model", str(base), "-p", "data_path", str(tiny_data),
         "-p", "output_dir", str(out), "-p", "max_epoch", "2", "-p", "keep_nbest_models", "2", "--no-progress-bar"],
        capture_output=True, text=True, timeout=900, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-4000:]
    shutil.rmtree(base)  # the fine-tuned folder must not need its base any more
    return out, work
