"""An ipywidgets browser of a run's utterances (audio player + coloured diff).

Displayed in JupyterLab it is interactive; in a headless run or an HTML copy
(no widget state) the same output carries a static table as its ``text/html``
fallback, which the workbench's HTML export shows instead.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from asr_workbench.report.tables import diff_html, no_maths, table_html
from asr_workbench.scoring import NORMALISER_NAME

__all__ = ["Browser", "browser"]


class Browser:
    """Pick an utterance (worst first) -> its audio, reference, hypothesis and diff."""

    def __init__(self, results: Sequence[dict[str, Any]], static_rows: int = 50) -> None:
        # worst first: most errors, then highest CER; correct ones, then unscored ones, in input order
        self.results = sorted(results, key=lambda r: (not r.get("scored"), -r.get("errors", 0), -r.get("cer", 0)))
        self.static_rows = static_rows

    def static_html(self) -> str:
        rows = [(r["key"], f"{r['cer'] * 100:.1f} %" if r.get("scored") else "-", f"{r['duration_s']:.1f} s",
                 diff_html(r["ref_norm"], r["hyp_norm"]) if r.get("scored") else html.escape(r["hyp"]))
                for r in self.results[: self.static_rows]]
        more = len(self.results) - len(rows)
        head = (f"<p>The {len(rows)} of {len(self.results)} utterances with the most errors; all are in "
                "results.jsonl.</p>" if more > 0 else "")
        return no_maths(head + table_html(["key", f"CER ({NORMALISER_NAME})", "duration", "hypothesis vs reference"],
                                          rows, raw_cols=(3,)))

    def widget(self) -> Any:
        import ipywidgets as w

        from asr_workbench.audio import PLAYER_SECONDS, playable

        labels = [(f"{r['key']}  ({r['cer'] * 100:.0f}%)" if r.get("scored") else r["key"], i)
                  for i, r in enumerate(self.results)]
        pick = w.Dropdown(options=labels, description="utterance", layout=w.Layout(width="60%"))
        player = w.Audio(autoplay=False, format="flac")
        text = w.HTML()

        def show(change: Any = None) -> None:
            r = self.results[pick.value]
            # the first utterance's audio is saved with the notebook: clipped; one picked by hand plays whole
            clip = playable(r["audio"], max_seconds=None if change is not None else PLAYER_SECONDS)
            player.value = clip.data
            ref = html.escape(r.get("ref") or "(no reference)")
            diff = diff_html(r["ref_norm"], r["hyp_norm"]) if r.get("scored") else ""
            text.value = no_maths(f"<b>ref</b>: {ref}<br><b>hyp</b>: {html.escape(r['hyp'])}<br>{diff}"
                                  + (f"<br>CER {r['cer'] * 100:.1f} % ({r['errors']}/{r['ref_tokens']})"
                                     if r.get("scored") else "")
                                  + (f"<br>(the player holds the first {clip.clipped_to:.0f} s of {clip.seconds:.0f} s)"
                                     if clip.clipped_to else ""))

        pick.observe(show, names="value")
        if self.results:
            show()
        return w.VBox([pick, player, text])

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/html": self.static_html(), "text/plain": f"<Browser of {len(self.results)} utterances>"}
        if self.results:
            try:
                data = self.widget()._repr_mimebundle_()
                bundle.update({k: v for k, v in data.items() if k != "text/plain"})
            except Exception:  # no kernel/comm (plain Python): the static table is the display
                pass
        return bundle


def browser(results: Sequence[dict[str, Any]]) -> Browser:
    """The utterance browser of a run's ``results`` rows."""
    return Browser(results)
