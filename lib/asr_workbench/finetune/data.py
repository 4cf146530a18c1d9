"""Training data for fine-tuning: ``data_path/{train,dev}`` validated, written as funasr jsonl.

Before training, say what funasr would drop silently (utterances longer than
``max_source_length`` frames or ``max_token_length``; a split it would skip whole fails here), which transcript
characters the model does not know (they train as ``<unk>``), and which audio cannot be decoded to its end
(funasr's trainer would stop there, mid-epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr_workbench import datadir
from asr_workbench.fileio import atomic_write_text

__all__ = ["SplitData", "find_split", "prepare_split", "write_shards", "make_data_path", "missing_audio",
           "AUDIO_SUFFIXES", "MISSING_AUDIO", "list_sha256"]


@dataclass
class SplitData:
    """One validated split (train or dev) and its funasr jsonl."""

    name: str
    folder: Path
    dataset: datadir.DataSet
    jsonl: Path
    dropped: list[dict[str, Any]] = field(default_factory=list)  # what funasr would skip, and why
    oov: Counter[str] = field(default_factory=Counter)
    marks: Counter[str] = field(default_factory=Counter)  # punctuation left out of the targets (not in the vocab)

    @property
    def trained(self) -> list[datadir.Utterance]:
        """The utterances funasr trains on: scored, and not among those it skips (``dropped``)."""
        skipped = {d["key"] for d in self.dropped}
        return [u for u in self.dataset.scored if u.key not in skipped]

    @property
    def n_utts(self) -> int:
        return len(self.trained)

    @property
    def hours(self) -> float:
        return sum(u.duration_s for u in self.trained) / 3600

    def frames(self) -> list[int]:
        return [int(u.duration_s * 100) for u in self.trained]


def find_split(data_path: Path, name: str) -> Path:
    """``data_path/train`` (a folder with wav.scp) or ``data_path/train.jsonl`` (FunASR's list); for dev also
    ``validation``/``valid``/``val`` (FunASR 0.x's folder name, FunASR 1.x's ``val.jsonl``)."""
    names = [name] + (["validation", "valid", "val"] if name == "dev" else [])
    for n in names:
        if (data_path / n / "wav.scp").is_file():
            return data_path / n
        if (data_path / f"{n}.jsonl").is_file():
            return data_path / f"{n}.jsonl"
    raise FileNotFoundError(f"{data_path}: no {' or '.join(n + '/wav.scp' for n in names)}, "
                            f"nor {' or '.join(n + '.jsonl' for n in names)}")


def funasr_skips(record: Mapping[str, Any], dataset_conf: Mapping[str, Any]) -> str | None:
    """Why funasr's IndexDSJsonl would skip this training record (its checks, its defaults), or None."""
    c = {k: int(dataset_conf.get(k, d)) for k, d in (("min_source_length", 0), ("max_source_length", 2048),
                                                       ("min_target_length", 0), ("max_target_length", 2048),
                                                       ("max_token_length", 2200))}
    src, tgt = int(record["source_len"]), int(record["target_len"])
    if not c["min_source_length"] <= src <= c["max_source_length"]:
        return (f"{src / 100:.1f} s outside min/max_source_length {c['min_source_length']}-{c['max_source_length']} "
                f"frames ({c['max_source_length'] / 100:.1f} s)")
    if not c["min_target_length"] <= tgt <= c["max_target_length"]:
        return f"{tgt} tokens outside min/max_target_length {c['min_target_length']}-{c['max_target_length']}"
    if src + tgt > c["max_token_length"]:
        return f"source+target {src + tgt} > max_token_length {c['max_token_length']}"
    return None


def prepare_split(folder: Path, name: str, out_dir: Path, vocab: list[str] | None, dataset_conf: Mapping[str, Any],
                  on_bad_input: str = "skip", sample_rate: int = 16000) -> SplitData:
    """Validate a split, write its report and jsonl, list funasr's silent drops and unknown characters."""
    ds = datadir.load_dataset(folder, vocab=vocab, on_bad_input=on_bad_input, max_duration_s=float("inf"),
                              sample_rate=sample_rate)
    if not ds.has_text:
        raise datadir.DataError(f"{folder}: fine-tuning needs a text file with transcripts")
    # funasr's trainer reads each file itself and stops at the first it cannot decode, mid-epoch: read them all now
    ds = datadir.read_through(ds, on_bad_input)
    ds.report.write_jsonl(out_dir / f"data_report_{name}.jsonl")
    if not ds.scored:
        raise datadir.DataError(f"{folder}: no usable utterance with a transcript in the {name} split "
                                f"(see {out_dir / f'data_report_{name}.jsonl'})")
    known = set(vocab) if vocab is not None else None
    dropped = [{"key": u.key, "where": u.where, "reason": why} for u in ds.scored
               if (why := funasr_skips(datadir.training_record(u, known), dataset_conf))]
    if len(dropped) == len(ds.scored):
        raise datadir.DataError(f"{folder}: funasr would skip every utterance of the {name} split, e.g. "
                                f"{dropped[0]['where']}: {dropped[0]['reason']}; raise max_duration_s or cut the audio")
    oov: Counter[str] = Counter(c for u in ds.scored for c in u.oov)
    marks: Counter[str] = Counter(c for u in ds.scored for c in datadir.untrainable_marks(u.text or "", known)) \
        if known is not None else Counter()
    jsonl = datadir.write_jsonl(ds.utterances, out_dir / f"{name}.jsonl", known)
    return SplitData(name, folder, ds, jsonl, dropped, oov, marks)


def list_sha256(jsonl: Path) -> str:
    """One hash of a training list's utterances: keys and targets, in order (not the audio paths: moved data is the
    same data)."""
    h = hashlib.sha256()
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            h.update(f"{record.get('key')}\t{record.get('target')}\n".encode())
    return h.hexdigest()


def write_shards(split: SplitData, n: int, out_dir: Path) -> Path:
    """Split a jsonl into ``n`` shard files plus a list file (funasr's ``data_split_num`` input)."""
    lines = split.jsonl.read_text(encoding="utf-8").splitlines()
    per = math.ceil(len(lines) / n) if lines else 0
    shard_dir = out_dir / f"{split.name}_shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = shard_dir / f"{split.name}.{i:04d}.jsonl"
        atomic_write_text(p, "".join(x + "\n" for x in lines[i * per : (i + 1) * per]))
        paths.append(str(p))
    listing = out_dir / f"{split.name}.list"
    atomic_write_text(listing, "".join(p + "\n" for p in paths))
    return listing


# what make_data_path takes for audio (the suffixes libsndfile reads, and compressed ones the data check names)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                            ".sph", ".nist", ".w64", ".rf64", ".caf", ".m4a", ".aac", ".wma"})
MISSING_AUDIO = "missing_audio.txt"  # transcript ids without an audio file, in a folder make_data_path built
_MADE_BY = ".made_by_make_data_path"


def missing_audio(data_path: Path) -> list[str]:
    """The transcript ids :func:`make_data_path` found no audio file for, when it built ``data_path``."""
    listed = Path(data_path) / MISSING_AUDIO
    if not (Path(data_path) / _MADE_BY).is_file() or not listed.is_file():
        return []
    return [k for k in listed.read_text(encoding="utf-8").split() if k]


def make_data_path(audio_dir: str | Path, transcripts: str | Path, out: str | Path, dev_fraction: float = 0.1,
                   seed: int = 0, min_dev: int = 1) -> tuple[Path, int, int]:
    """Build ``out/{train,dev}`` (wav.scp + text) from a folder of audio and a ``key text`` table.

    Keys are the audio file names without extension; the dev split is a seeded random sample.
    Returns ``(out, n_train, n_dev)``; audio files stay where they are (absolute paths).
    """
    audio_dir, out = Path(audio_dir).resolve(), Path(out)
    texts = datadir.read_table(transcripts)
    found: dict[str, list[Path]] = {}
    for f in sorted(audio_dir.rglob("*")):
        if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file():
            found.setdefault(f.stem, []).append(f)
    twice = {k: v for k, v in found.items() if k in texts and len(v) > 1}
    if twice:  # which one the transcript belongs to is not for the workbench to guess (spk1/u1.wav, spk2/u1.wav)
        shown = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in list(twice.items())[:5])
        raise datadir.DataError(f"{len(twice)} id(s) of {transcripts} name several audio files under {audio_dir} "
                                f"(keys are file names without extension): {shown}. Give each file a unique name, or "
                                "build wav.scp + text yourself")
    files = {k: v[0] for k, v in found.items()}
    keys = sorted(k for k in texts if k in files)
    missing = sorted(set(texts) - set(files))
    if not keys:
        raise datadir.DataError(f"{transcripts}: none of its ids has an audio file under {audio_dir} (audio: "
                                f"{', '.join(sorted(AUDIO_SUFFIXES))})")
    marker = out / _MADE_BY
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise FileExistsError(f"{out} already holds files that make_data_path did not write; give an empty or new "
                              "folder for the train/dev split (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("train/ and dev/ here were written by asr_workbench.finetune.make_data_path\n")
    if len(keys) < 2:
        raise datadir.DataError(f"{transcripts}: {len(keys)} utterance(s) with audio; a train/dev split needs at least 2")
    rng = random.Random(seed)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    n_dev = min(len(keys) - 1, max(min_dev, round(dev_fraction * len(keys))))
    dev = set(shuffled[:n_dev])
    for split, members in (("train", [k for k in keys if k not in dev]), ("dev", [k for k in keys if k in dev])):
        d = out / split
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        atomic_write_text(d / "wav.scp", "".join(f"{k} {files[k]}\n" for k in members))
        atomic_write_text(d / "text", "".join(f"{k} {texts[k]}\n" for k in members))
    if missing:
        atomic_write_text(out / MISSING_AUDIO, "".join(f"{k}\n" for k in missing))
    else:  # an earlier build's list no longer describes this one
        (out / MISSING_AUDIO).unlink(missing_ok=True)
    return out, len(keys) - n_dev, n_dev
