"""Kaldi-style data folders (``wav.scp``, optional ``text``) and FunASR jsonl: parse and validate.

:func:`load_dataset` reads a data set, checks every line and every audio file
before anything is decoded, and returns the decodable utterances plus a
:class:`DataReport` (one :class:`Issue` per problem, with ``file:line``).
Every input id ends up either among the utterances or in the report.

Severities: ``error`` - the utterance cannot be decoded and is skipped (or the
run fails with ``on_bad_input="fail"``); ``warning`` - decoded, but something
to know (converted audio, no transcript, long audio, unknown characters...);
``info`` - how the input was read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AnyStr

import soundfile as sf

from asr_workbench import audio as audio_mod
from asr_workbench.fileio import atomic_write_text, jsonl_line
from asr_workbench.scoring import TAG, drop_invisible, tokens as score_tokens

__all__ = ["Issue", "DataReport", "Utterance", "DataSet", "DataError", "read_lines", "read_table", "load_dataset",
           "training_target", "training_record", "untrainable_marks", "read_through", "check_source",
           "write_jsonl", "write_jsonl_from_dir"]

_SPLIT = re.compile(r"\s+")
MIN_DURATION_S = 0.1
MAX_DURATION_S = 30.0


class DataError(ValueError):
    """Bad input with ``on_bad_input="fail"``: the message lists every error with its file:line."""


@dataclass(frozen=True)
class Issue:
    """One problem found in the input."""

    key: str | None
    where: str  # "path:line" or a path
    severity: str  # "error" | "warning" | "info"
    code: str  # machine-readable: "missing_file", "pipe_command", ...
    reason: str

    def __str__(self) -> str:
        """One line for an error message: ``file:line: [code] key reason``."""
        return f"{self.where}: [{self.code}] {self.key or ''} {self.reason}"


@dataclass
class DataReport:
    """Everything :func:`load_dataset` found, in input order."""

    issues: list[Issue] = field(default_factory=list)
    n_input: int = 0
    audio_base: str = "data_dir"  # what relative audio paths were resolved against

    def add(self, key: str | None, where: str, severity: str, code: str, reason: str) -> None:
        self.issues.append(Issue(key, where, severity, code, reason))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def counts(self) -> dict[str, int]:
        """Number of issues per code."""
        return dict(Counter(i.code for i in self.issues))

    def rows(self) -> list[dict[str, str | None]]:
        return [asdict(i) for i in self.issues]

    def write_jsonl(self, path: str | Path) -> None:
        """``data_report.jsonl``: one JSON object per issue (key, where, severity, code, reason)."""
        atomic_write_text(path, "".join(map(jsonl_line, self.rows())))


@dataclass(frozen=True)
class Utterance:
    """A decodable utterance."""

    key: str
    audio: str  # absolute path
    text: str | None  # None: not scored
    duration_s: float
    samplerate: int
    channels: int
    where: str  # "wav.scp:12"
    oov: tuple[str, ...] = ()  # transcript characters missing from the model's vocabulary


@dataclass
class DataSet:
    """A validated data set: the utterances to decode, in input order, and the report."""

    source: Path
    utterances: list[Utterance]
    report: DataReport
    has_text: bool

    @property
    def scored(self) -> list[Utterance]:
        return [u for u in self.utterances if u.text is not None]


def _utf16_without_bom(raw: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` for a file that is UTF-16 without a byte-order mark (its ASCII characters,
    ids and line ends, have a NUL byte on one side), else None. A UTF-8 text never holds a NUL byte."""
    if b"\x00" not in raw or len(raw) % 2:
        return None
    even, odd = raw[0::2].count(0), raw[1::2].count(0)
    for codec, nuls, others in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if nuls >= 0.1 * len(raw) / 2 and others <= nuls / 10:
            try:
                raw.decode(codec)
                return codec
            except UnicodeDecodeError:
                pass
    return None


def _split_lines(text: AnyStr, path: Path, report: DataReport) -> list[AnyStr]:
    """Lines ending at \n (any \r before it dropped: \r\n, \r\r\n), or at \r in a file of mostly lone \r
    line ends (old Mac, perhaps with a final \n added); a lone \r inside a line of a \n file (a cut-and-paste
    remnant) is a space, said once per file: lines are numbered as ``sed -n`` numbers them."""
    nl, cr, space = ("\n", "\r", " ") if isinstance(text, str) else (b"\n", b"\r", b" ")
    lines = [line.rstrip(cr) for line in text.split(nl)]
    inside = [n for n, line in enumerate(lines, 1) if cr in line]
    if not inside:
        return lines
    if sum(line.count(cr) for line in lines) >= 2 * (len(lines) - 1):  # twice as many lone \r as \n: line ends
        return [part for line in lines for part in line.split(cr)]
    report.add(None, f"{path}:{inside[0]}", "warning", "carriage_return",
               f"{len(inside)} line(s) hold a carriage return (\\r) inside them, first line {inside[0]}; each read "
               "as a space")
    return [line.replace(cr, space) for line in lines]


def _decode_lines(raw: bytes, path: Path, report: DataReport) -> list[str]:
    """The file's lines (:func:`_split_lines`; a transcript may hold U+2028, \x85 or a form feed, which
    ``str.splitlines`` would cut at). A file with a UTF-16 byte-order mark, or with the NUL bytes of UTF-16
    without one, is UTF-16. A file that is not all UTF-8 is GBK (read as GB18030, its superset) when it decodes
    so, none of its valid UTF-8 lines reads as UTF-8 text (Chinese, or accented Latin words) and its other lines
    read as Chinese (not Latin-1 accents misread); otherwise each line that is not UTF-8 is read as GBK when it
    reads as Chinese (files of both joined: then also a valid UTF-8 line that is no UTF-8 text, GBK valid as
    UTF-8 by chance), else with replacement characters, and reported, so one stray byte does not turn a UTF-8
    file into GBK mojibake."""
    codec = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else _utf16_without_bom(raw)
    if codec:  # Windows Notepad's "Unicode"
        report.add(None, str(path), "warning", "utf16_encoding",
                   f"file is UTF-16{'' if codec == 'utf-16' else ' without a byte-order mark'}, not UTF-8; read as "
                   f"UTF-16. Convert it with: iconv -f {codec.upper()} -t UTF-8 {path.name} > {path.name}.utf8")
        text = raw.decode(codec, errors="replace").removeprefix("\ufeff")
        return [line.removeprefix("\ufeff") for line in _split_lines(text, path, report)]
    # a byte-order mark starts the file, or a line of one (files joined with cat): never part of an id
    lines = [line.removeprefix(b"\xef\xbb\xbf") for line in _split_lines(raw, path, report)]
    out, bad = [], []
    for n, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode("utf-8", errors="replace"))
            bad.append(n)
    # valid UTF-8 lines: Chinese (a real UTF-8 line: GBK Chinese reads as U+0080-U+07FF letters when it happens
    # to be valid UTF-8, never as CJK), accented Latin words (café: read as GBK they would be 茅), or by-chance GBK
    valid = [n for n, line in enumerate(lines, 1) if not line.isascii() and n not in bad]

    def utf8_text(n: int) -> bool:
        return (max(out[n - 1]) >= "\u0800" or _latin_text(out[n - 1])
                or (_one_script(out[n - 1]) and not _gb2312_reading(lines[n - 1])))

    if not bad and (not valid or any(map(utf8_text, valid))):  # stops at the first real UTF-8 line
        return out
    texts = [n for n in valid if utf8_text(n)]
    if not texts:  # a GBK file, also one whose every line happens to be valid UTF-8 (一 reads as һ, 小学 as Сѧ)
        try:
            lines_gbk = [line.decode("gb18030") for line in lines]
        except UnicodeDecodeError:
            lines_gbk = []
        first = (bad or valid)[0]
        if lines_gbk and _looks_chinese([lines_gbk[n - 1] for n in (bad or valid)]):
            report.add(None, f"{path}:{first}", "warning", "gbk_encoding",
                       f"file is GBK-encoded, not UTF-8 (first GBK line: {first}); read as GBK/GB18030. "
                       f"Convert it with: iconv -f GB18030 -t UTF-8 {path.name} > {path.name}.utf8")
            return lines_gbk
    if not bad:
        return out
    gbk_lines = [n for n in bad if _gbk_chinese(lines[n - 1])]
    if gbk_lines:  # UTF-8 and GBK lists joined with cat: each line as what it is, GBK Chinese valid as UTF-8 too
        gbk_lines = sorted({*gbk_lines, *(n for n in valid if n not in texts and _gbk_chinese(lines[n - 1]))})
    for n in gbk_lines:
        out[n - 1] = lines[n - 1].decode("gb18030")
        report.add(None, f"{path}:{n}", "warning", "gbk_encoding",
                   f"line {n} is GBK-encoded while other lines are UTF-8; read as GBK/GB18030")
    for n in sorted(set(bad) - set(gbk_lines)):
        report.add(None, f"{path}:{n}", "warning", "not_utf8", f"line {n} is not UTF-8; undecodable bytes replaced")
    return out


def _one_script(line: str) -> bool:
    """Whether a line's non-ASCII letters are all of one script other than Latin (Cyrillic, Greek, Hebrew,
    Arabic...), as real UTF-8 text is. GBK Chinese that is valid UTF-8 by chance mostly mixes them (去医院 reads
    as ȥҽԺ), but not always (一些 reads as һЩ): see :func:`_gb2312_reading`."""
    scripts = {unicodedata.name(c, "?").split()[0] for c in line if not c.isascii() and c.isalpha()}
    return len(scripts) == 1 and scripts != {"LATIN"}


def _gb2312_reading(line: bytes) -> bool:
    """Whether a line read as GBK is nearly all GB2312 characters: common simplified Chinese (小学, 一些).
    Cyrillic or Greek UTF-8 text read as GBK is not (their bytes 0x80-0xA0 make rare or no characters)."""
    try:
        return _looks_chinese([line.decode("gb18030")], gb2312_only=True)
    except UnicodeDecodeError:
        return False


def _in_gb2312(c: str) -> bool:
    try:
        c.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


def _ascii_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _latin_text(line: str) -> bool:
    """Whether a line reads as Latin-script text (café, Lui è qui, 25°C): its non-ASCII characters are all accented
    Latin letters and Latin-1 signs, and its transcript (after the id) has ASCII letters. GBK Chinese valid as UTF-8
    by chance (没去 reads as ûȥ, 去3楼 as ȥ3¥) has none."""
    if not all("\u00a0" <= c <= "\u024f" for c in line if not c.isascii()):
        return False
    parts = line.split(maxsplit=1)
    return any(map(_ascii_letter, parts[-1] if len(parts) > 1 else line))


def _gbk_chinese(line: bytes) -> bool:
    """Whether a line's bytes read as GBK/GB18030 Chinese (see :func:`_looks_chinese`)."""
    try:
        return _looks_chinese([line.decode("gb18030")])
    except UnicodeDecodeError:
        return False


def _looks_chinese(lines: list[str], gb2312_only: bool = False) -> bool:
    """Whether nearly all (90 %) non-ASCII characters read as Chinese: GB2312's (both bytes >= 0xA1), or (unless
    ``gb2312_only``) other CJK characters (Traditional, rare name characters, GB18030's extensions) beside another
    non-ASCII character and beside no ASCII letter. Latin-1 or cp1252 bytes misread as GBK pair an accented letter
    with the letter after it (naïve -> na飗e, Müller -> M黮ler, Ça -> 莂): a rare character alone, or among ASCII
    letters."""
    chars = 0
    chinese = 0
    for line in lines:
        padded = f" {line} "
        for i, c in enumerate(padded):
            if c.isascii():
                continue
            chars += 1
            if _in_gb2312(c):
                chinese += 1
            elif not gb2312_only:
                near = padded[i - 1] + padded[i + 1]
                chinese += (unicodedata.category(c) == "Lo" or unicodedata.category(c).startswith("P")) and \
                    not near.isascii() and not any(map(_ascii_letter, near))
    return bool(chars) and chinese >= 0.9 * chars


def read_lines(path: str | Path, report: DataReport | None = None) -> list[tuple[int, str]]:
    """``(line_number, line)`` of a text file: BOM, CRLF and blank lines tolerated; GBK detected."""
    path = Path(path)
    lines = _decode_lines(path.read_bytes(), path, report if report is not None else DataReport())
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def _parse_table(path: Path, report: DataReport, what: str) -> dict[str, tuple[str, int]]:
    """``key -> (value, line)``; malformed lines and duplicate ids go to the report."""
    out: dict[str, tuple[str, int]] = {}
    for n, line in read_lines(path, report):
        parts = _SPLIT.split(line, maxsplit=1)
        key, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        if key in out:
            report.add(key, f"{path}:{n}", "error", "duplicate_id",
                       f"duplicate id in {what} (first on line {out[key][1]}); this line is ignored")
            continue
        out[key] = (value, n)
    return out


def read_table(path: str | Path) -> dict[str, str]:
    """``key -> value`` of a clean two-column file; raises ``DataError`` naming file:line otherwise."""
    report = DataReport()
    table = _parse_table(Path(path), report, Path(path).name)
    bad = [i for i in report.issues if i.severity == "error"]
    empty = [f"{path}:{n}" for k, (v, n) in table.items() if not v]
    if bad or empty:
        msgs = [f"{i.where}: {i.reason}" for i in bad] + [f"{w}: no value after the id" for w in empty]
        raise DataError("; ".join(msgs))
    return {k: v for k, (v, _) in table.items()}


_PLACEHOLDER = 0x7F000000  # header sizes from here up are what streaming writers put before they know the length
_SHOULD_BE = re.compile(r"^\s*([A-Za-z][\w ]*?)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_FRAMES_LOGGED = re.compile(r"^\s*Frames\s*:\s*(\d+)\s*$", re.MULTILINE)
# libsndfile log lines that size the audio data itself (AIFF SSND, AU data size); "(should be N)" on a container
# size (FORM, RIFF) or a metadata chunk (INST) also appears for whole files that lack trailing metadata
_DATA_SIZES = ("ssnd", "data", "data size", "data length")


def _nist_sample_count(path: Path) -> int | None:
    """``sample_count`` of a NIST SPHERE header (samples per channel), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024).decode("ascii", errors="replace")
    except OSError:
        return None
    m = re.search(r"^sample_count -i (\d+)", head, re.MULTILINE)
    return int(m.group(1)) if m else None


def _truncation(path: Path, fmt: str, frames: int) -> str | None:
    """Why a file holds less audio than its header declares, or None. libsndfile shortens such files to what is
    there without an error, so a cut-off copy would decode (and be scored) as a shorter recording. WAV: the
    ``data`` chunk's size; NIST: ``sample_count``; others (AIFF, AU, RF64...): the frame count libsndfile's header
    log shows, or a data size it marks "(should be N)" with N smaller (streaming placeholders not counted)."""
    if fmt in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path)
        return f"header declares {declared} frames, file holds {frames}" if declared and declared > frames else None
    if fmt == "NIST":
        declared = _nist_sample_count(path)
        return f"header declares {declared} samples, file holds {frames}" if declared and declared > frames else None
    if fmt == "OGG":
        return _ogg_unended(path)
    try:
        log = sf.info(str(path)).extra_info
    except Exception:
        return None
    for declared in map(int, _FRAMES_LOGGED.findall(log)):
        if frames < declared < _PLACEHOLDER:
            return f"header declares {declared} frames, file holds {frames}"
    for name, declared, actual in _SHOULD_BE.findall(log):
        # W64 logs no data size check: its riff size is the only one (and W64 files carry no trailing metadata)
        sizes = (*_DATA_SIZES, "riff") if fmt == "W64" else _DATA_SIZES
        if name.strip().lower() in sizes and int(actual) < int(declared) < _PLACEHOLDER:
            return f"header declares {name.strip()} of {declared} bytes, the file has room for {actual}"
    return None


_OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header, segment table, 255 segments of 255 bytes


def _ogg_unended(path: Path) -> str | None:
    """Why an Ogg stream (Vorbis, Opus, FLAC in Ogg) stops before its end, or None. Ogg declares no length: a cut
    file decodes without an error up to its last whole page. A whole stream's last page carries the end-of-stream
    flag; read back from the file's end, the first whole page must have it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - _OGG_MAX_PAGE))
            tail = f.read()
    except OSError:
        return None
    at = tail.rfind(b"OggS")
    while at >= 0:
        head = tail[at:at + 27]
        if len(head) == 27 and head[4] == 0:  # stream structure version 0
            table = tail[at + 27:at + 27 + head[26]]
            end = at + 27 + len(table) + sum(table)
            if len(table) == head[26] and end <= len(tail):
                if head[5] & 0x04:
                    return None
                return ("the last page has no end-of-stream mark" if end == len(tail) else
                        f"ends inside an Ogg page ({len(tail) - end} bytes after the last whole page)")
        at = tail.rfind(b"OggS", 0, at)
    return "no whole Ogg page in its last 64 KiB"


# WAVE format tags whose block is one frame: PCM, IEEE float, A-law, mu-law, WAVE_FORMAT_EXTENSIBLE
_WAV_FRAME_BLOCKS = (0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE)


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares: the ``data`` chunk's size over the ``fmt `` chunk's block size, for
    any sample format (integer, float, WAVE_FORMAT_EXTENSIBLE; the stdlib ``wave`` module reads integer PCM
    only); for compressed codecs (GSM, ADPCM), whose blocks hold many frames, the ``fact`` chunk's count. None
    when there is no such header, or when the size is a streaming placeholder (0, or near 2 or 4 GiB:
    sox writing to a pipe puts 0x7FFFF000 there)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block, tag, fact = 0, 1, None
            while len(chunk := f.read(8)) == 8:
                size = int.from_bytes(chunk[4:], "little")
                if chunk[:4] == b"fmt ":
                    fmt = f.read(size + size % 2)
                    tag, block = int.from_bytes(fmt[:2], "little"), int.from_bytes(fmt[12:14], "little")
                elif chunk[:4] == b"fact":  # a compressed codec's frame count (a block holds many frames)
                    fact = int.from_bytes(f.read(size + size % 2)[:4], "little")
                elif chunk[:4] == b"data":
                    if not 0 < size < _PLACEHOLDER:
                        return None
                    if tag not in _WAV_FRAME_BLOCKS:  # GSM, ADPCM...: the data size gives blocks, not frames
                        return fact
                    return size // block if block else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        pass
    return None


def _check_audio(path: Path) -> tuple[audio_mod.AudioInfo | None, tuple[str, str] | None]:
    """What an audio file is (one open: its header, then its last second decoded), or the error ``(code,
    reason)`` that keeps it from being decoded."""
    try:
        exists = path.exists()
    except OSError as e:  # a name longer than the file system allows (a transcript given as wav.scp), ...
        return None, ("bad_path", f"not a usable file path ({e.strerror or e}): {str(path)[:200]}")
    if not exists:
        return None, ("missing_file", f"audio file not found: {path}")
    if path.is_dir():
        return None, ("not_audio", f"is a folder, not an audio file: {path}")
    size = -1
    try:
        size = path.stat().st_size
        f = sf.SoundFile(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        if size == 0:
            return None, ("empty_audio", f"empty file (0 bytes): {path}")
        return None, ("not_audio", f"unreadable or not audio: {path} ({e}); formats read: WAV, "
                      "FLAC, OGG/Opus, MP3, AIFF, AU... (libsndfile); convert others first, e.g. "
                      "ffmpeg -i in.m4a -ar 16000 -ac 1 out.wav, or sox -t raw -r 16000 -e signed -b 16 in.pcm out.wav")
    with f:
        info = audio_mod.AudioInfo(str(path), int(f.samplerate), int(f.channels), int(f.frames), f.format)
        frames = info.frames
        try:  # decode only the last second: a cut-off compressed file fails there (cheap: no full decode)
            tail = min(frames, f.samplerate)
            if f.seekable():
                f.seek(frames - tail)
            else:  # a codec libsndfile cannot seek in (GSM 6.10 WAV): read it through to its end
                tail = frames
            got = len(f.read(tail, dtype="int16", always_2d=True))
            if got < tail:
                raise RuntimeError(f"only {got} of the last {tail} frames could be read")
        except Exception as e:
            return None, ("truncated", f"audio cannot be decoded to the end (truncated or corrupt): {path} ({e})")
    cut = _truncation(path, info.format, frames)
    if cut:
        return None, ("truncated", f"truncated {info.format} file: {cut}: {path}")
    if frames == 0:
        unfinished = info.format in ("WAV", "WAVEX") and size > 100  # a recorder that never wrote the data size
        return None, ("empty_audio", f"audio has no samples: {path}" + (
            f" (the header declares none, yet the file has {size} bytes: a recording never finalised? "
            "sox --ignore-length in.wav out.wav recovers it)" if unfinished else ""))
    return info, None


def _check_all(paths: Sequence[Path], threads: int = 8) -> list[tuple[audio_mod.AudioInfo | None, tuple[str, str] | None]]:
    """:func:`_check_audio` of every file, in order, ``threads`` at a time: libsndfile releases the GIL, and a
    list of 50,000 files checked one after another took as long as decoding a tenth of them (longer on network
    storage)."""
    if len(paths) < 2:
        return [_check_audio(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="audio-check") as pool:
        return list(pool.map(_check_audio, paths))


def _unsupported_form(value: str) -> str | None:
    """What is wrong with a wav.scp value that is a Kaldi archive offset or a URL (not a file path), or None."""
    if re.search(r"\.ark:\d+$", value) or value.startswith("ark:"):
        return ("Kaldi archive offset (ark:offset) not supported: write the audio out as files first "
                f"(e.g. Kaldi's wav-copy scp:wav.scp ark,scp:...): {value}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        return f"a URL, not a file: the workbench reads local files only; download the audio first: {value}"
    return None


def _resolve_audio(value: str, base: Path) -> tuple[Path, bool]:
    """Path of an audio entry: relative to the wav.scp folder, else to the working directory."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p, False
    first = base / p
    if first.exists() or not (Path.cwd() / p).exists():
        return first, False
    return Path.cwd() / p, True


def _read_jsonl(path: Path, report: DataReport) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]:
    wavs: dict[str, tuple[str, int]] = {}
    texts: dict[str, tuple[str, int]] = {}
    for n, line in read_lines(path, report):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report.add(None, f"{path}:{n}", "error", "malformed_line", f"not a JSON record ({e})")
            continue
        record = obj if isinstance(obj, dict) else {}
        key = record.get("key") if isinstance(record.get("key"), (str, int)) else None
        key = "" if key is None or isinstance(key, bool) else _unpaired(str(key))
        source = record.get("source") if isinstance(record.get("source"), str) else ""
        if not key or _SPLIT.search(key) or "\ufffd" in key or not source or "\ufffd" in _unpaired(source):
            # an id must be one token: it is the first column of the Kaldi files the run writes
            report.add(key or None, f"{path}:{n}", "error", "malformed_line",
                       "a jsonl record needs a \"key\" (one token) and a \"source\" (a path), both text")
            continue
        if key in wavs:
            report.add(key, f"{path}:{n}", "error", "duplicate_id",
                       f"duplicate id (first on line {wavs[key][1]}); this line is ignored")
            continue
        wavs[key] = (source, n)
        target = record.get("target")
        if isinstance(target, str):
            texts[key] = (_unpaired(target), n)  # a cut surrogate pair: undecodable, not scored
        elif target is not None:  # no transcript, said here (not also as a missing one)
            report.add(key, f"{path}:{n}", "warning", "malformed_target",
                       f"\"target\" is a {type(target).__name__}, not a text: decoded, not scored")
    return wavs, texts


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unpaired(text: str) -> str:
    """``text`` with lone UTF-16 surrogates (JSON ``\\ud83d`` of an emoji cut in half) replaced by U+FFFD: they
    cannot be written to any UTF-8 file."""
    return _SURROGATE.sub("\ufffd", text)


def check_source(data: Path) -> None:
    """Raise :class:`DataError` unless ``data`` is a data folder with a ``wav.scp`` or a FunASR ``.jsonl`` (what
    :func:`load_dataset` reads), saying what it is instead."""
    if data.is_file() and data.suffix == ".jsonl":
        return
    if data.is_dir():
        if not (data / "wav.scp").is_file():
            raise DataError(f"{data / 'wav.scp'}: no wav.scp in the data folder {data}")
        return
    if data.is_file():  # the list itself: wav.scp, text
        raise DataError(f"{data}: a file, not a data folder: give the folder that holds wav.scp (+ text): {data.parent}"
                        if data.name in ("wav.scp", "text")
                        else f"{data}: not a data folder (wav.scp [+ text]) nor a .jsonl file")
    raise DataError(f"{data}: no such data folder (a folder with wav.scp [+ text], or a .jsonl file)")


def load_dataset(
    data: str | Path,
    vocab: Iterable[str] | None = None,
    on_bad_input: str = "skip",
    min_duration_s: float = MIN_DURATION_S,
    max_duration_s: float = MAX_DURATION_S,
    vad_model: str | None = None,
    sample_rate: int = audio_mod.SAMPLE_RATE,
) -> DataSet:
    """Read and validate a data folder (``wav.scp`` + optional ``text``) or a FunASR ``.jsonl``.

    Args:
        data: the folder, or a jsonl file (``key``, ``source``, optional ``target``).
        vocab: the model's tokens; transcript characters outside it are counted and listed.
        on_bad_input: ``"skip"`` (report and go on) or ``"fail"`` (raise :class:`DataError`).
        min_duration_s / max_duration_s: shorter is an error; longer is a warning unless
            a ``vad_model`` will cut it.
        sample_rate: the rate the model takes (its frontend's ``fs``); audio at another is converted, and said.
    """
    if on_bad_input not in ("skip", "fail"):
        raise ValueError(f"on_bad_input must be 'skip' or 'fail', got {on_bad_input!r}")
    data = Path(data)
    check_source(data)
    report = DataReport()
    if data.is_file() and data.suffix == ".jsonl":
        wav_path = text_path = data
        wavs, texts = _read_jsonl(data, report)
        has_text = bool(texts)
    elif data.is_dir():
        wav_path, text_path = data / "wav.scp", data / "text"
        wavs = _parse_table(wav_path, report, "wav.scp")
        has_text = text_path.is_file()
        near = sorted(p.name for p in data.glob("text.*") if p.is_file()) if not has_text else []
        if near:  # text.txt, text.trn: transcripts under a name the Kaldi layout does not have
            report.add(None, str(data), "warning", "no_text_file",
                       f"no file named text, so nothing is scored; {', '.join(near)} is not read: "
                       "rename it to text (one 'id transcript' per line) to score")
        texts = _parse_table(text_path, report, "text") if has_text else {}
        if (data / "segments").is_file():
            if not (set(texts) & set(wavs)):  # the ids are segment ids: decoding whole recordings would score nothing
                raise DataError(f"{data / 'segments'}: Kaldi segments are not supported: the workbench decodes each "
                                "wav.scp entry whole. Cut the segments into files first (e.g. sox rec.wav seg.wav trim "
                                "START =END) and list those in wav.scp")
            report.add(None, str(data / "segments"), "info", "segments_ignored",
                       "segments file ignored: text's ids are wav.scp's, so each entry is decoded whole")
    report.n_input = len(wavs) + sum(1 for i in report.issues if i.code in ("duplicate_id", "malformed_line")
                                     and i.where.rsplit(":", 1)[0] == str(wav_path))

    malformed_targets = {i.key for i in report.issues if i.code == "malformed_target"}
    vocab_set = set(vocab) if vocab is not None else None
    # a vocabulary with BPE pieces ("he@@", "llo": Paraformer-large's, with its seg_dict) spells a word it does not
    # hold whole from its pieces' characters: a word is unknown only for a character none of them has (all words
    # were called unknown)
    # (a character vocabulary spells any word of its characters too: funasr's char tokenizer splits it)
    spelled = {c for t in vocab_set for c in t.removesuffix("@@") if not (t.startswith("<") and t.endswith(">"))} \
        if vocab_set is not None else None
    oov_counter: Counter[str] = Counter()
    used_cwd = False
    utts: list[Utterance] = []
    base = wav_path.parent
    # first what each wav.scp value is (a line's fault, or a path), then every file checked at once, then each
    # utterance in input order, its issues in the report in that order
    sources: dict[str, Path | tuple[str, str]] = {}
    for key, (value, n) in wavs.items():
        if not value:
            sources[key] = ("malformed_line", "no audio path after the id")
        elif value.endswith("|"):
            sources[key] = ("pipe_command", "Kaldi pipe command refused (the workbench never executes wav.scp "
                            "commands); convert the audio to files first")
        elif form := _unsupported_form(value):
            sources[key] = ("unsupported_source", form)
        else:
            try:
                sources[key], from_cwd = _resolve_audio(value, base)
                used_cwd |= from_cwd
            except (RuntimeError, OSError) as e:  # ~nosuchuser/a.wav, an over-long name
                sources[key] = ("bad_path", f"not a usable file path ({e}): {value[:200]}")
    files = list(dict.fromkeys(p for p in sources.values() if isinstance(p, Path)))
    checked = dict(zip(files, _check_all(files)))
    for key, (value, n) in wavs.items():
        where = f"{wav_path}:{n}"
        source = sources[key]
        info, problem = checked[source] if isinstance(source, Path) else (None, source)
        if info is None:
            report.add(key, where, "error", *problem)
            continue
        path = source
        if info.duration_s < min_duration_s:
            report.add(key, where, "error", "too_short",
                       f"audio too short: {info.duration_s:.3f} s (< {min_duration_s} s)")
            continue
        if info.samplerate < sample_rate:
            report.add(key, where, "warning", "upsampled",
                       f"sample rate {info.samplerate} Hz, upsampled to {sample_rate} Hz: the band above "
                       f"{info.samplerate // 2} Hz is empty, and a model trained on {sample_rate / 1000:g} kHz audio "
                       "usually decodes such narrowband audio much worse (use an 8 kHz model for telephone speech)")
        elif info.samplerate != sample_rate:
            report.add(key, where, "warning", "resampled",
                       f"sample rate {info.samplerate} Hz, converted to {sample_rate} Hz (the model's)")
        if info.channels != 1:
            report.add(key, where, "warning", "downmixed", f"{info.channels} channels, averaged to mono")
        if info.duration_s > max_duration_s:
            if vad_model:
                report.add(key, where, "info", "long_audio",
                           f"{info.duration_s:.1f} s long; segmented by vad_model {vad_model}")
            else:
                report.add(key, where, "warning", "long_audio",
                           f"{info.duration_s:.1f} s long (> {max_duration_s:.0f} s): the model may drop or "
                           "garble words; pass vad_model (e.g. 'fsmn-vad') to segment it")
        text: str | None = None
        oov: tuple[str, ...] = ()
        if has_text:
            if key not in texts:
                if key not in malformed_targets:  # else already said
                    report.add(key, where, "warning", "no_text", f"no transcript in {text_path.name}: decoded, not scored")
            elif "\ufffd" in texts[key][0]:  # bytes of an unknown encoding: scoring them would count garbage
                report.add(key, f"{text_path}:{texts[key][1]}", "warning", "undecodable_transcript",
                           "transcript holds bytes that are neither UTF-8 nor GBK: decoded, not scored")
            elif not texts[key][0].strip() or not score_tokens(texts[key][0]):
                report.add(key, f"{text_path}:{texts[key][1]}", "warning", "empty_transcript",
                           "empty transcript (after normalisation): decoded, not scored")
            else:
                text = texts[key][0]
                if vocab_set is not None:
                    oov = tuple(c for c in score_tokens(text) if c not in vocab_set
                                and (spelled is None or not set(c) <= spelled))
                    oov_counter.update(oov)
        utts.append(Utterance(key, str(path), text, info.duration_s, info.samplerate, info.channels, where, oov))
    tagged = [(n, m.group()) for t, n in texts.values() if (m := TAG.search(t))]
    if tagged:  # what scoring drops should not go unseen: [天气] in 今天[天气]很好 was spoken
        report.add(None, f"{text_path}:{tagged[0][0]}", "info", "tags_dropped",
                   f"{len(tagged)} transcript(s) hold tags that scoring drops (e.g. {tagged[0][1]} on line {tagged[0][0]}): "
                   "words in <...> or [...] without spaces are not scored")
    for key, (_, n) in texts.items():
        if key not in wavs:
            report.add(key, f"{text_path}:{n}", "warning", "text_without_audio",
                       "id in text has no audio in wav.scp: not decoded")
    if oov_counter:
        listed = " ".join(f"{c}({k})" for c, k in oov_counter.most_common(50))
        report.add(None, str(text_path), "warning", "oov_chars",
                   f"{sum(oov_counter.values())} transcript tokens ({len(oov_counter)} distinct) are not in the "
                   f"model's vocabulary and can only come out as errors: {listed}")
    if used_cwd:
        report.audio_base = "cwd"
        report.add(None, str(wav_path), "info", "paths_from_cwd",
                   f"some relative audio paths were not found next to {wav_path.name} and were resolved "
                   f"against the working directory {Path.cwd()}")
    if on_bad_input == "fail" and report.errors:
        lines = [str(i) for i in report.errors]
        raise DataError(f"{len(report.errors)} bad input(s) in {data} (on_bad_input='fail'):\n" + "\n".join(lines))
    return DataSet(data, utts, report, has_text)


# uncompressed integer PCM (and A-law / mu-law) decodes whatever its bytes are: the header and last-second check
# see all a damaged file of these can show; compressed (FLAC's subtype is PCM_16 too) and float data can fail or
# hold NaN in the middle
_PLAIN_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW"})
_PLAIN_CONTAINERS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "NIST", "CAF", "IRCAM", "WVE"})


def read_through(ds: DataSet, on_bad_input: str = "skip", workers: int = 4, progress: bool = True) -> DataSet:
    """``ds`` without the utterances whose audio cannot be decoded to its end: what only reading the whole file finds
    (a FLAC damaged in the middle, NaN samples), which the check in :func:`load_dataset` (header and last second)
    cannot see, becomes an ``undecodable_audio`` error at its line; a level problem an ``audio_level`` warning. For
    a trainer, which reads the audio itself and stops at the first such file, mid-epoch. Compressed and float files
    are read, on ``workers`` threads (libsndfile reads without the GIL); integer PCM needs no reading."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def check(u: Utterance) -> tuple[str, str]:
        try:
            info = sf.info(u.audio)
            if info.format in _PLAIN_CONTAINERS and info.subtype in _PLAIN_SUBTYPES:
                return "", ""
            return "", audio_mod.load_checked(u.audio, target_sr=None)[1] or ""
        except audio_mod.AudioError as e:
            return str(e), ""

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read-through") as pool:
        found = list(tqdm(pool.map(check, ds.utterances), total=len(ds.utterances), desc=f"reading {ds.source.name}",
                          unit="file", disable=not progress or len(ds.utterances) < 200, leave=False))
    kept = []
    for u, (error, warning) in zip(ds.utterances, found):
        if error:
            ds.report.add(u.key, u.where, "error", "undecodable_audio", f"{error}: not used ({u.audio})")
            continue
        if warning:
            ds.report.add(u.key, u.where, "warning", "audio_level", warning)
        kept.append(u)
    bad = [i for i in ds.report.errors if i.code == "undecodable_audio"]
    if on_bad_input == "fail" and bad:
        raise DataError(f"{len(bad)} audio file(s) in {ds.source} cannot be decoded to their end (on_bad_input='fail'):\n"
                        + "\n".join(map(str, bad)))
    return DataSet(ds.source, kept, ds.report, ds.has_text)


_CJK = "\u3007\u3400-\u4dbf\u4e00-\u9fff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# a space between two Chinese characters (Kaldi-style 今 天); one beside a Latin word stays: with a seg_dict
# (Paraformer-large) funasr's tokenizer looks words up between spaces, and 用iphone would be spelled letter by letter
_CJK_GAP = re.compile(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])")


def _untrainable_spans(text: str, vocab: Collection[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of the tags (``<NOISE>``, ``[LAUGHTER]``, ``<unk>``: :data:`scoring.TAG`, which scoring
    drops, so a model trained on them learns characters it is never scored on) and of the punctuation and symbols
    ``vocab`` lacks (a mark between two letters or digits of a non-Chinese word, as in don't, e-mail or 3.5, is
    part of that word when a token holds it, as a word-piece vocabulary's ``'t``; otherwise it separates two words,
    as scoring reads it)."""
    def in_word(i: int) -> bool:
        return 0 < i < len(text) - 1 and all(c.isalnum() and not _CJK_CHAR.match(c) for c in (text[i - 1], text[i + 1]))

    tags = [m.span() for m in TAG.finditer(text)]
    tagged = {i for a, b in tags for i in range(a, b)}
    held = _vocab_facts(vocab)[1]
    marks = [(i, i + 1) for i, c in enumerate(text) if i not in tagged and unicodedata.category(c)[0] in "PS"
             and c not in vocab and not (c in held and in_word(i))]
    return sorted(tags + marks)


def untrainable_marks(text: str, vocab: Collection[str]) -> list[str]:
    """Tags, punctuation and symbols of ``text`` that ``vocab`` lacks, where funasr's tokenizer would train them as
    ``<unk>`` (the scoring normaliser drops them, so they only teach the model to emit ``<unk>``); a mark inside a
    word stays part of it where a token holds it."""
    return [text[a:b] for a, b in _untrainable_spans(text, vocab)]


def training_target(text: str, vocab: Collection[str] | None = None) -> str:
    """A transcript as funasr's char tokenizer should see it, in the form scoring reads it: NFKC (full-width
    letters and digits, compatibility ideographs, Kangxi radicals pasted from a PDF: the vocabulary's characters,
    not ``<unk>``), no invisible format characters (zero-width spaces, soft hyphens), Latin letters lower-cased
    when the vocabulary has lower-case letters only, no spaces between Chinese characters (Kaldi-style ``今 天``),
    single spaces kept between words; with ``vocab``, without the :func:`untrainable_marks` (a space where one
    stood between words)."""
    text = unicodedata.normalize("NFKC", drop_invisible(text))
    if vocab is not None and _vocab_facts(vocab)[0]:
        text = text.lower()
    if vocab is not None:
        for a, b in reversed(_untrainable_spans(text, vocab)):
            text = text[:a] + " " + text[b:]
    return _CJK_GAP.sub("", " ".join(text.split()))


def training_record(u: Utterance, vocab: Collection[str] | None = None) -> dict[str, Any]:
    """An utterance with text as a funasr training jsonl record: source_len in 10 ms frames and target_len in
    tokens, the lengths funasr's IndexDSJsonl filters on; ``vocab``: see :func:`training_target`."""
    target = training_target(u.text or "", vocab)
    return {"key": u.key, "source": u.audio, "source_len": int(u.duration_s * 100), "target": target,
            "target_len": len(score_tokens(target)) or len(target)}


_VOCAB_FACTS: list[tuple[Collection[str], tuple[bool, frozenset[str]]]] = []  # the last vocabularies asked about


def _vocab_facts(vocab: Collection[str]) -> tuple[bool, frozenset[str]]:
    """Whether the vocabulary's Latin letters are all lower-case (Paraformer's: an upper-case letter is ``<unk>``),
    and every character of its tokens. Asked once per utterance of a training list: kept per vocabulary object
    (8404 tokens took 2 ms)."""
    for seen, facts in _VOCAB_FACTS:
        if seen is vocab:
            return facts
    chars = frozenset(c for t in vocab if not (t.startswith("<") and t.endswith(">")) for c in t)
    letters = {c for c in chars if c.isascii() and c.isalpha()}
    facts = (bool(letters) and all(c.islower() for c in letters), chars)
    _VOCAB_FACTS[:] = [(vocab, facts), *_VOCAB_FACTS[:3]]
    return facts


def write_jsonl(utterances: Sequence[Utterance], out: str | Path, vocab: Collection[str] | None = None) -> Path:
    """funasr training jsonl (:func:`training_record` per utterance with text; ``vocab``: the model's tokens).

    Audio paths are absolute, so the list works from any folder; only utterances with text are written.
    """
    lines = [jsonl_line(training_record(u, vocab)) for u in utterances if u.text is not None]
    out = Path(out)
    atomic_write_text(out, "".join(lines))
    return out


def write_jsonl_from_dir(data_dir: str | Path, out: str | Path) -> Path:
    """Validate a data folder (errors fail) and write its funasr training jsonl."""
    ds = load_dataset(data_dir, on_bad_input="fail")
    return write_jsonl(ds.utterances, out)
