"""Character error rate with a named text normaliser, on top of jiwer (and funasr's own scorer).

The normaliser is named in every figure (:data:`NORMALISER`): NFKC (full-width
to half-width), ``<unk>``, punctuation and spaces removed, Latin lower-cased;
each Chinese character is one token and each Latin word / digit run is one
token, so mixed Chinese/English is scored as MER.

``text.cer`` is written by funasr's own ``compute_wer`` on the normalised,
token-split files, so the format (and the ``tail -n 3`` habit) is FunASR's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jiwer

__all__ = ["NORMALISER", "normalise", "tokens", "UttScore", "CerResult", "score_utterance", "corpus_cer",
           "aggregate", "aligned_pairs", "alignment_text", "write_funasr_text_cer", "Bootstrap", "paired_bootstrap"]

NORMALISER = ("zh-char-v1: NFKC (full->half width), drop <unk>/punctuation/spaces, lower-case Latin; "
              "one token per CJK character, per Latin word or digit run (MER for mixed text)")

_UNK = re.compile(r"<unk>", re.IGNORECASE)
_CJK = r"\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = r"[a-z0-9\u00c0-\u024f]+"
_TOKEN = re.compile(rf"[{_CJK}]|{_WORD}(?:'{_WORD})*")


def tokens(text: str) -> list[str]:
    """Normalised scoring tokens: one per Chinese character, one per Latin word or digit run."""
    text = unicodedata.normalize("NFKC", _UNK.sub(" ", text)).lower()
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


def corpus_cer(refs: Sequence[str], hyps: Sequence[str]) -> CerResult:
    """Score hypotheses against references (raw texts; normalised here)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return aggregate([score_utterance(r, h) for r, h in zip(refs, hyps)])


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


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def alignment_text(score: UttScore) -> str:
    """REF / HYP / OPS lines, columns padded for double-width characters (``*`` marks a gap)."""
    cols = [(r or "*", h or "*", "" if op == "=" else op) for r, h, op in aligned_pairs(score)]
    widths = [max(_width(r), _width(h), 1) for r, h, _ in cols]
    line = lambda i: " ".join(c[i] + " " * (w - _width(c[i])) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    return f"REF: {line(0)}\nHYP: {line(1)}\nOPS: {line(2)}\n"


@contextmanager
def _python_int_error_counts() -> Iterator[None]:
    """funasr 1.4.16's ``compute_wer_by_line`` returns the error count as ``numpy.int16``; ``compute_wer``
    sums those and multiplies by 100, which overflows past 327 errors and prints a negative %WER.
    Within this block it returns a Python int (the counts themselves are right)."""
    import funasr.metrics.wer as wer

    original = wer.compute_wer_by_line

    def by_line(hyp: list[str], ref: list[str]) -> dict[str, int]:
        out = original(hyp, ref)
        return {k: int(v) for k, v in out.items()}

    wer.compute_wer_by_line = by_line
    try:
        yield
    finally:
        wer.compute_wer_by_line = original


def write_funasr_text_cer(keys: Sequence[str], scores: Sequence[UttScore], out_dir: Path) -> Path:
    """``ref.proc``, ``text.proc`` and ``text.cer`` in ``out_dir`` via funasr's ``compute_wer``
    (with its int16 overflow worked around, see :func:`_python_int_error_counts`)."""
    from funasr.metrics.wer import compute_wer

    out_dir.mkdir(parents=True, exist_ok=True)
    ref_proc, hyp_proc, cer_file = out_dir / "ref.proc", out_dir / "text.proc", out_dir / "text.cer"
    rows = [(k, s) for k, s in zip(keys, scores) if s.ref]
    ref_proc.write_text("".join(f"{k} {s.ref}\n" for k, s in rows), encoding="utf-8")
    hyp_proc.write_text("".join(f"{k} {s.hyp}\n".replace(" \n", "\n") for k, s in rows), encoding="utf-8")
    with _python_int_error_counts():
        compute_wer(str(ref_proc), str(hyp_proc), str(cer_file))
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
