"""Shared fixtures: repository paths, the shipped demo model, one torch thread per process."""

from __future__ import annotations

import os
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
