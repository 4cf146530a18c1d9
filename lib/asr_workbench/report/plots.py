"""Matplotlib figures of a run, with a CJK font so Chinese text renders (or a clear warning)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import font_manager

from asr_workbench.scoring import NORMALISER, cer_by_duration

__all__ = ["CJK_FONTS", "setup_cjk_font", "error_types_bar", "cer_vs_duration", "lr_schedule_plot", "cer_bars",
           "utterance_scatter", "cer_vs_parameter"]

CJK_FONTS = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans CJK JP",
             "Noto Serif CJK SC", "Source Han Sans SC", "Source Han Sans CN", "SimHei", "Microsoft YaHei",
             "PingFang SC", "Heiti SC", "AR PL UMing CN", "AR PL UKai CN", "Droid Sans Fallback")
_FONT: list[str | None] = []


def setup_cjk_font() -> str | None:
    """Put an installed CJK font first in matplotlib's sans-serif list; warn when there is none."""
    if _FONT:
        return _FONT[0]
    installed = {f.name for f in font_manager.fontManager.ttflist}
    name = next((f for f in CJK_FONTS if f in installed), None)
    if name:
        plt.rcParams["font.sans-serif"] = [name, *plt.rcParams["font.sans-serif"]]
        plt.rcParams["font.family"] = "sans-serif"
        plt.rcParams["axes.unicode_minus"] = False
    else:
        warnings.warn("no CJK font found: Chinese text in plots would show as empty boxes. Install one "
                      "(sudo apt-get install -y fonts-wqy-microhei) and restart the kernel.", stacklevel=2)
    _FONT.append(name)
    return name


def _order(value: Any) -> tuple[str, Any]:
    """A sort key for a swept parameter's values: numbers and strings by value, others (a dict of settings) by
    their JSON text, so they never meet ``<``."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return (type(value).__name__ if isinstance(value, str) else "number", value)
    return ("json", json.dumps(value, sort_keys=True, default=str))


def _cer_label(normalisers: Sequence[str] = (NORMALISER,), what: str = "CER") -> str:
    """An axis label that names the text normaliser behind the CER figures ("mixed" when they differ)."""
    names = sorted({str(n).split(":")[0] for n in normalisers if n})
    if not names:  # runs recorded before the normaliser was
        return f"{what} (%)"
    return f"{what} (%), normaliser {names[0] if len(names) == 1 else 'mixed: ' + ', '.join(names)}"


def _literal(text: Any) -> str:
    """User text (a data folder, set, parameter or value) as matplotlib should show it: a name with two ``$`` in
    it would otherwise be parsed as mathtext, and a parse error fails the whole report."""
    return str(text).replace("$", r"\$")


def error_types_bar(metrics: dict[str, Any], title: str = "") -> plt.Figure:
    """Substitutions / deletions / insertions as bars, CER and the normaliser in the title."""
    setup_cjk_font()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    counts = [metrics.get("sub") or 0, metrics.get("del") or 0, metrics.get("ins") or 0]
    bars = ax.bar(["substitution", "deletion", "insertion"], counts, color=["#d62728", "#7f7f7f", "#2ca02c"])
    ax.bar_label(bars)
    cer = metrics.get("cer")
    ax.set_title((_literal(title) + "\n" if title else "") + (f"CER {cer * 100:.2f}%  ({metrics.get('ref_tokens')} tokens)"
                                                    if cer is not None else "not scored"), fontsize=10)
    ax.set_ylabel("count")
    fig.text(0.01, 0.01, f"normaliser: {str(metrics.get('normaliser', '')).split(':')[0]}", fontsize=6, color="#555")
    fig.tight_layout()
    return fig


def cer_vs_duration(results: Sequence[dict[str, Any]], bins: int = 8, normaliser: str = NORMALISER) -> plt.Figure:
    """Per-utterance CER against duration, with the corpus CER of each duration bin (equal numbers of utterances,
    at their mean duration)."""
    setup_cjk_font()
    rows = [r for r in results if r.get("scored")]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if not rows:
        ax.text(0.5, 0.5, "no scored utterances", ha="center", va="center", transform=ax.transAxes)
        return fig
    d = [r["duration_s"] for r in rows]
    # exact errors/tokens, as the bins use (the stored cer is rounded)
    ax.scatter(d, [100 * r["errors"] / r["ref_tokens"] for r in rows], s=12, alpha=0.5, label="utterance")
    filled = [b for b in cer_by_duration(rows, bins) if b.cer is not None]
    xs, ys = [b.mean_s for b in filled], [100 * b.cer for b in filled]
    ax.plot(xs, ys, "o-", color="#d62728", label="corpus CER per bin")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel(_cer_label([normaliser]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_schedule_plot(lr: Sequence[float], steps_per_epoch: int, warnings: Sequence[str] = ()) -> plt.Figure:
    """The planned learning rate per optimizer step, epochs marked; red title when a warning applies."""
    setup_cjk_font()
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.plot(range(1, len(lr) + 1), lr)
    for e in range(steps_per_epoch, len(lr), max(1, steps_per_epoch)):
        ax.axvline(e + 0.5, color="#ccc", lw=0.5)
    ax.set(xlabel=f"optimizer step ({steps_per_epoch} per epoch, {len(lr)} planned)", ylabel="learning rate")
    warm = any("warmup" in w for w in warnings)
    peak = max(range(len(lr)), key=lambda i: lr[i]) + 1 if lr else 0  # the warm-up ends at the peak
    ax.set_title("planned learning rate" + (f"  (warm-up {peak} of {len(lr)} steps, {peak / len(lr):.0%}: see "
                                            "warning)" if warm and lr else ""),
                 color="#c00" if warm else "black", fontsize=10)
    fig.tight_layout()
    return fig


def cer_bars(sets: Sequence[Any]) -> plt.Figure:
    """Per test set: base vs fine-tuned CER; the fine-tuned bar carries the change's 95% interval. A set with
    nothing scored (no transcripts) has no bars, and says so."""
    import numpy as np

    setup_cjk_font()
    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(sets) + 2), 3.4))
    x = np.arange(len(sets))
    pct = lambda v: np.nan if v is None else v * 100  # noqa: E731
    base = [pct((s.base or {}).get("cer")) for s in sets]
    ft = [pct(s.finetuned.get("cer")) for s in sets]
    ax.bar(x - 0.2, base, 0.4, label="base", color="#999")
    # interval of the fine-tuned CER implied by the paired interval of the change (none where nothing was paired)
    yerr = np.array([[(s.delta.delta - s.delta.low) * 100 if s.delta else 0 for s in sets],
                     [(s.delta.high - s.delta.delta) * 100 if s.delta else 0 for s in sets]])
    ax.bar(x + 0.2, ft, 0.4, yerr=yerr, capsize=4, color=["#d62728" if s.worse else "#1f77b4" for s in sets])
    ax.bar([], [], color="#1f77b4", label="fine-tuned (95% interval of the change)")  # legend swatches, fixed colours
    if any(s.worse for s in sets):
        ax.bar([], [], color="#d62728", label="fine-tuned, worse beyond the interval (forgot)")
    for i, v in enumerate(ft):
        if np.isnan(v):
            ax.text(i, 0, "nothing scored", ha="center", va="bottom", fontsize=7, color="#555")
    ax.set_xticks(x, [_literal(s.name) for s in sets])
    ax.set_ylabel(_cer_label())
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def utterance_scatter(sets: Sequence[Any]) -> plt.Figure:
    """Per-utterance CER, base (x) against fine-tuned (y): below the diagonal improved, above regressed."""
    setup_cjk_font()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    top = 0.0
    for s in sets:
        xs, ys = [p["base_cer"] * 100 for p in s.pairs], [p["ft_cer"] * 100 for p in s.pairs]
        ax.scatter(xs, ys, s=12, alpha=0.6, label=_literal(s.name))
        top = max([top, *xs, *ys])
    ax.plot([0, top or 1], [0, top or 1], color="#888", lw=0.8)
    ax.set(xlabel=_cer_label(what="base CER"), ylabel=_cer_label(what="fine-tuned CER"), title="per utterance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cer_vs_parameter(board: Any, parameter: str | None) -> plt.Figure:
    """CER of the runs against one swept parameter, in value order: a line per data set through the best run of each
    value, and every run as a dot where several share a value."""
    setup_cjk_font()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    rows = [r for r in board.rows if r.get("cer") is not None and parameter and parameter in r["parameters"]]
    if not rows:
        ax.text(0.5, 0.5, _literal(f"no run varies {parameter!r}") if parameter else "set sweep_param to plot CER against it",
                ha="center", va="center", transform=ax.transAxes)
        return fig
    # one x position per value, in value order across every line (a categorical axis would order by first sight)
    values = sorted({json.dumps(r["parameters"][parameter], sort_keys=True, default=str): r["parameters"][parameter]
                     for r in rows}.values(), key=_order)
    where = {json.dumps(v, sort_keys=True, default=str): i for i, v in enumerate(values)}
    several = False
    for data in sorted({r["data"] for r in rows}):
        pts = sorted((where[json.dumps(r["parameters"][parameter], sort_keys=True, default=str)], r["cer"] * 100)
                     for r in rows if r["data"] == data)
        best: dict[int, float] = {}
        for x, y in pts:  # runs that share the value but differ otherwise (epochs, batch): the line joins the best
            best[x] = min(y, best.get(x, y))
        several |= len(best) < len(pts)
        line = ax.plot(list(best), list(best.values()), "o-", label=_literal(data))[0]
        if len(best) < len(pts):
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, alpha=0.35, color=line.get_color())
    step = -(-len(values) // 12)  # at most about 12 labels: 40 learning rates overlapped into a black bar
    ax.set_xticks(range(len(values)), [_literal(v) if i % step == 0 else "" for i, v in enumerate(values)],
                  rotation=30 if len(values) > 6 else 0, ha="right" if len(values) > 6 else "center")
    from asr_workbench.leaderboard import varying_parameters

    # settings that change beside the swept one: the line does not show the swept one's effect alone
    others = [k for k in varying_parameters([{"parameters": r["parameters"]} for r in rows]) if k != parameter]
    title = ("line: the best run per value; dots: every run" if several else "") + (
        f"{'; ' if several else ''}other settings differ too: {', '.join(others[:4])}{' ...' if len(others) > 4 else ''}"
        if others else "")
    if title:
        ax.set_title(_literal(title), fontsize=8, color="#c00" if others else "black")
    ax.set(xlabel=_literal(parameter), ylabel=_cer_label([r.get("normaliser") or "" for r in rows]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
