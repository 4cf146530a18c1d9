"""HTML tables of a run: summary, data report, coloured ref/hyp diffs, worst utterances."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asr_workbench import paths
from asr_workbench.scoring import NORMALISER_NAME, UttScore, aligned_pairs

__all__ = ["Html", "no_maths", "config_html", "table_html", "summary_table", "data_report_table", "diff_html", "audio_html", "worst_table", "warnings_html", "finetune_data_table",
           "dev_cer_table", "finetune_summary", "comparison_table", "changed_utterances",
           "checkpoint_table", "leaderboard_table"]

_STYLE = {"S": "background:#fdd;color:#a00", "D": "background:#eee;color:#a00;text-decoration:line-through",
          "I": "background:#dfd;color:#070"}


def no_maths(markup: str) -> str:
    """``markup`` in a block JupyterLab's MathJax leaves alone: a transcript saying "$5 or $10" is text, not maths."""
    return f"<div class='tex2jax_ignore mathjax_ignore'>{markup}</div>"


class Html(str):
    """An HTML string that Jupyter displays as HTML, never typeset as maths (and tests read as text)."""

    def _repr_html_(self) -> str:
        return no_maths(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # the plain-text form saved beside the HTML in the notebook: a line, not the whole HTML a second time
        p.text(f"<HTML, {len(self):,} characters>")


def config_html(config: dict[str, Any]) -> Html:
    """The resolved settings of a run, as the YAML saved in ``config.yaml``."""
    import yaml

    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    return Html(f"<details><summary><b>Resolved settings</b> (config.yaml, click to open)</summary>"
                f"<pre>{html.escape(text)}</pre></details>")


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], raw_cols: Sequence[int] = ()) -> Html:
    """A plain HTML table; cells are escaped except the columns in ``raw_cols`` (already HTML)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_cols else html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    # one style for the table, not one per cell (half of a 2000-run leaderboard's bytes)
    return Html(f"<style>table.awb th, table.awb td {{text-align:left}}</style>"
                f"<table class='awb'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def summary_table(metrics: dict[str, Any]) -> Html:
    """Key figures of an inference run."""
    cer = metrics.get("cer")
    rows = [
        (f"CER ({str(metrics.get('normaliser') or NORMALISER_NAME).split(':')[0]})", f"{cer * 100:.2f} %" if cer is not None else
         "not scored: no transcript matches a decoded id (see the data report)" if metrics.get("has_text") else
         "not scored (no text)"),
        ("substitutions / deletions / insertions", f"{metrics.get('sub')} / {metrics.get('del')} / {metrics.get('ins')}"
         if cer is not None else "-"),
        ("reference tokens", metrics.get("ref_tokens") if cer is not None else "-"),
        ("utterances: input / decoded / scored / skipped",
         f"{metrics['n_input']} / {metrics['n_decoded']} / {metrics['n_scored']} / {metrics['n_skipped']}"),
        ("audio", f"{metrics['audio_seconds']:.1f} s"),
        ("decoding time", f"{metrics['wall_seconds']:.1f} s (RTF {metrics['rtf']:.4f}, "
                          f"{1 / metrics['rtf'] if metrics['rtf'] else 0:.0f}x real time; "
                          f"model loading {metrics.get('model_load_seconds', 0):.1f} s more)"),
        ("model", metrics.get("model")),
        ("device", f"{metrics.get('device')} x {metrics.get('n_processes')} process(es)"),
        ("normaliser", metrics.get("normaliser")),
    ]
    rows += [("note", n) for n in metrics.get("notes", [])]
    return table_html(["", ""], rows)


def data_report_table(rows: Sequence[dict[str, Any]], limit: int = 200) -> Html:
    """The data report as a table (first ``limit`` rows), or a line saying the input is clean."""
    if not rows:
        return Html("<p>Data report: no problems found.</p>")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["severity"]] = counts.get(r["severity"], 0) + 1
    head = "<p>Data report: " + ", ".join(f"{n} {s}(s)" for s, n in sorted(counts.items())) + "</p>"
    body = [(r["severity"], r["code"], r.get("key") or "", r["where"], r["reason"]) for r in rows[:limit]]
    more = f"<p>... {len(rows) - limit} more in data_report.jsonl</p>" if len(rows) > limit else ""
    return Html(head + table_html(["severity", "code", "key", "file:line", "reason"], body) + more)


def diff_html(ref_norm: str, hyp_norm: str) -> str:
    """Coloured alignment: substitutions red (ref -> hyp), deletions struck out, insertions green."""
    s = UttScore(ref_norm, hyp_norm, 0, 0, 0, 0)
    parts = []
    for r, h, op in aligned_pairs(s):
        if op == "=":
            parts.append(html.escape(r))
        elif op == "S":
            parts.append(f"<span style='{_STYLE['S']}' title='{html.escape(r)} → {html.escape(h)}'>"
                         f"{html.escape(h)}<sub>{html.escape(r)}</sub></span>")
        else:
            parts.append(f"<span style='{_STYLE[op]}'>{html.escape(r if op == 'D' else h)}</span>")
    return " ".join(parts)


def audio_html(path: str) -> str:
    """An inline audio player (16 kHz FLAC, base64; the first :data:`audio.PLAYER_SECONDS` of a longer file, said
    under it) for a file of any supported format."""
    from asr_workbench.audio import playable

    clip = playable(path)
    note = (f"<br><span style='font-size:smaller'>first {clip.clipped_to:.0f} s of {clip.seconds:.0f} s</span>"
            if clip.clipped_to else "")
    return (f"<audio controls preload='none' src='data:{clip.mime};base64,{base64.b64encode(clip.data).decode()}'>"
            f"</audio>{note}")


def worst_table(results: Sequence[dict[str, Any]], n: int = 10, audio: bool = True) -> Html:
    """The ``n`` utterances with the most errors: CER, coloured diff, audio player."""
    rows = sorted((r for r in results if r.get("scored") and r["errors"]), key=lambda r: (-r["errors"], -r["cer"]))[:n]
    if not rows:
        return Html("<p>No scored utterance has an error.</p>" if any(r.get("scored") for r in results)
                    else "<p>No scored utterances.</p>")
    body = [(r["key"], f"{r['cer'] * 100:.1f} %", f"{r['errors']}/{r['ref_tokens']}",
             diff_html(r["ref_norm"], r["hyp_norm"]), audio_html(r["audio"]) if audio else "") for r in rows]
    legend = ("<p style='font-size:smaller'>red: substitution (reference below), "
              "<s>struck</s>: deletion, green: insertion</p>")
    return Html(legend + table_html(["key", f"CER ({NORMALISER_NAME})", "errors", "hypothesis vs reference",
                                     "audio"], body, raw_cols=(3, 4)))


def warnings_html(warnings: Sequence[str]) -> Html:
    """Warnings in a red box (or a line saying there are none)."""
    if not warnings:
        return Html("<p>No warnings.</p>")
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return Html(f"<div style='border:1px solid #c00;background:#fee;padding:4px 8px'><b>Warnings</b><ul>{items}</ul></div>")


def finetune_data_table(plan: Any) -> Html:
    """Train/dev sizes, what funasr would drop silently, unknown characters, input problems, recommended settings."""
    rows = []
    for s in (plan.train, plan.dev):
        rows.append((s.name, str(s.folder), s.n_utts, f"{s.hours * 60:.1f} min", len(s.dropped),
                     (" ".join(f"{c}({n})" for c, n in s.oov.most_common(15))
                      + (f" ... {len(s.oov) - 15} more" if len(s.oov) > 15 else "")) or "-",
                     len(s.dataset.report.issues)))
    out = table_html(["split", "folder", "utterances", "audio", "dropped by funasr", "unknown characters",
                      "input issues"], rows)
    dropped = [(s.name, d["key"], d["where"], d["reason"]) for s in (plan.train, plan.dev) for d in s.dropped]
    if dropped:
        out += table_html(["split", "key", "file:line", "why funasr would skip it"], dropped[:100])
        if len(dropped) > 100:
            out += f"<p>... {len(dropped) - 100} more not shown (plan.train.dropped, plan.dev.dropped hold them all)</p>"
    issues = plan.train.dataset.report.rows() + plan.dev.dataset.report.rows()
    rec = getattr(plan, "recommendation", None)
    if rec is not None:
        out += "<p><b>Settings measured for this machine</b></p><ul>" + "".join(
            f"<li>{html.escape(r)}</li>" for r in rec.reasons) + "</ul>"
    return Html(out + (data_report_table(issues) if issues else ""))


def _pct(cer: float | None, missing: str = "- (nothing scored)") -> str:
    """A CER (a fraction) as a table shows it, ``missing`` where there is none."""
    return f"{cer * 100:.2f} %" if cer is not None else missing


def dev_cer_table(dev_cer: dict[str, float], chosen: str) -> Html:
    """Dev CER of the base model and of each checkpoint; the exported one marked."""
    base = dev_cer.get("base")
    rows = [(name + ("  <- exported" if name == chosen else ""), _pct(v),
             f"{(v - base) * 100:+.2f}" if base is not None and v is not None and name != "base" else "")
            for name, v in dev_cer.items()]
    return table_html(["model", f"dev CER ({NORMALISER_NAME})", "vs base (points)"], rows)


def finetune_summary(metrics: dict[str, Any]) -> Html:
    """Where the fine-tuned model is and what the run cost."""
    rows = [("fine-tuned model folder", metrics["model_dir"]), ("weights", metrics["checkpoint"]),
            (f"dev CER ({NORMALISER_NAME})", f"{_pct(metrics['cer'])} (base {_pct(metrics['dev_cer'].get('base'))})"),
            ("training", f"{metrics['train_seconds']:.0f} s on {metrics['device']} x {metrics['nproc']} process(es), "
                         f"{metrics['audio_seconds_per_second']:.1f} audio-seconds per second"),
            ("steps", f"{metrics['steps_per_epoch']} per epoch, {metrics['total_steps']} planned"),
            ("normaliser", metrics["normaliser"])]
    return table_html(["", ""], rows)


def comparison_table(sets: Sequence[Any]) -> Html:
    """Base vs fine-tuned per test set: CER, S/D/I, change with its 95% interval, utterance counts, RTF."""
    rows = []
    for s in sets:
        b, f, d = s.base or {}, s.finetuned, s.delta
        sdi = lambda m: f"{m.get('sub')}/{m.get('del')}/{m.get('ins')}" if m else "-"  # noqa: E731
        change = (f"<b style='color:{'#c00' if s.worse else ('#070' if d.high < 0 else '#000')}'>{d.delta * 100:+.2f}</b> "
                  f"[{d.low * 100:+.2f}, {d.high * 100:+.2f}]") if d else "-"
        counts = f"{s.improved} / {s.regressed} / {s.unchanged}" if s.pairs else (
            "- (no base)" if not s.base else "- (nothing scored)")
        rows.append((s.name, _pct(b.get("cer"), "-"), _pct(f.get("cer"), "-"), change, sdi(b), sdi(f), counts,
                     f"{b.get('rtf', '-')} / {f.get('rtf')}"))
    return table_html(["test set", f"base CER ({NORMALISER_NAME})", f"fine-tuned CER ({NORMALISER_NAME})", "change, points [95% interval]",
                       "base S/D/I", "fine-tuned S/D/I", "improved / regressed / unchanged", "RTF base / fine-tuned"],
                      rows, raw_cols=(3,))


def changed_utterances(sets: Sequence[Any], n: int = 5, audio: bool = True) -> Html:
    """The most improved and most regressed utterances of each set: both hypotheses as coloured diffs."""
    parts = []
    for s in sets:
        for title, group in (("most improved", s.most_improved[:n]), ("most regressed", s.most_regressed[:n])):
            if not group:
                continue
            rows = [(p["key"], f"{p['base_errors']} -> {p['ft_errors']} / {p['ref_tokens']}",
                     diff_html(p["ref_norm"], p["base_hyp_norm"]), diff_html(p["ref_norm"], p["ft_hyp_norm"]),
                     audio_html(p["audio"]) if audio else "") for p in group]
            parts.append(f"<h4>{html.escape(s.name)}: {title}</h4>"
                         + table_html(["key", "errors base -> fine-tuned", "base", "fine-tuned", "audio"], rows,
                                      raw_cols=(2, 3, 4)))
    return Html("".join(parts) or "<p>No utterance changed.</p>")


def checkpoint_table(checkpoints: Sequence[dict[str, Any]]) -> Html:
    """CER of several checkpoints of one fine-tune on its dev set."""
    if not checkpoints:
        return Html("<p>No checkpoint comparison asked for (compare_checkpoints).</p>")
    scored = [c["cer"] for c in checkpoints if c["cer"] is not None]
    best = min(scored) if scored else None
    rows = [(c["name"] + ("  <- best" if c["cer"] is not None and c["cer"] == best else ""),
             _pct(c["cer"], "- (not scored)"), c["data"]) for c in checkpoints]
    return table_html(["checkpoint", f"dev CER ({NORMALISER_NAME})", "data"], rows)


def _cell(parameters: dict[str, Any], name: str) -> str:
    """A parameter as a leaderboard cell: blank where the run has no such parameter, JSON for the rest."""
    if name not in parameters:
        return ""
    return json.dumps(parameters[name], ensure_ascii=False, default=str)


def leaderboard_table(board: Any, links_from: str | Path | None = None, max_rows: int = 200) -> Html:
    """The leaderboard: CER, the parameters that differ between runs, RTF, links to the HTML reports: relative to
    ``links_from`` (the folder this table's own report goes to), so they still work in a copied outputs folder;
    without it, file URLs. The best ``max_rows`` rows; how many more there are is said."""
    if not board.rows:
        return Html("<p>No runs in the index yet (asr-workbench run ... appends to outputs/runs.jsonl).</p>")
    base = paths.resolve(links_from) if links_from else None
    rows = []
    mixed = len(board.normalisers) > 1
    for r in board.rows[:max_rows]:
        href = (quote(os.path.relpath(r["html"], base)) if base else Path(r["html"]).as_uri()) if r.get("html") else None
        link = f"<a href='{html.escape(href)}'>report</a>" if href else "-"
        rows.append((html.escape(r["name"]), html.escape(r["notebook"]), html.escape(r["data"]),
                     _pct(r.get("cer"), "-"),
                     *([html.escape(r.get("normaliser") or "-")] if mixed else []),
                     *[html.escape(_cell(r["parameters"], p)) for p in board.params],
                     r.get("rtf") or "-", html.escape(r["status"]), html.escape(str(r.get("started") or "-")), link))
    cols = list(range(len(rows[0])))
    cer = "CER" if mixed or not board.normalisers else f"CER ({board.normalisers[0]})"
    table = table_html(["run", "notebook", "data", cer, *(["normaliser"] if mixed else []), *board.params, "RTF",
                        "status", "started", "report"], rows, raw_cols=cols)
    notes = "".join(f"<p style='color:#c00'>Note: {html.escape(n)}</p>" for n in board.notes)
    more = len(board.rows) - len(rows)
    tail = (f"<p>... {more} more row(s), worse or failed: all of them with <code>asr-workbench leaderboard</code>, or "
            "narrowed with notebook_filter / data_filter</p>" if more > 0 else "")
    return Html(notes + str(table) + tail)
