"""Scoring: the named normaliser, jiwer CER, and agreement with funasr's own scorer."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from asr_workbench import scoring


@pytest.mark.parametrize("raw, norm", [
    ("今天，是 星期一！", "今 天 是 星 期 一"),
    ("Ｈｅｌｌｏ　ＷＯＲＬＤ", "hello world"),  # full-width -> half-width, lower-cased
    ("打开 WiFi 设置<unk>", "打 开 wifi 设 置"),
    ("<UNK>", ""),
    ("二零二四年3月", "二 零 二 四 年 3 月"),
    ("我在𠮷野家", "我 在 𠮷 野 家"),  # CJK extension B: a character, not dropped
    ("你好こんにちは", "你 好 こ ん に ち は"),  # kana: one token each
    ("I don’t know", "i don't know"),  # a curly apostrophe is the straight one
    ("αβγ Δ, नमस्ते", "αβγ δ नमस्ते"),  # other scripts are words, with their vowel signs
    ("迈克尔・杰克逊", "迈 克 尔 杰 克 逊"),  # the katakana middle dot in names is punctuation
    ("我❤️你", "我 你"),  # a variation selector after a symbol is no token
    ("ラーメン", "ラ ー メ ン"),
    # corpus annotations and model tags are not words: <NOISE>, [LAUGHTER], full-width ［笑］, SenseVoice's <|zh|>
    ("<NOISE> 明天是星期五 [LAUGHTER]", "明 天 是 星 期 五"),
    ("<sil>你好<spk/>［笑］", "你 好"),
    ("<|zh|><|NEUTRAL|><|Speech|>今天", "今 天"),
    ("3 < 5 and 7 > 2 [vocalized noise]", "3 5 and 7 2 vocalized noise"),  # brackets around spaces are text
    # invisible format characters (zero-width space, soft hyphen, ZWNJ, BOM) do not cut a word in two (zh-char-v3 did)
    ("hello\u200bworld co\u00adoperate", "helloworld cooperate"),
    ("می\u200cخواهم\ufeff 今\u200b天", "میخواهم 今 天"),
])
def test_normaliser(raw, norm):
    assert scoring.normalise(raw) == norm


def test_mixed_chinese_english_counts_words_as_one_token():
    s = scoring.score_utterance("打开 WiFi 设置", "打开 wifi 设计")
    assert (s.ref_tokens, s.substitutions, s.errors) == (5, 1, 1)


def test_corpus_cer_counts():
    r = scoring.corpus_cer(["今天是星期一", "明天"], ["今天是星期二", "明天见"])
    assert (r.substitutions, r.deletions, r.insertions, r.ref_tokens) == (1, 0, 1, 8)
    assert r.cer == pytest.approx(2 / 8) and r.normaliser == scoring.NORMALISER


def test_empty_hypothesis_is_all_deletions():
    s = scoring.score_utterance("今天", "")
    assert (s.deletions, s.cer) == (2, 1.0)


def test_alignment_text_marks_errors():
    s = scoring.score_utterance("今天是星期一", "今天星期二")
    text = scoring.alignment_text(s)
    assert text.startswith("REF: 今 天 是 星 期 一") and "D" in text and "S" in text


def test_text_cer_written_by_funasr_matches_our_numbers(tmp_path):
    refs = {"a": "今天是星期一", "b": "明天下午三点", "c": "我的电话号码是一二三", "d": "你好"}
    hyps = {"a": "今天是星期二", "b": "明天下午三点钟", "c": "我的电话是一二三四", "d": ""}
    keys = list(refs)
    scores = [scoring.score_utterance(refs[k], hyps[k]) for k in keys]
    ours = scoring.aggregate(scores)
    cer_file = scoring.write_funasr_text_cer(keys, scores, tmp_path)
    tail = cer_file.read_text(encoding="utf-8").strip().splitlines()[-3:]
    m = re.match(r"%WER (\S+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]", tail[0])
    assert m, tail
    wer, wrong, total = float(m.group(1)), int(m.group(2)), int(m.group(3))
    assert total == ours.ref_tokens
    assert wrong == ours.substitutions + ours.deletions + ours.insertions
    assert wer == round(ours.cer * 100, 2)
    assert tail[2] == "Scored 4 sentences, 0 not present in hyp."


def test_fast_line_scorer_is_funasrs(tmp_path):
    """The per-line scorer text.cer uses gives funasr's counts on every pair: random short pairs over a small
    alphabet (ties everywhere, empty sides, upper case), long near-matches, and the file compute_wer writes."""
    import random

    wer = scoring._wer_module()
    rng = random.Random(1)
    pairs = [([rng.choice("abcAB") for _ in range(rng.randint(0, 9))], [rng.choice("abcAB") for _ in range(rng.randint(0, 9))])
             for _ in range(5000)]
    for _ in range(100):
        ref = [rng.choice("的一是不了人我在有他这") for _ in range(rng.randint(30, 90))]
        pairs.append(([c if rng.random() > 0.1 else "x" for c in ref if rng.random() > 0.1], ref))
    for hyp, ref in pairs:
        assert scoring._compute_wer_by_line(hyp, ref) == {k: int(v) for k, v in wer.compute_wer_by_line(hyp, ref).items()}
    keys = [f"u{i}" for i in range(len(pairs))]
    (tmp_path / "ref").write_text("".join(f"{k} {' '.join(r)}\n" for k, (_, r) in zip(keys, pairs) if r), encoding="utf-8")
    (tmp_path / "hyp").write_text("".join(f"{k} {' '.join(h)}\n" for k, (h, _) in zip(keys, pairs) if h), encoding="utf-8")
    wer.compute_wer(str(tmp_path / "ref"), str(tmp_path / "hyp"), str(tmp_path / "theirs"))
    ours = scoring._funasr_text_cer((str(tmp_path / "ref"), str(tmp_path / "hyp"), str(tmp_path / "ours")))
    theirs = (tmp_path / "theirs").read_text(encoding="utf-8")
    assert ours.splitlines()[:-3] == theirs.splitlines()[:-3] and len(ours.splitlines()) > 10000
    assert ours.splitlines()[-2:] == theirs.splitlines()[-2:]  # %WER may differ: funasr's int16 overflows


def test_text_cer_split_over_processes_is_byte_identical(tmp_path, monkeypatch):
    """Large sets are scored by funasr's compute_wer in parallel chunks; the merged file equals one run's."""
    import random

    monkeypatch.setattr(scoring, "CELLS_PER_PROCESS", 20_000)  # this set's ~250k cells: several chunks

    rng = random.Random(0)
    chars = "今天是星期一下午三点我的电话号码"
    refs = ["".join(rng.choice(chars) for _ in range(rng.randint(5, 40))) for _ in range(500)]
    hyps = [r[: len(r) - 3] + "".join(rng.choice(chars) for _ in range(rng.randint(0, 6))) for r in refs]
    keys = [f"u{i:04d}" for i in range(500)]
    scores = [scoring.score_utterance(r, h) for r, h in zip(refs, hyps)]
    assert len(scoring.text_cer_chunks([len(s.ref.split()) * len(s.hyp.split()) for s in scores], 2)) == 3
    one = scoring.write_funasr_text_cer(keys, scores, tmp_path / "one", processes=1).read_text(encoding="utf-8")
    two = scoring.write_funasr_text_cer(keys, scores, tmp_path / "two", processes=2).read_text(encoding="utf-8")
    assert one == two
    assert not list((tmp_path / "two").glob(".text_cer.*"))  # the chunk files are cleaned up
    # chunks are cut by work (len(ref) x len(hyp)): a long first utterance gets a chunk of its own
    long_ref = "".join(rng.choice(chars) for _ in range(700))
    skewed = [scoring.score_utterance(long_ref, long_ref[5:])] + scores[1:]
    assert (scoring.write_funasr_text_cer(keys, skewed, tmp_path / "s1", processes=1).read_text(encoding="utf-8")
            == scoring.write_funasr_text_cer(keys, skewed, tmp_path / "s4", processes=4).read_text(encoding="utf-8"))
    ours = scoring.aggregate(scores)
    assert f"%WER {round(ours.cer * 100, 2)} [ {ours.substitutions + ours.deletions + ours.insertions} / {ours.ref_tokens}," in two


def test_text_cer_chunks_split_by_work_in_order():
    """Consecutive chunks of about equal scorer work, at most one per process, none too small to pay off."""
    per = scoring.CELLS_PER_PROCESS
    assert scoring.text_cer_chunks([per // 10] * 100, 4) == [0, 25, 50, 75, 100]  # 10 x per: 4 processes
    assert scoring.text_cer_chunks([per // 10] * 15, 4) == [0, 15]  # 1.5 x per: not worth a second process
    # one long utterance (half the work) alone, the rest in two: 6, 3 and 3 x per
    assert scoring.text_cer_chunks([6 * per] + [per // 10] * 60, 4) == [0, 1, 31, 61]
    assert scoring.text_cer_chunks([], 4) == [0, 0]


def test_cer_by_duration_bins_by_hand():
    """Bins of equal numbers of utterances, shortest first: one long outlier shares the last bin (equal-width bins
    put everything else in the first and left six empty); a duration is never split; unscored rows count nowhere;
    a bin's CER is its errors over its tokens, not a mean of utterance CERs."""
    rows = [{"scored": True, "duration_s": 1.0, "ref_tokens": 10, "errors": 1},
            {"scored": True, "duration_s": 1.5, "ref_tokens": 2, "errors": 2},
            {"scored": True, "duration_s": 2.0, "ref_tokens": 4, "errors": 0},
            {"scored": True, "duration_s": 600.0, "ref_tokens": 6, "errors": 3},
            {"scored": False, "duration_s": 1.2}]
    b = scoring.cer_by_duration(rows, bins=2)
    assert [(x.low, x.high, x.mean_s, x.utterances, x.ref_tokens, x.errors) for x in b] == [
        (1.0, 1.5, 1.25, 2, 12, 3), (2.0, 600.0, 301.0, 2, 10, 3)]
    assert b[0].cer == 3 / 12 and b[1].cer == 3 / 10
    one = scoring.cer_by_duration(rows[:1] * 3, bins=8)  # one duration: one bin
    assert len(one) == 1 and one[0].utterances == 3 and one[0].cer == 0.1
    assert [x.utterances for x in scoring.cer_by_duration(rows[:4], bins=8)] == [1, 1, 1, 1]  # no empty bins
    assert scoring.cer_by_duration([{"scored": False, "duration_s": 1.0}]) == []
    empty = scoring.cer_by_duration([{"scored": True, "duration_s": 1.0, "ref_tokens": 0, "errors": 0},
                                     {"scored": True, "duration_s": 2.0, "ref_tokens": 3, "errors": 1}], bins=2)
    assert empty[0].cer is None and empty[1].cer == 1 / 3


def test_text_cer_is_written_whatever_the_locale(tmp_path):
    """funasr's compute_wer opens its files in the locale's encoding: under LANG=C (or a GBK locale) it failed on
    the Chinese of ref.proc, after the run had decoded everything."""
    script = ("import sys; from pathlib import Path; from asr_workbench import scoring\n"
              "s = [scoring.score_utterance('\\u4eca\\u5929\\u4e0b\\u5348', '\\u4eca\\u5929\\u4e0a\\u5348')]\n"  # 今天下午, 今天上午"
              "print(scoring.write_funasr_text_cer(['u1'], s, Path(sys.argv[1])).read_text(encoding='utf-8')"
              ".splitlines()[-3])\n")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("%WER 25.0 [ 1 / 4, 0 ins, 0 del, 1 sub ]")


def test_corpus_cer_skips_references_with_nothing_to_score():
    """As a run does: a tag-only or empty reference is not scored (its hypothesis's words were 2 errors of 0)."""
    r = scoring.corpus_cer(["你好", "<unk>", ""], ["你好", "啊啊", "嗯"])
    assert (r.cer, r.ref_tokens, r.insertions, r.n_utts) == (0.0, 2, 0, 1)
