"""The data layer: every bad-input case ends in the report with file:line, nothing disappears."""

from __future__ import annotations

import json
import shutil
import wave

import numpy as np
import pytest
import soundfile as sf

from asr_workbench import datadir, scoring
from conftest import DEMO_DATA

SRC = sorted((DEMO_DATA / "base/test/audio").iterdir())


def _tone(path, seconds=1.0, sr=16000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.1 * np.sin(2 * np.pi * 220 * t)
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, sr, subtype="PCM_16")


def _write(d, scp: str, text: str | bytes | None = None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text(scp, encoding="utf-8")
    if text is not None:
        (d / "text").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return d


def _codes(ds):
    return {(i.key, i.code) for i in ds.report.issues}


def test_byte_order_marks_inside_a_file_are_not_part_of_ids(tmp_path):
    """Files joined with cat carry a BOM at the start of a later line: stripped there too."""
    shutil.copy(SRC[0], tmp_path / "a.flac")
    shutil.copy(SRC[1], tmp_path / "b.flac")
    _write(tmp_path, "u1 a.flac\n\ufeffu2 b.flac\n", "\ufeffu1 今天\n\ufeffu2 明天\n")
    ds = datadir.load_dataset(tmp_path)
    assert [(u.key, u.text) for u in ds.utterances] == [("u1", "今天"), ("u2", "明天")] and not ds.report.issues


def test_kaldi_segments_file_is_refused_not_ignored(tmp_path):
    shutil.copy(SRC[0], tmp_path / "rec.flac")
    _write(tmp_path, "rec rec.flac\n", "rec-a 今天\n")
    (tmp_path / "segments").write_text("rec-a rec 0.0 1.0\n")
    with pytest.raises(datadir.DataError, match="segments: Kaldi segments are not supported"):
        datadir.load_dataset(tmp_path)
    # segments already cut into files (text ids are wav.scp ids): the left-over file is said, not fatal
    _write(tmp_path, "rec rec.flac\n", "rec 今天\n")
    ds = datadir.load_dataset(tmp_path)
    assert [u.key for u in ds.scored] == ["rec"] and _codes(ds) == {(None, "segments_ignored")}


def test_whole_files_in_codecs_without_seeking_are_not_truncated(tmp_path):
    """GSM 6.10 WAV cannot seek to its last second: it is read through, whole; cut, it is still caught."""
    x = 0.1 * np.sin(np.arange(16000) / 10)
    sf.write(str(tmp_path / "gsm.wav"), x, 8000, format="WAV", subtype="GSM610")
    (tmp_path / "gsm_cut.wav").write_bytes((tmp_path / "gsm.wav").read_bytes()[:3000])
    _write(tmp_path, "a gsm.wav\nb gsm_cut.wav\n")
    ds = datadir.load_dataset(tmp_path)
    assert [u.key for u in ds.utterances] == ["a"] and ds.utterances[0].duration_s == pytest.approx(2.0, abs=0.05)
    assert {c for k, c in _codes(ds) if k == "b"} == {"truncated"}


def test_cut_ogg_streams_are_truncated_not_shorter(tmp_path):
    """Ogg declares no length: libsndfile decodes a cut Vorbis or Opus file to its last whole page, silently shorter.
    A whole stream ends with an end-of-stream page (trailing tag bytes after it do not matter)."""
    x = 0.1 * np.random.default_rng(0).standard_normal(16000 * 5)  # noise: many pages
    lines = []
    for codec in ("VORBIS", "OPUS"):
        whole = tmp_path / f"{codec}.ogg"
        sf.write(str(whole), x, 16000, format="OGG", subtype=codec)
        data = whole.read_bytes()
        page = data.rfind(b"OggS", 0, len(data) // 2)
        for name, cut in (("mid", data[:len(data) // 2]), ("page", data[:page]), ("tag", data + b"TAG" + b"x" * 125)):
            (tmp_path / f"{codec}_{name}.ogg").write_bytes(cut)
            lines.append(f"{codec}_{name} {codec}_{name}.ogg")
        lines.append(f"{codec} {codec}.ogg")
        assert 0 < sf.info(str(tmp_path / f"{codec}_mid.ogg")).frames < len(x)  # what libsndfile alone says
    _write(tmp_path, "\n".join(lines) + "\n")
    ds = datadir.load_dataset(tmp_path)
    assert sorted(u.key for u in ds.utterances) == ["OPUS", "OPUS_tag", "VORBIS", "VORBIS_tag"]
    assert {(k, c) for k, c in _codes(ds) if c == "truncated"} == {
        (f"{c}_{n}", "truncated") for c in ("VORBIS", "OPUS") for n in ("mid", "page")}


def test_whole_aiff_files_with_odd_metadata_are_not_truncated(tmp_path):
    """libsndfile marks "(should be N)" on a 22-byte INST chunk or a FORM size that counts a missing trailing
    metadata chunk: the audio is whole, only data sizes and frame counts tell truncation."""
    import struct

    whole = tmp_path / "whole.aiff"
    sf.write(str(whole), np.full(16000, 0.1), 16000, format="AIFF", subtype="PCM_16")
    b = bytearray(whole.read_bytes())
    i = b.find(b"SSND")
    inst = b[:i] + b"INST" + struct.pack(">I", 22) + bytes(22) + b[i:]
    inst[4:8] = struct.pack(">I", len(inst) - 8)
    (tmp_path / "inst.aiff").write_bytes(bytes(inst))
    named = b + b"NAME" + struct.pack(">I", 10) + b"0123456789"
    named[4:8] = struct.pack(">I", len(named) - 8)
    (tmp_path / "name_cut.aiff").write_bytes(bytes(named[:-6]))
    assert "should be" in sf.info(str(tmp_path / "inst.aiff")).extra_info  # the log line that misled
    _write(tmp_path, "a whole.aiff\nb inst.aiff\nc name_cut.aiff\n", "a 今天\nb 今天\nc 今天\n")
    ds = datadir.load_dataset(tmp_path)
    assert [u.key for u in ds.utterances] == ["a", "b", "c"] and not ds.report.errors


def test_clean_folder_with_crlf_bom_tabs_and_blank_lines(tmp_path):
    shutil.copy(SRC[0], tmp_path / "a.flac")
    shutil.copy(SRC[1], tmp_path / "b.flac")
    _write(tmp_path, "\ufeffu1\ta.flac\r\n\r\nu2    b.flac\r\n", "\ufeffu1 今天\r\nu2\t\t明天\r\n")
    ds = datadir.load_dataset(tmp_path)
    assert [u.key for u in ds.utterances] == ["u1", "u2"]
    assert [u.text for u in ds.utterances] == ["今天", "明天"]
    assert ds.report.issues == [] and ds.report.n_input == 2


def test_every_bad_case_is_reported_with_file_and_line(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(SRC[0], d / "good.flac")
    (d / "notaudio.wav").write_text("hello")
    _tone(d / "short.wav", seconds=0.02)
    sf.write(str(d / "empty.wav"), np.zeros(0), 16000)
    with wave.open(str(d / "full.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\x01\x00" * 32000)
    (d / "trunc.wav").write_bytes((d / "full.wav").read_bytes()[:44 + 2000])
    (d / "trunc.flac").write_bytes(SRC[0].read_bytes()[: SRC[0].stat().st_size // 2])
    # float and WAVE_FORMAT_EXTENSIBLE headers (which the stdlib wave module cannot read), whole and cut in half
    tone = 0.1 * np.sin(np.arange(16000) / 10)
    sf.write(str(d / "float.wav"), tone, 16000, subtype="FLOAT")
    sf.write(str(d / "wavex.wav"), tone, 16000, format="WAVEX", subtype="PCM_24")
    for name in ("float", "wavex"):
        (d / f"{name}_cut.wav").write_bytes((d / f"{name}.wav").read_bytes()[:20000])
    # other containers cut in half: libsndfile shortens them silently; their headers say how long they were
    for name, kw in (("aiff", {"format": "AIFF"}), ("au", {"format": "AU"}), ("w64", {"format": "W64"}),
                     ("rf64", {"format": "RF64"}), ("sph", {"format": "NIST"})):
        sf.write(str(d / f"{name}_whole.{name}"), np.full(32000, 0.1), 16000, subtype="PCM_16", **kw)
        (d / f"{name}_cut.{name}").write_bytes((d / f"{name}_whole.{name}").read_bytes()[:32000])
    # sox writing a WAV to a pipe leaves 0x7FFFF000 as the data size: a whole file, not a truncated one
    streamed = bytearray((d / "full.wav").read_bytes())
    streamed[40:44] = (0x7FFFF000).to_bytes(4, "little")
    (d / "streamed.wav").write_bytes(bytes(streamed))
    _tone(d / "sr8k.wav", sr=8000)
    _tone(d / "sr44k.wav", sr=44100)
    _tone(d / "stereo.wav", channels=2)
    _tone(d / "long.wav", seconds=31)
    marker = tmp_path / "pipe-was-executed"
    scp = "\n".join([
        "good good.flac",
        "missing nothere.wav",
        "notaudio notaudio.wav",
        "short short.wav",
        "empty empty.wav",
        "trunc trunc.wav",
        "truncflac trunc.flac",
        f"pipe touch {marker} |",
        "malformed",
        "good other.wav",
        "sr8k sr8k.wav",
        "stereo stereo.wav",
        "long long.wav",
        "notext good.flac",
        "emptytext good.flac",
        "float float.wav",
        "wavex wavex.wav",
        "float_cut float_cut.wav",
        "wavex_cut wavex_cut.wav",
        *(f"{n}_{v} {n}_{v}.{n}" for n in ("aiff", "au", "w64", "rf64", "sph") for v in ("whole", "cut")),
        "streamed streamed.wav",
        "sr44k sr44k.wav",
        "nouser ~no-such-user-here/a.wav",
        "toolong " + "今天下午三点" * 30 + ".wav",
        "ark feats/raw_wav.1.ark:1234",
        "url https://example.com/a.wav",
    ]) + "\n"
    text = "good 今天\nsr8k 明天\nstereo 昨天\nlong 今天\nemptytext\nghost 今天\n"
    _write(d, scp, text)
    ds = datadir.load_dataset(d)
    codes = _codes(ds)
    expected = {("missing", "missing_file"), ("notaudio", "not_audio"), ("short", "too_short"),
                ("empty", "empty_audio"), ("trunc", "truncated"), ("truncflac", "truncated"), ("pipe", "pipe_command"),
                ("malformed", "malformed_line"), ("good", "duplicate_id"), ("sr8k", "upsampled"), ("sr44k", "resampled"),
                *((f"{n}_cut", "truncated") for n in ("aiff", "au", "w64", "rf64", "sph")),
                ("nouser", "bad_path"), ("toolong", "bad_path"), ("ark", "unsupported_source"),
                ("url", "unsupported_source"),
                ("stereo", "downmixed"), ("long", "long_audio"), ("notext", "no_text"),
                ("emptytext", "empty_transcript"), ("ghost", "text_without_audio"), ("float_cut", "truncated"),
                ("wavex_cut", "truncated")}
    assert expected <= codes
    assert not marker.exists()  # the pipe command was refused, never run
    where = {i.code: i.where for i in ds.report.issues}
    assert where["missing_file"].endswith("wav.scp:2") and where["duplicate_id"].endswith("wav.scp:10")
    assert where["text_without_audio"].endswith("text:6")
    decoded = {u.key for u in ds.utterances}
    assert decoded == {"good", "sr8k", "sr44k", "stereo", "long", "notext", "emptytext", "float", "wavex", "streamed",
                       *(f"{n}_whole" for n in ("aiff", "au", "w64", "rf64", "sph"))}
    assert {u.key: round(u.duration_s, 2) for u in ds.utterances}["aiff_whole"] == 2.0
    assert {u.key for u in ds.scored} == {"good", "sr8k", "stereo", "long"}
    # nothing disappears: every id of wav.scp is decoded or has an error
    ids = {line.split()[0] for line in scp.splitlines()}
    assert ids <= decoded | {i.key for i in ds.report.errors}
    assert {i.severity for i in ds.report.issues if i.key in decoded and i.code != "duplicate_id"} <= {"warning", "info"}


def test_report_jsonl_has_one_line_per_issue(tmp_path):
    _write(tmp_path, "a missing.wav\n")
    ds = datadir.load_dataset(tmp_path)
    ds.report.write_jsonl(tmp_path / "data_report.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "data_report.jsonl").read_text().splitlines()]
    assert rows == [{"key": "a", "where": f"{tmp_path / 'wav.scp'}:1", "severity": "error",
                     "code": "missing_file", "reason": f"audio file not found: {tmp_path / 'missing.wav'}"}]


def test_on_bad_input_fail_raises_naming_file_and_line(tmp_path):
    _write(tmp_path, "a missing.wav\n")
    with pytest.raises(datadir.DataError, match=r"wav\.scp:1: \[missing_file\]"):
        datadir.load_dataset(tmp_path, on_bad_input="fail")


def test_gbk_text_is_detected_and_read(tmp_path):
    """GBK, including lines whose GBK bytes happen to be valid UTF-8 (去医院 reads as U+0225 U+04BD U+053A)."""
    texts = ["今天下午", "去医院", "我想买九把椅子"]
    for i in range(3):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(3)),
           "".join(f"u{i} {t}\n" for i, t in enumerate(texts)).encode("gbk"))
    assert "u1 去医院".encode("gbk").decode("utf-8")  # the by-chance case is real
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == texts
    issue = next(i for i in ds.report.issues if i.code == "gbk_encoding")
    assert "GBK" in issue.reason and "iconv" in issue.reason and issue.where.endswith("text:1")


@pytest.mark.parametrize("texts, codec", [
    (["臺灣的門", "電腦與書", "車站見"], "gbk"),  # Traditional: GBK's extension, not GB2312 (車站見 is valid UTF-8 too)
    (["今天下午开会", "一", "一些", "小学"], "gbk"),  # valid UTF-8 of one script by chance: 一些 -> һЩ, 小学 -> Сѧ
    (["北京", "王喆", "朱镕基"], "gbk"),  # name characters outside GB2312
    (["北京的门上午八点开", "去3楼", "没去"], "gbk"),  # lines valid as UTF-8 by chance: 去3楼 -> ȥ3¥, 没去 -> ûȥ
    (["吉野家𠮷", "北京"], "gb18030"),  # GB18030's four-byte characters
    (["一", "小学"], "gbk"),  # every line valid UTF-8 by chance (һ, Сѧ): no undecodable line to give it away
])
def test_gbk_files_beyond_gb2312_are_read_whole(tmp_path, texts, codec):
    """A GBK file is read as GBK (GB18030) whole, whatever its characters: none scored as mojibake."""
    ids = "".join(f"u{i} x.flac\n" for i in range(len(texts)))
    lines = datadir.read_lines(_write(tmp_path, ids, "".join(f"u{i} {t}\n" for i, t in enumerate(texts)).encode(codec))
                               / "text", report := datadir.DataReport())
    assert [line for _, line in lines] == [f"u{i} {t}" for i, t in enumerate(texts)]
    assert [i.code for i in report.issues] == ["gbk_encoding"] and "GB18030" in report.issues[0].reason


def test_latin1_words_are_not_read_as_gbk_characters(tmp_path):
    """Latin-1 Ça (C7 61) is valid GBK (莂), but a rare character standing alone is no Chinese: not UTF-8, named."""
    lines = datadir.read_lines(_write(tmp_path, "u0 x\n", "u0 Ça va\nu1 Müller\n".encode("latin-1")) / "text",
                               report := datadir.DataReport())
    assert [line for _, line in lines] == ["u0 \ufffda va", "u1 M\ufffdller"]
    assert [i.code for i in report.issues] == ["not_utf8", "not_utf8"]


def test_utf8_lines_of_other_scripts_and_latin_signs_stay_utf8_beside_gbk_lines(tmp_path):
    lines = datadir.read_lines(_write(tmp_path, "u0 x\n", "u0 привет\nu1 γειά σου\nu2 25°C\nu3 Lui è qui\n".encode()
                                      + "u4 今天下午\n".encode("gbk")) / "text", report := datadir.DataReport())
    assert [line for _, line in lines] == ["u0 привет", "u1 γειά σου", "u2 25°C", "u3 Lui è qui", "u4 今天下午"]
    assert [(i.code, i.where.rsplit("/", 1)[-1]) for i in report.issues] == [("gbk_encoding", "text:5")]


def test_a_carriage_return_inside_a_line_is_a_space_and_lines_count_newlines(tmp_path):
    """A lone \\r in a file of \\n lines (a pasted remnant) cut the reference short and made its tail an id; lone
    \\r line ends (old Mac, a final \\n appended) and \\r\\r\\n ends stay line ends, unreported."""
    lines = datadir.read_lines(_write(tmp_path, "u0 x\n", "u0 车站的门\r下午三点\r\nu1 北京\nu2 上\r午\n") / "text",
                               report := datadir.DataReport())
    assert lines == [(1, "u0 车站的门 下午三点"), (2, "u1 北京"), (3, "u2 上 午")]
    assert [(i.code, i.where.rsplit("/", 1)[-1]) for i in report.issues] == [("carriage_return", "text:1")]
    assert "2 line(s)" in report.issues[0].reason
    for raw in ("u0 a\ru1 b\ru2 c\n", "u0 a\r\r\nu1 b\r\r\nu2 c\r\r\n"):
        lines = datadir.read_lines(_write(tmp_path, "u0 x\n", raw) / "text", report := datadir.DataReport())
        assert [line for _, line in lines] == ["u0 a", "u1 b", "u2 c"] and not report.issues


@pytest.mark.parametrize("raw", ["u0 今天\nu1 hello\n".encode("utf-16-le"), "u0 今天\nu1 hello\n".encode("utf-16-be"),
                                 "u0 今天\n".encode("utf-16") + "u1 hello\n".encode("utf-16")])
def test_utf16_without_a_byte_order_mark_or_joined_is_read(tmp_path, raw):
    lines = datadir.read_lines(_write(tmp_path, "u0 x\n", raw) / "text", report := datadir.DataReport())
    assert [line for _, line in lines] == ["u0 今天", "u1 hello"]  # no NUL in an id, no BOM on the second file's
    assert [i.code for i in report.issues] == ["utf16_encoding"]


def test_old_mac_line_endings(tmp_path):
    for i in range(2):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "u0 0.flac\ru1 1.flac\r", "u0 你好\ru1 世界\r")
    assert [u.text for u in datadir.load_dataset(tmp_path).utterances] == ["你好", "世界"]


def test_one_stray_byte_in_a_utf8_text_stays_on_its_line(tmp_path):
    """A UTF-8 file with one Latin-1 byte is UTF-8 with one bad line, not a GBK file: the other transcripts
    are read as written and the bad line is named."""
    for i in range(3):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(3)),
           "u0 今天下午\nu1 三点三十\n".encode() + b"u2 caf\xe9s\n")  # as bytes, valid GBK too
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances[:2]] == ["今天下午", "三点三十"]
    assert ds.utterances[2].text is None  # "caf\ufffds" would be scored as garbage: decoded, not scored
    assert {(i.code, i.where.rsplit("/", 1)[-1]) for i in ds.report.issues} == {("not_utf8", "text:3"),
                                                                               ("undecodable_transcript", "text:3")}


def test_a_text_mixing_utf8_and_gbk_lines_reads_each_line_as_written(tmp_path):
    """Two lists joined with cat, one UTF-8, one GBK: each GBK line is read as GBK and named (去医院's GBK bytes
    are valid UTF-8 too), the UTF-8 lines stay as they are (read whole as GBK they would be mojibake)."""
    texts = ["今天下午", "三点三十", "我想买九把椅子", "去医院"]
    for i in range(4):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(4)),
           "".join(f"u{i} {t}\n" for i, t in enumerate(texts[:2])).encode()
           + "".join(f"u{i} {t}\n" for i, t in enumerate(texts[2:], 2)).encode("gbk"))
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == texts
    assert [(i.code, i.where.rsplit("/", 1)[-1]) for i in ds.report.issues] == [("gbk_encoding", "text:3"),
                                                                               ("gbk_encoding", "text:4")]


def test_accented_latin_utf8_lines_are_never_read_as_gbk(tmp_path):
    """café's UTF-8 bytes read as GBK are GB2312 characters (caf茅): a UTF-8 file of accented words with one
    cp1252 line stays UTF-8, and so do such lines in a file that also has GBK Chinese lines."""
    for i in range(4):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(4)),
           "u0 café résumé\nu1 über Beyoncé\n".encode() + "u2 naïve\n".encode("cp1252") + "u3 今天下午\n".encode("gbk"))
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == ["café résumé", "über Beyoncé", None, "今天下午"]
    assert [(i.code, i.where.rsplit("/", 1)[-1]) for i in ds.report.issues if i.code != "undecodable_transcript"] == [
        ("gbk_encoding", "text:4"), ("not_utf8", "text:3")]


def test_utf16_text_is_read(tmp_path):
    """Windows Notepad's "Unicode" (UTF-16 with a byte-order mark): read, and the conversion named."""
    for i in range(2):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "u0 0.flac\nu1 1.flac\n", "u0 今天\r\nu1 明天\r\n".encode("utf-16"))
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == ["今天", "明天"]
    assert [i.code for i in ds.report.issues] == ["utf16_encoding"] and "iconv -f UTF-16" in ds.report.issues[0].reason


def test_latin1_text_without_chinese_is_not_read_as_gbk(tmp_path):
    """An English (or other Latin-script) text with Latin-1 accents: the accented bytes followed by a letter are
    valid GBK (naïve -> na飗e), but not GB2312 Chinese, so the lines stay UTF-8 and each bad one is named."""
    for i in range(3):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(3)),
           "u0 hello there\nu1 a na\u00efve idea\nu2 na\u00efve again\n".encode("latin-1"))
    assert "u1 a na\u00efve idea".encode("latin-1").decode("gbk")  # the misreading is possible
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == ["hello there", None, None]  # not scored as "a na\ufffdve idea"
    assert {(i.code, i.where.rsplit("/", 1)[-1]) for i in ds.report.issues} == {
        ("not_utf8", "text:2"), ("not_utf8", "text:3"), ("undecodable_transcript", "text:2"),
        ("undecodable_transcript", "text:3")}


def test_line_separators_inside_a_transcript_do_not_split_it(tmp_path):
    """Lines end at \\n (or \\r\\n) only: U+2028, \\x85 and a form feed inside a transcript stay in it, and
    line numbers count \\n."""
    for i in range(2):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "u0 0.flac\nu1 1.flac\n", "u0 今天\u2028下午\x85三点\r\nu1 明天\x0c上午\n")
    ds = datadir.load_dataset(tmp_path)
    assert [u.text for u in ds.utterances] == ["今天\u2028下午\x85三点", "明天\x0c上午"]
    assert not ds.report.issues
    assert datadir.read_lines(tmp_path / "text")[1][0] == 2


def test_jsonl_records_survive_line_separators_in_values(tmp_path):
    """The run's jsonl files escape U+2028, U+2029 and NEL (JSON allows them raw; str.splitlines would cut the
    record), keep other non-ASCII text as is, and read back to the same values."""
    from asr_workbench.fileio import jsonl_line

    rec = {"key": "u0", "ref": "今天\u2028下午\u2029三点\x85开", "n": 1}
    line = jsonl_line(rec)
    assert line.endswith("\n") and len(line.splitlines()) == 1 and "今天" in line
    assert json.loads(line) == rec
    for i in range(2):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "u0 0.flac\nu1 1.flac\n", "u0 今天\u2028下午\nu1 明天\n")
    out = datadir.write_jsonl(datadir.load_dataset(tmp_path).utterances, tmp_path / "train.jsonl")
    assert [json.loads(x)["key"] for x in out.read_text(encoding="utf-8").splitlines()] == ["u0", "u1"]


def test_oov_characters_counted_and_listed(tmp_path):
    shutil.copy(SRC[0], tmp_path / "a.flac")
    _write(tmp_path, "u1 a.flac\n", "u1 今天龘龘\n")
    ds = datadir.load_dataset(tmp_path, vocab=list("今天"))
    assert ds.utterances[0].oov == ("龘", "龘")
    issue = next(i for i in ds.report.issues if i.code == "oov_chars")
    assert "龘(2)" in issue.reason
    # a char vocabulary cannot say "hello"; one with BPE pieces (Paraformer-large's "he@@ llo") spells it
    _write(tmp_path, "u1 a.flac\n", "u1 今天 hello 龘\n")
    assert datadir.load_dataset(tmp_path, vocab=list("今天")).utterances[0].oov == ("hello", "龘")
    assert datadir.load_dataset(tmp_path, vocab=[*"今天", "he@@", "llo"]).utterances[0].oov == ("龘",)
    # a word with a character no piece has is unknown all the same (funasr's tokenizer makes it <unk>)
    _write(tmp_path, "u1 a.flac\n", "u1 今天 hello привет 龘\n")
    assert datadir.load_dataset(tmp_path, vocab=[*"今天", "he@@", "llo", "<unk>"]).utterances[0].oov == ("привет", "龘")


def test_relative_paths_fall_back_to_cwd_and_say_so(tmp_path, monkeypatch):
    (tmp_path / "audio").mkdir()
    shutil.copy(SRC[0], tmp_path / "audio" / "a.flac")
    d = _write(tmp_path / "lists", "u1 audio/a.flac\n")
    monkeypatch.chdir(tmp_path)
    ds = datadir.load_dataset(d)
    assert ds.utterances[0].audio == str(tmp_path / "audio" / "a.flac")
    assert ds.report.audio_base == "cwd" and any(i.code == "paths_from_cwd" for i in ds.report.issues)


def test_funasr_jsonl_input(tmp_path):
    shutil.copy(SRC[0], tmp_path / "a.flac")
    lines = [{"key": "u1", "source": "a.flac", "target": "今天"}, {"key": "u2", "source": "a.flac"},
             {"key": "u 3", "source": "a.flac"}, {"key": "", "source": "a.flac"}, {"key": "u4"}, ["u5", "a.flac"]]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\nnot json\n")
    ds = datadir.load_dataset(tmp_path / "data.jsonl")
    assert [u.key for u in ds.utterances] == ["u1", "u2"] and ds.utterances[0].text == "今天"
    # ids with spaces (they are the first column of the Kaldi files a run writes), no id, no source, no record
    assert [(i.key, i.where.rsplit(":", 1)[1]) for i in ds.report.issues if i.code == "malformed_line"] == \
        [("u 3", "3"), (None, "4"), ("u4", "5"), (None, "6"), (None, "7")]
    assert ds.report.n_input == 7


def test_missing_wav_scp_is_a_clear_error(tmp_path):
    with pytest.raises(datadir.DataError, match="no wav.scp"):
        datadir.load_dataset(tmp_path)


def test_messages_say_what_the_file_is_and_what_to_do(tmp_path):
    """An empty file, a format libsndfile cannot read, a WAV whose recorder never wrote its sizes, transcripts
    under another name than text: each said as what it is, with the fix."""
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    _tone(tmp_path / "ok.wav")
    b = bytearray((tmp_path / "ok.wav").read_bytes())
    b[4:8] = b[40:44] = bytes(4)  # RIFF and data sizes left at 0
    (tmp_path / "unfinished.wav").write_bytes(bytes(b))
    _write(tmp_path, "z zero.wav\nm a.m4a\nu unfinished.wav\nk ok.wav\n")
    (tmp_path / "text.txt").write_text("k 你好\n", encoding="utf-8")
    ds = datadir.load_dataset(tmp_path)
    why = {i.key: (i.code, i.reason) for i in ds.report.issues}
    assert why["z"] == ("empty_audio", f"empty file (0 bytes): {tmp_path / 'zero.wav'}")
    assert why["m"][0] == "not_audio" and "ffmpeg -i in.m4a" in why["m"][1]
    assert why["u"][0] == "empty_audio" and "sox --ignore-length" in why["u"][1]
    assert why[None][0] == "no_text_file" and "text.txt is not read: rename it to text" in why[None][1]
    assert [u.key for u in ds.utterances] == ["k"] and not ds.has_text


def test_jsonl_targets_that_are_no_text_are_named_not_scored(tmp_path):
    """A target with half an emoji (a JSON \\ud83d escape: it cannot be written to results.jsonl, and crashed the run
    after decoding), a list, a number: named, decoded, not scored; a key or source that is no text is malformed."""
    for i in range(4):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    records = ['{"key": "u0", "source": "%s", "target": "\\u8f66\\u7ad9\\ud83d"}',
               '{"key": "u1", "source": "%s", "target": ["\\u4f60", "\\u597d"]}',
               '{"key": "u2", "source": "%s", "target": 123}',
               '{"key": "u3", "source": "%s", "target": "\\u4eca\\u5929"}',
               '{"key": true, "source": "%s"}', '{"key": "u5", "source": ["%s"]}']
    data = tmp_path / "x.jsonl"
    data.write_text("".join(r % (tmp_path / f"{min(i, 3)}.flac") + "\n" for i, r in enumerate(records)))
    ds = datadir.load_dataset(data)
    assert [(u.key, u.text) for u in ds.utterances] == [("u0", None), ("u1", None), ("u2", None), ("u3", "今天")]
    assert [(i.code, i.key, i.where.rsplit(":", 1)[-1]) for i in ds.report.issues] == [
        ("malformed_target", "u1", "2"), ("malformed_target", "u2", "3"), ("malformed_line", None, "5"),
        ("malformed_line", "u5", "6"), ("undecodable_transcript", "u0", "1")]
    assert ds.report.n_input == 6


def test_tags_that_scoring_drops_are_said_once_per_file(tmp_path):
    for i in range(3):
        shutil.copy(SRC[i], tmp_path / f"{i}.flac")
    _write(tmp_path, "".join(f"u{i} {i}.flac\n" for i in range(3)), "u0 今天\nu1 今天[天气]很好\nu2 <NOISE>明天\n")
    ds = datadir.load_dataset(tmp_path)
    [issue] = [i for i in ds.report.issues if i.code == "tags_dropped"]
    assert issue.severity == "info" and issue.where.endswith("text:2") and "2 transcript(s)" in issue.reason
    assert "[天气]" in issue.reason and [u.text for u in ds.scored][1] == "今天[天气]很好"


def test_training_targets_read_transcripts_as_scoring_does():
    """NFKC first: a Kangxi radical pasted from a PDF (⽇), a compatibility ideograph, full-width letters were
    trained as <unk> or dropped as symbols while scoring read them as the vocabulary's characters; an upper-case
    letter is lower-cased for a vocabulary of lower-case letters; a word of a character vocabulary's letters is
    spelled, not unknown."""
    vocab = {"日", "月", "我", "零", "点", "a", "b", "c", "1", "2"}
    assert datadir.training_target("⽇⽉我\uf9b2点", vocab) == "日月我零点"
    assert datadir.training_target("ＡＢＣ１２我", vocab) == "abc12我"
    assert datadir.training_target("ABC我", {"我", "A", "b"}) == "ABC我"  # upper case in the vocabulary: kept
    assert datadir.training_target("﹤NOISE﹥我", vocab) == "我"  # a small-form tag is a tag after NFKC
    for raw in ("⽇⽉我\uf9b2点", "ＡＢＣ１２我"):  # what is trained is what is scored
        assert scoring.normalise(raw) == scoring.normalise(datadir.training_target(raw, vocab))
