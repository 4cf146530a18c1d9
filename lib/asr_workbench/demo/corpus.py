"""Synthetic Mandarin speech for the embedded demo: sentences, voices, espeak-ng + sox.

Two domains are built from one small vocabulary:

* ``base``: the pretraining domain (a few voices, normal speed, clean audio,
  dates / times / phone numbers / everyday sentences);
* ``target``: a shifted domain for the fine-tuning demo (other voice
  variants, faster speech, background noise, and sentence templates built
  from in-vocabulary characters that are rare in ``base``).

Numbers are written as the Hanzi espeak-ng actually speaks (``二零二四年``,
``十五``), so every transcript matches its audio.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "Utterance",
    "Voice",
    "BASE_VOICES",
    "TARGET_VOICES",
    "check_tools",
    "espeak_version",
    "number_to_hanzi",
    "digits_to_hanzi",
    "base_sentence",
    "target_sentence",
    "make_utterances",
    "synthesize",
    "write_data_dir",
]

SAMPLE_RATE = 16000
ESPEAK_VOICE = "cmn-latn-pinyin"  # plain "cmn" reads many Hanzi as English-spelled pinyin

DIGITS = "零一二三四五六七八九"
WHO = ["我", "你", "他", "她", "我们", "你们", "他们"]
DAY = ["今天", "明天", "昨天"]
PERIOD = ["早上", "上午", "中午", "下午", "晚上"]
PLACE = ["北京", "上海", "学校", "公司", "家里", "医院", "商店", "车站"]
THING = ["东西", "朋友", "电话", "问题"]
WEEKDAY = ["一", "二", "三", "四", "五", "六", "天"]
# characters the target domain leans on; base uses them only in rare templates
ITEM = ["本书", "杯水", "张票", "把椅子"]


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice setting: variant, speed (words/min), pitch (0-99)."""

    variant: str  # "" or "+m3" ...
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{ESPEAK_VOICE}{self.variant}"


@dataclass(frozen=True)
class Utterance:
    """One synthetic utterance: id, transcript, voice and noise level."""

    key: str
    text: str
    voice: Voice
    snr_db: float | None  # None: clean


# base: three voices at normal speed; target: other variants, faster
BASE_VOICES = [Voice("", 165, 50), Voice("+m1", 155, 45), Voice("+f2", 170, 55)]
TARGET_VOICES = [Voice("+m3", 250, 35), Voice("+f3", 260, 70), Voice("+f4", 245, 62)]


def check_tools() -> None:
    """Raise a clear error naming the apt-get line when espeak-ng or sox is missing."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(
            f"missing program(s): {', '.join(missing)}. Install them with:\n"
            "    sudo apt-get install -y espeak-ng sox"
        )


def espeak_version() -> str:
    """The installed espeak-ng version line (recorded in the model card)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split("  Data at")[0]


def number_to_hanzi(n: int) -> str:
    """Spoken Hanzi for 0 <= n < 10000 (``15`` -> ``十五``, ``205`` -> ``二百零五``)."""
    if not 0 <= n < 10000:
        raise ValueError(f"number out of range: {n}")
    if n == 0:
        return "零"
    if n < 20:
        return ("十" + (DIGITS[n - 10] if n > 10 else "")) if n >= 10 else DIGITS[n]
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = (n // value) % 10
        if d:
            if zero and out:
                out += "零"
            out += DIGITS[d] + unit
            zero = False
        elif out:
            zero = True
    return out


def digits_to_hanzi(digits: str) -> str:
    """Digit-by-digit reading, as for years and phone numbers (``2024`` -> ``二零二四``)."""
    return "".join(DIGITS[int(c)] for c in digits)


def _date(rng: random.Random) -> str:
    year = digits_to_hanzi(str(rng.randint(1990, 2030)))
    return f"{year}年{number_to_hanzi(rng.randint(1, 12))}月{number_to_hanzi(rng.randint(1, 28))}日"


def _time(rng: random.Random) -> str:
    minute = rng.choice([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, rng.randint(1, 59)])
    tail = "整" if minute == 0 else f"{number_to_hanzi(minute)}分"
    return f"{rng.choice(PERIOD)}{number_to_hanzi(rng.randint(1, 12))}点{tail}"


def _phone(rng: random.Random) -> str:
    return digits_to_hanzi("".join(str(rng.randint(0, 9)) for _ in range(rng.randint(4, 8))))


_BASE_TEMPLATES: list[Callable[[random.Random], str]] = [
    lambda r: f"今天是{_date(r)}",
    lambda r: f"现在是{_time(r)}",
    lambda r: f"{r.choice(WHO)}{r.choice(DAY)}{_time(r)}去{r.choice(PLACE)}",
    lambda r: f"我的电话号码是{_phone(r)}",
    lambda r: f"{r.choice(DAY)}是星期{r.choice(WEEKDAY)}",
    lambda r: f"{r.choice(WHO)}有{number_to_hanzi(r.randint(2, 99))}个{r.choice(THING)}",
    lambda r: f"{r.choice(PLACE)}的天气很好",
    lambda r: f"{r.choice(WHO)}在{r.choice(PLACE)}等{r.choice(WHO)}",
]
# the target domain's templates; base sees them rarely (see base_sentence)
_TARGET_TEMPLATES: list[Callable[[random.Random], str]] = [
    lambda r: f"请把{number_to_hanzi(r.randint(2, 30))}{r.choice(ITEM)}送到{r.choice(PLACE)}",
    lambda r: f"请给{r.choice(WHO)}{number_to_hanzi(r.randint(2, 9))}{r.choice(ITEM)}",
    lambda r: f"{r.choice(WHO)}要开车去{r.choice(PLACE)}买{r.choice(ITEM)[1:]}",
    lambda r: f"{r.choice(PLACE)}的门{_time(r)}开",
    lambda r: f"{r.choice(DAY)}{r.choice(WHO)}想买{number_to_hanzi(r.randint(2, 20))}{r.choice(ITEM)}",
]
RARE_IN_BASE = 0.04  # share of base sentences drawn from the target templates


def base_sentence(rng: random.Random) -> str:
    """A sentence of the base domain (target-style sentences with probability 4 %)."""
    pool = _TARGET_TEMPLATES if rng.random() < RARE_IN_BASE else _BASE_TEMPLATES
    return rng.choice(pool)(rng)


def target_sentence(rng: random.Random) -> str:
    """A sentence of the target domain (its own templates, mostly)."""
    pool = _BASE_TEMPLATES if rng.random() < 0.2 else _TARGET_TEMPLATES
    return rng.choice(pool)(rng)


def make_utterances(
    prefix: str,
    n: int,
    seed: int,
    sentence: Callable[[random.Random], str],
    voices: Sequence[Voice],
    snr_db: tuple[float, float] | None = None,
    jitter: bool = True,
) -> list[Utterance]:
    """Draw ``n`` seeded utterances: a sentence, a voice (speed/pitch jittered), a noise level."""
    rng = random.Random(seed)
    utts = []
    for i in range(n):
        v = voices[i % len(voices)]
        if jitter:
            v = Voice(v.variant, v.speed + rng.randint(-10, 10), min(99, max(0, v.pitch + rng.randint(-5, 5))))
        snr = None if snr_db is None else round(rng.uniform(*snr_db), 1)
        utts.append(Utterance(f"{prefix}{i:05d}", sentence(rng), v, snr))
    return utts


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency background noise (brown noise plus a hum): realistic and FLAC-friendly."""
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove the drift
    t = np.arange(n) / SAMPLE_RATE
    hum = np.sin(2 * np.pi * rng.uniform(90, 160) * t) * rng.uniform(0.3, 1.0)
    x = brown / (brown.std() + 1e-9) + hum
    return x / (x.std() + 1e-9)


def _synthesize_one(args: tuple[Utterance, str, int]) -> tuple[str, float]:
    utt, out_path, seed = args
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(
            ["espeak-ng", "-v", utt.voice.name, "-s", str(utt.voice.speed), "-p", str(utt.voice.pitch),
             "-w", str(raw), "--", utt.text],
            check=True, capture_output=True,
        )
        conv = Path(tmp) / "conv.wav"
        subprocess.run(
            ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(conv)],
            check=True, capture_output=True,
        )
        x, sr = sf.read(conv, dtype="float32")
    assert sr == SAMPLE_RATE
    # real recordings start and end with a little silence; Paraformer's CIF predictor
    # also needs the tail to fire its last token
    pad = np.random.default_rng(seed + 7)
    x = np.concatenate([np.zeros(int(pad.uniform(0.05, 0.2) * sr), np.float32), x,
                        np.zeros(int(pad.uniform(0.25, 0.45) * sr), np.float32)])
    if utt.snr_db is not None:
        rng = np.random.default_rng(seed)
        speech_rms = np.sqrt(np.mean(x**2)) + 1e-9
        x = x + _noise(len(x), rng) * speech_rms / (10 ** (utt.snr_db / 20))
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    sf.write(out_path, x, SAMPLE_RATE, subtype="PCM_16")
    return utt.key, len(x) / SAMPLE_RATE


def synthesize(
    utts: Iterable[Utterance], audio_dir: Path, ext: str = "flac", jobs: int = 2, seed: int = 0
) -> dict[str, float]:
    """Synthesize utterances into ``audio_dir/<key>.<ext>`` (16 kHz mono 16-bit); return durations."""
    check_tools()
    audio_dir.mkdir(parents=True, exist_ok=True)
    work = [(u, str(audio_dir / f"{u.key}.{ext}"), seed + i) for i, u in enumerate(utts)]
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(pool.map(_synthesize_one, work, chunksize=16))


def write_data_dir(data_dir: Path, utts: Sequence[Utterance], audio_rel: str) -> None:
    """Write Kaldi-style ``wav.scp`` and ``text`` with audio paths relative to ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ext_of = {p.stem: p.name for p in (data_dir / audio_rel).iterdir()}
    with open(data_dir / "wav.scp", "w", encoding="utf-8") as scp, open(
        data_dir / "text", "w", encoding="utf-8"
    ) as txt:
        for u in sorted(utts, key=lambda u: u.key):
            scp.write(f"{u.key} {audio_rel}/{ext_of[u.key]}\n")
            txt.write(f"{u.key} {u.text}\n")
