"""Character error rate with a named text normaliser, on top of jiwer.

The normaliser is named in every figure (``NORMALISER``): Chinese split into
characters; spaces, punctuation and ``<unk>`` removed; full-width folded to
half-width; Latin lower-cased. Mixed Chinese/English is scored as MER: each
Chinese character and each English word is one token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

__all__ = ["NORMALISER", "normalise", "tokens", "CerResult", "corpus_cer"]

NORMALISER = "zh-char-v1: NFKC (full->half width), drop <unk>/punctuation/spaces, lower-case Latin, CJK per char, Latin per word"

_UNK = re.compile(r"<unk>", re.IGNORECASE)
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[a-z0-9']+")


def tokens(text: str) -> list[str]:
    """Normalised scoring tokens: one per Chinese character, one per Latin word or digit run."""
    text = unicodedata.normalize("NFKC", _UNK.sub(" ", text)).lower()
    return _TOKEN.findall(text)


def normalise(text: str) -> str:
    """The normalised form as a space-separated token string (what gets scored)."""
    return " ".join(tokens(text))


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


def corpus_cer(refs: Sequence[str], hyps: Sequence[str]) -> CerResult:
    """Score hypotheses against references (raw texts; normalised here)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    s = d = i = h = 0
    for ref, hyp in zip(refs, hyps):
        r, p = normalise(ref), normalise(hyp)
        if not r:
            i += len(p.split())
            continue
        out = jiwer.process_words(r, p)
        s, d, i, h = s + out.substitutions, d + out.deletions, i + out.insertions, h + out.hits
    n = s + d + h
    return CerResult((s + d + i) / n if n else 0.0, s, d, i, h, n, len(refs))
