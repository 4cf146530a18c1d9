"""A leaderboard of runs, read from the run index (``outputs/runs.jsonl``), never from whatever folders exist."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr_workbench.runs import read_index

__all__ = ["Leaderboard", "load", "varying_parameters"]

_IGNORED = {"output_dir"}


def varying_parameters(entries: list[dict[str, Any]]) -> list[str]:
    """Parameter names whose values differ between the runs that have them (the interesting columns: a parameter
    of one notebook only, the same in all its runs, is no column on a board of every notebook)."""
    keys = sorted({k for e in entries for k in e.get("parameters", {})} - _IGNORED)
    return [k for k in keys if len({json.dumps(e["parameters"][k], sort_keys=True, default=str)
                                    for e in entries if k in e.get("parameters", {})}) > 1]


@dataclass
class Leaderboard:
    """One row per run and data set, each data set's runs together, best CER first; failed runs at the end."""

    rows: list[dict[str, Any]]
    params: list[str] = field(default_factory=list)

    @property
    def normalisers(self) -> list[str]:
        """The text normalisers behind the CERs shown (more than one: those CERs are not comparable)."""
        return sorted({r["normaliser"] for r in self.rows if r.get("cer") is not None and r.get("normaliser")})

    @property
    def notes(self) -> list[str]:
        n = self.normalisers
        return [f"these CERs were computed after {len(n)} different text normalisers ({', '.join(n)}): compare runs "
                "of the same normaliser only (the normaliser column), or re-run the older ones"] if len(n) > 1 else []

    def text(self) -> str:
        mixed = len(self.normalisers) > 1
        cer = "CER" if mixed or not self.normalisers else f"CER({self.normalisers[0]})"
        head = ["run", "notebook", "data", cer, *(["normaliser"] if mixed else []), "RTF", "status", "started",
                *self.params]
        lines = [f"note: {n}" for n in self.notes] + ["  ".join(head)]
        for r in self.rows:
            cer = f"{r['cer'] * 100:.2f}%" if r.get("cer") is not None else "-"
            lines.append("  ".join([r["name"], r["notebook"], r["data"], cer,
                                    *([r.get("normaliser") or "-"] if mixed else []), str(r.get("rtf") or "-"),
                                    r["status"], str(r.get("started") or "-"),
                                    *[json.dumps(r["parameters"].get(p), ensure_ascii=False, default=str) for p in self.params]]))
        return "\n".join(lines)


def _set_names(entries: list[dict[str, Any]]) -> dict[str, str]:
    """A name for each data folder of the runs: its last two parts (target/test), more where two folders would
    share them (corpusA/data/test, corpusB/data/test are two data sets, not one)."""
    folders = sorted({f for e in entries for f in (e.get("per_set_data") or {}).values() if f})
    names: dict[str, str] = {}
    for f in folders:
        parts = Path(f).parts
        for n in range(min(2, len(parts)), len(parts) + 1):
            name = "/".join(parts[-n:]).lstrip("/") or f
            if all(o == f or not (o == name or o.endswith("/" + name)) for o in folders):
                break
        names[f] = name
    return names


def load(index: str | None = None, notebook: str | None = None, data: str | None = None) -> Leaderboard:
    """The runs of ``index`` (default ``outputs/runs.jsonl``), filtered by notebook and data set name."""
    # a leaderboard's own runs score nothing: listed only when asked for
    entries = [e for e in read_index(index) if e.get("notebook") == notebook
               or (not notebook and e.get("notebook") != "compare_runs")]
    rows = []
    shown = _set_names(entries)
    for e in entries:
        sets = e.get("per_set_cer") or {"-": None}
        for name, cer in sets.items():
            folder = (e.get("per_set_data") or {}).get(name)
            name = shown.get(folder, name)
            if data and data not in (name, *name.split("/"), folder):  # "test" matches target/test and base/test
                continue
            rows.append({"name": e["name"], "notebook": e.get("notebook", ""), "data": name, "data_dir": folder,
                         "cer": cer,
                         "rtf": e.get("rtf"), "status": e.get("status", ""), "html": e.get("html"),
                         "normaliser": str(e.get("normaliser") or "").split(":")[0] or None,
                         "output_dir": e.get("output_dir"), "started": e.get("started"),
                         "parameters": e.get("parameters", {})})
    # one data set's runs together (a CER on another set is no rank), best first within it; failed runs at the end
    best = {}
    for r in rows:
        if r["status"] == "ok" and r["cer"] is not None:
            best[r["data"]] = min(r["cer"], best.get(r["data"], r["cer"]))
    rows.sort(key=lambda r: (r["status"] != "ok", r["data"] not in best, best.get(r["data"], 0), r["data"],
                             r["cer"] is None, r["cer"] if r["cer"] is not None else 0))
    return Leaderboard(rows, varying_parameters(entries))
