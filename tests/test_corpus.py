"""The synthetic corpus: spoken-number Hanzi, seeded sentences, tool checks, real synthesis."""

from __future__ import annotations

import random

import pytest
import soundfile as sf

from asr_workbench.demo import corpus


@pytest.mark.parametrize(
    "n, hanzi",
    [(0, "零"), (5, "五"), (10, "十"), (15, "十五"), (20, "二十"), (99, "九十九"), (100, "一百"),
     (105, "一百零五"), (110, "一百一十"), (2024, "二千零二十四"), (3000, "三千")],
)
def test_number_to_hanzi(n, hanzi):
    assert corpus.number_to_hanzi(n) == hanzi


def test_digits_to_hanzi():
    assert corpus.digits_to_hanzi("2024") == "二零二四"


def test_sentences_are_seeded():
    a = [corpus.base_sentence(random.Random(7)) for _ in range(3)]
    b = [corpus.base_sentence(random.Random(7)) for _ in range(3)]
    assert a == b


def test_target_characters_are_rare_but_present_in_base():
    rng = random.Random(0)
    base = "".join(corpus.base_sentence(rng) for _ in range(3000))
    target = "".join(corpus.target_sentence(rng) for _ in range(500))
    assert set(target) <= set(base)  # every target character is in the model's vocabulary
    share_in_base = sum(base.count(c) for c in "请送杯票椅") / len(base)
    share_in_target = sum(target.count(c) for c in "请送杯票椅") / len(target)
    assert share_in_target > 10 * share_in_base


def test_missing_tools_named_with_apt_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng sox"):
        corpus.check_tools()


def test_synthesize_writes_16k_mono_16bit(tmp_path):
    utts = corpus.make_utterances("u", 2, 1, corpus.target_sentence, corpus.TARGET_VOICES, snr_db=(5, 6))
    durations = corpus.synthesize(utts, tmp_path / "audio", jobs=1)
    corpus.write_data_dir(tmp_path, utts, "audio")
    for u in utts:
        info = sf.info(str(tmp_path / "audio" / f"{u.key}.flac"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert durations[u.key] > 0.5
    assert (tmp_path / "wav.scp").read_text().splitlines()[0] == f"{utts[0].key} audio/{utts[0].key}.flac"
