"""Character error rate with a named text normaliser, on top of jiwer (and funasr's own scorer).

The normaliser is named in every figure (:data:`NORMALISER`): NFKC (full-width
to half-width), tags (``<unk>``, ``<NOISE>``, ``[LAUGHTER]``, ``<|zh|>``), punctuation
and spaces removed, lower-cased; each
CJK ideograph, kana or hangul syllable is one token and each word of any other
script (or digit run) is one token, so mixed Chinese/English is scored as MER.

``text.cer`` is written by funasr's own ``compute_wer`` on the normalised,
token-split files, so the format (and the ``tail -n 3`` habit) is FunASR's.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer

from asr_workbench.fileio import atomic_write_text

__all__ = ["NORMALISER", "NORMALISER_NAME", "TAG", "drop_invisible", "normalise", "tokens", "UttScore", "CerResult", "score_utterance", "corpus_cer",
           "aggregate", "DurationBin", "cer_by_duration", "aligned_pairs", "alignment_text", "text_cer_chunks", "write_funasr_text_cer", "Bootstrap",
           "paired_bootstrap"]

NORMALISER = ("zh-char-v4: NFKC (full->half width), drop <tags>/[tags] (<unk>, <NOISE>, [LAUGHTER], <|zh|>), "
              "invisible format characters (zero-width spaces and joiners, soft hyphens), "
              "punctuation and spaces, lower-case, curly apostrophes "
              "straightened; one token per CJK ideograph (every extension), kana or hangul syllable, per word of other "
              "scripts or digit run (MER for mixed text)")
NORMALISER_NAME = NORMALISER.split(":")[0]  # what a table column or an axis says

# scored one per character: CJK ideographs (BMP, extensions A-H, compatibility), kana letters (not the katakana
# middle dot U+30FB or the double hyphen U+30A0: punctuation), hangul syllables
_CHAR = ("\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
         "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f\U00030000-\U000323af")
# non-speech and markup tags without spaces inside: <unk>, <NOISE>, <sil>, <spk/>, [LAUGHTER], [+], [笑] (corpus
# annotations, scored as words by zh-char-v2), <|zh|><|NEUTRAL|> (SenseVoice's rich-transcription tags)
TAG = re.compile(r"[<＜][^<>＜＞\s]{1,40}[>＞]|[\[［][^\[\]［］\s]{1,40}[\]］]")  # full-width too, before NFKC
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\uff07": "'"})


def _classes() -> tuple[str, str, dict[int, None]]:
    """Regex character classes of the characters outside ``_CHAR`` that are letters or digits (Unicode categories
    L, N), and of those plus combining marks (M), and a table deleting the format characters (Cf), in one pass over
    the code points."""
    import sys

    inside = re.compile(f"[{_CHAR}]")
    spans: dict[str, list[list[int]]] = {"LN": [], "LMN": []}
    invisible: dict[int, None] = {}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat == "Cf":
            invisible[cp] = None
        cat = cat[0]
        if cat not in "LMN" or inside.match(ch):
            continue
        for name in (("LN", "LMN") if cat != "M" else ("LMN",)):
            if spans[name] and spans[name][-1][1] == cp - 1:
                spans[name][-1][1] = cp
            else:
                spans[name].append([cp, cp])
    esc = lambda cp: f"\\U{cp:08x}"  # noqa: E731
    build = lambda ranges: "[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"  # noqa: E731
    return build(spans["LN"]), build(spans["LMN"]), invisible


# a word of any script: a letter or digit, then letters, digits and combining marks (accents, vowel signs); a mark
# on its own (a variation selector after an ideograph or an emoji) is no token
_LN, _LMN, _INVISIBLE = _classes()
_WORD = _LN + _LMN + "*"
_TOKEN = re.compile(rf"[{_CHAR}]|{_WORD}(?:'{_WORD})*")


def drop_invisible(text: str) -> str:
    """``text`` without format characters (Unicode Cf: zero-width space, joiners and non-joiners, soft hyphen,
    word joiner, byte-order mark, direction marks): pasted from the web or a word processor, they are not heard,
    and would cut a word in two."""
    return text.translate(_INVISIBLE)


def tokens(text: str) -> list[str]:
    """Normalised scoring tokens: one per CJK ideograph, kana or hangul syllable, one per word of other scripts
    (letters with their combining marks) or digit run; tags, invisible format characters, punctuation and symbols
    are dropped."""
    text = TAG.sub(" ", unicodedata.normalize("NFKC", drop_invisible(text))).lower().translate(_APOSTROPHES)
    return _TOKEN.findall(text)


def normalise(text: str) -> str:
    """The normalised form as a space-separated token string (what gets scored)."""
    return " ".join(tokens(text))


@dataclass(frozen=True)
class UttScore:
    """Errors of one utterance against its reference (normalised token strings)."""

    ref: str
    hyp: str
    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def ref_tokens(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def cer(self) -> float:
        return self.errors / self.ref_tokens if self.ref_tokens else float(self.insertions > 0)


@dataclass(frozen=True)
class CerResult:
    """Corpus-level error counts; ``cer`` is (S + D + I) / N over reference tokens."""

    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_tokens: int
    n_utts: int
    normaliser: str = NORMALISER


def score_utterance(ref: str, hyp: str) -> UttScore:
    """Align one hypothesis with its reference (raw texts; normalised here)."""
    r, h = normalise(ref), normalise(hyp)
    if not r:
        return UttScore(r, h, 0, 0, len(h.split()) if h else 0, 0)
    out = jiwer.process_words(r, h)
    return UttScore(r, h, out.substitutions, out.deletions, out.insertions, out.hits)


def aggregate(scores: Sequence[UttScore]) -> CerResult:
    """Corpus CER from per-utterance scores."""
    s = sum(x.substitutions for x in scores)
    d = sum(x.deletions for x in scores)
    i = sum(x.insertions for x in scores)
    h = sum(x.hits for x in scores)
    n = s + d + h
    return CerResult((s + d + i) / n if n else 0.0, s, d, i, h, n, len(scores))


@dataclass(frozen=True)
class DurationBin:
    """Utterances of one duration range and their corpus CER (errors / reference tokens; None without tokens)."""

    low: float  # shortest and longest utterance of the bin, seconds
    high: float
    mean_s: float
    utterances: int
    ref_tokens: int
    errors: int

    @property
    def cer(self) -> float | None:
        return self.errors / self.ref_tokens if self.ref_tokens else None


def cer_by_duration(results: Sequence[dict[str, Any]], bins: int = 8) -> list[DurationBin]:
    """Corpus CER per duration bin of the scored rows of ``results.jsonl`` (``duration_s``, ``errors``,
    ``ref_tokens``): ``bins`` bins of equal numbers of utterances, shortest first (one long outlier gets a bin of
    its neighbours, not seven empty ones beside it); utterances of one duration stay in one bin."""
    rows = sorted((r for r in results if r.get("scored")), key=lambda r: r["duration_s"])
    out: list[DurationBin] = []
    start = 0
    for b in range(max(1, bins)):
        end = max(start + 1, round(len(rows) * (b + 1) / max(1, bins)))
        while end < len(rows) and rows[end]["duration_s"] == rows[end - 1]["duration_s"]:
            end += 1  # a duration is never split over two bins
        sel = rows[start:end]
        if not sel:
            break
        d = [r["duration_s"] for r in sel]
        out.append(DurationBin(d[0], d[-1], sum(d) / len(d), len(sel), sum(r["ref_tokens"] for r in sel),
                               sum(r["errors"] for r in sel)))
        start = end
    return out


def corpus_cer(refs: Sequence[str], hyps: Sequence[str]) -> CerResult:
    """Score hypotheses against references (raw texts; normalised here). A reference with no token after
    normalisation (empty, only tags or punctuation) is not scored, as in a run's ``metrics.json``: its hypothesis's
    words would be errors out of nothing."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return aggregate([score_utterance(r, h) for r, h in zip(refs, hyps) if tokens(r)])


def aligned_pairs(score: UttScore) -> list[tuple[str, str, str]]:
    """The alignment as ``(ref_token, hyp_token, op)``; op is ``=``, ``S``, ``D`` or ``I`` ("" for a gap)."""
    if not score.ref:
        return [("", t, "I") for t in score.hyp.split()]
    out = jiwer.process_words(score.ref, score.hyp)
    ref, hyp = out.references[0], out.hypotheses[0]
    pairs: list[tuple[str, str, str]] = []
    for c in out.alignments[0]:
        r, h = ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            pairs += [(a, b, "=") for a, b in zip(r, h)]
        elif c.type == "substitute":
            pairs += [(a, b, "S") for a, b in zip(r, h)]
        elif c.type == "delete":
            pairs += [(a, "", "D") for a in r]
        else:
            pairs += [("", b, "I") for b in h]
    return pairs


@functools.lru_cache(maxsize=1 << 16)
def _width(token: str) -> int:
    """Display columns of a token (East Asian wide and full-width characters take two); tokens repeat a lot."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in token)


def alignment_text(score: UttScore) -> str:
    """REF / HYP / OPS lines, columns padded for double-width characters (``*`` marks a gap)."""
    cols = [(r or "*", h or "*", "" if op == "=" else op) for r, h, op in aligned_pairs(score)]
    widths = [max(_width(r), _width(h), 1) for r, h, _ in cols]
    line = lambda i: " ".join(c[i].ljust(w - _width(c[i]) + len(c[i])) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    return f"REF: {line(0)}\nHYP: {line(1)}\nOPS: {line(2)}\n"


@functools.cache
def _wer_module() -> Any:
    """funasr's ``funasr/metrics/wer.py``, loaded from its file without running ``funasr/__init__`` (which
    imports torch and every model: seconds per process for a module that needs numpy, hydra and omegaconf)."""
    import importlib.util
    import sys

    if "funasr.metrics.wer" in sys.modules:
        return sys.modules["funasr.metrics.wer"]
    spec = importlib.util.find_spec("funasr")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("funasr is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics" / "wer.py"
    wer_spec = importlib.util.spec_from_file_location("_funasr_metrics_wer", path)
    module = importlib.util.module_from_spec(wer_spec)  # type: ignore[arg-type]
    wer_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _compute_wer_by_line(hyp: list[str], ref: list[str]) -> dict[str, int]:
    """funasr 1.4.16's ``metrics.wer.compute_wer_by_line``, step for step: the same cost table, the same
    tie-breaks (substitution, then insertion, then deletion), the same walk back with its quirks at the table's
    edges, so every count in text.cer is funasr's (tests/test_scoring.py compares the two on random pairs).
    Two differences: Python lists instead of numpy element access (about 10x faster: funasr's is the slowest part
    of scoring a large set), and Python ints, where funasr's int16 error count overflows the %WER past 327
    errors (a negative %WER)."""
    hyp = [x.lower() for x in hyp]
    ref = [x.lower() for x in ref]
    n_hyp, n_ref = len(hyp), len(ref)
    prev = list(range(n_ref + 1))  # cost row i - 1
    ops = [bytes(n_ref + 1)]  # 0 match (and the table's edges), 1 sub, 2 ins, 3 del
    for i in range(1, n_hyp + 1):
        h, row, op, left = hyp[i - 1], [i] * (n_ref + 1), bytearray(n_ref + 1), i
        for j in range(1, n_ref + 1):
            if h == ref[j - 1]:
                left = prev[j - 1]
            else:
                sub, ins = prev[j - 1], prev[j]
                if sub <= ins and sub <= left:
                    left, op[j] = sub + 1, 1
                elif ins <= left:
                    left, op[j] = ins + 1, 2
                else:
                    left, op[j] = left + 1, 3
            row[j] = left
        ops.append(op)
        prev = row
    rst = {"nwords": n_ref, "cor": 0, "wrong": prev[n_ref], "ins": 0, "del": 0, "sub": 0}
    i, j = n_hyp, n_ref
    while i >= 0 or j >= 0:
        o = ops[max(0, i)][max(0, j)]
        if o == 0:
            if i >= 1 and j >= 1:
                rst["cor"] += 1
            i, j = i - 1, j - 1
        elif o == 2:
            i, rst["ins"] = i - 1, rst["ins"] + 1
        elif o == 3:
            j, rst["del"] = j - 1, rst["del"] + 1
        else:
            i, j, rst["sub"] = i - 1, j - 1, rst["sub"] + 1
        if i < 0 and j >= 0:
            rst["del"] += 1
        elif j < 0 and i >= 0:
            rst["ins"] += 1
    return rst


@contextmanager
def _fast_by_line() -> Iterator[Any]:
    """funasr's ``metrics.wer`` module with :func:`_compute_wer_by_line` in place of its own, and its files opened
    as UTF-8 (it opens them in the locale's encoding: under ``LANG=C`` or a GBK locale it failed on Chinese), for
    this block."""
    wer = _wer_module()
    original = wer.compute_wer_by_line
    wer.compute_wer_by_line = _compute_wer_by_line
    wer.open = functools.partial(open, encoding="utf-8")  # found before the builtin by the module's code
    try:
        yield wer
    finally:
        wer.compute_wer_by_line = original
        del wer.open


_TAIL = re.compile(r"%WER \S+ \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]\n"
                   r"%SER \S+ \[ (\d+) / (\d+) \]\nScored (\d+) sentences, (-?\d+) not present in hyp\.\n?$")
# the scorer fills a len(ref) x len(hyp) table per utterance in Python (~0.1 us a cell); text.cer is split over
# processes once there are this many cells per process (a fork and a merge cost ~0.05 s)
CELLS_PER_PROCESS = 500_000


def _funasr_text_cer(paths: tuple[str, str, str]) -> str:
    """funasr's ``compute_wer`` on one pair of files; returns the file's text (worker of the process pool)."""
    ref_proc, hyp_proc, cer_file = paths
    with _fast_by_line() as wer:
        wer.compute_wer(ref_proc, hyp_proc, cer_file)
    return Path(cer_file).read_text(encoding="utf-8")


def _merge_text_cer(parts: Sequence[str]) -> str:
    """Per-utterance blocks of several funasr text.cer files in order, and the tail funasr would write for all."""
    bodies, totals = [], [0] * 9
    for text in parts:
        m = _TAIL.search(text)
        if m is None:
            raise ValueError("unexpected text.cer tail from funasr's compute_wer")
        bodies.append(text[: m.start()].removesuffix("\n"))
        totals = [t + int(v) for t, v in zip(totals, m.groups())]
    wrong, words, ins, dels, subs, wrong_snt, snt, scored, absent = totals
    err = round(wrong * 100 / words, 2) if words > 0 else 0.0
    serr = round(wrong_snt * 100 / snt, 2) if snt > 0 else 0.0
    return ("".join(bodies) + "\n" + f"%WER {err} [ {wrong} / {words}, {ins} ins, {dels} del, {subs} sub ]\n"
            f"%SER {serr} [ {wrong_snt} / {snt} ]\nScored {scored} sentences, {absent} not present in hyp.\n")


def _pool_context() -> Any:
    """``fork`` where there is one: the workers only run funasr's pure-Python scorer on strings, and a spawned
    worker would first re-import the caller's main script (torch, funasr: seconds each, 16 at once on a GPU
    machine, longer than the scoring). No worker touches CUDA, threads or locks of the parent."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def text_cer_chunks(cells: Sequence[int], processes: int) -> list[int]:
    """Boundaries ``[0, ..., len(cells)]`` of consecutive chunks of about equal work (``cells``: the scorer's
    table size per utterance), at most ``processes`` of them and none under ``CELLS_PER_PROCESS`` on average;
    consecutive, so the parts merge back in input order."""
    total = list(itertools.accumulate(cells))
    n = min(processes, total[-1] // CELLS_PER_PROCESS if total else 0, len(cells))
    if n <= 1:
        return [0, len(cells)]
    return sorted({0, len(cells), *(bisect.bisect_left(total, total[-1] * i / n) + 1 for i in range(1, n))})


def write_funasr_text_cer(keys: Sequence[str], scores: Sequence[UttScore], out_dir: Path,
                          processes: int | None = None) -> Path:
    """``ref.proc``, ``text.proc`` and ``text.cer`` in ``out_dir`` via funasr's ``compute_wer``
    (its per-line scorer replaced by an exact, faster copy without its int16 overflow: :func:`_compute_wer_by_line`).

    The scorer is O(n*m) per utterance in Python: sets with enough work (``CELLS_PER_PROCESS``) are split over
    ``processes`` (default: every core) and the parts merged in order, with the tail recomputed from their counts
    exactly as funasr computes it.
    """
    import tempfile
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    out_dir.mkdir(parents=True, exist_ok=True)
    ref_proc, hyp_proc, cer_file = out_dir / "ref.proc", out_dir / "text.proc", out_dir / "text.cer"
    rows = [(k, s) for k, s in zip(keys, scores) if s.ref]
    ref_lines = [f"{k} {s.ref}\n" for k, s in rows]
    hyp_lines = [f"{k} {s.hyp}\n".replace(" \n", "\n") for k, s in rows]
    ref_proc.write_text("".join(ref_lines), encoding="utf-8")
    hyp_proc.write_text("".join(hyp_lines), encoding="utf-8")
    from asr_workbench.processes import usable_cores

    cuts = text_cer_chunks([len(s.ref.split()) * max(1, len(s.hyp.split())) for _, s in rows],
                           processes or usable_cores())
    if len(cuts) <= 2:
        _funasr_text_cer((str(ref_proc), str(hyp_proc), str(cer_file)))
        return cer_file
    _wer_module()  # loaded once here, not in every forked worker
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".text_cer.") as tmp:
        jobs = []
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            r, h, c = (Path(tmp) / f"{name}.{i}" for name in ("ref", "hyp", "cer"))
            r.write_text("".join(ref_lines[a:b]), encoding="utf-8")
            h.write_text("".join(hyp_lines[a:b]), encoding="utf-8")
            jobs.append((str(r), str(h), str(c)))
        with warnings.catch_warnings(), ProcessPoolExecutor(max_workers=len(jobs), mp_context=_pool_context()) as pool:
            warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12 on fork() beside threads: see below
            parts = list(pool.map(_funasr_text_cer, jobs))
    atomic_write_text(cer_file, _merge_text_cer(parts))
    return cer_file


@dataclass(frozen=True)
class Bootstrap:
    """A CER difference (``b - a``) with its paired-bootstrap confidence interval."""

    delta: float
    low: float
    high: float
    n_resamples: int
    confidence: float
    seed: int


def paired_bootstrap(errors_a: Sequence[int], errors_b: Sequence[int], ref_tokens: Sequence[int],
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Bootstrap:
    """Corpus-CER difference ``b - a`` over the same utterances, with a percentile interval from resampling
    utterances with replacement (both systems on the same resample, so the pairing is kept)."""
    import numpy as np

    ea, eb, n = (np.asarray(x, dtype=np.int64) for x in (errors_a, errors_b, ref_tokens))
    if not (len(ea) == len(eb) == len(n)) or len(n) == 0:
        raise ValueError("paired_bootstrap needs equally long, non-empty per-utterance lists")
    delta = float((eb.sum() - ea.sum()) / max(1, n.sum()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(n), size=(n_resamples, len(n)))
    deltas = (eb[idx].sum(axis=1) - ea[idx].sum(axis=1)) / np.maximum(1, n[idx].sum(axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return Bootstrap(delta, float(low), float(high), n_resamples, confidence, seed)
