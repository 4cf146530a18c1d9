"""Run notebooks headlessly with papermill into run folders, with an HTML copy beside them.

A params file ``params/<suite>/<notebook>.yaml`` names its notebook
(``notebooks/<notebook>.ipynb``) and holds only that notebook's parameters;
every key must be a parameter of the notebook (papermill itself only warns).
Each run goes to ``output_dir`` (from the params, or ``outputs/<suite>-<notebook>-<time>``)
and leaves the executed notebook, ``report.html`` and ``command.txt``.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import paths
from asr_workbench.fileio import atomic_write_text

__all__ = ["RunRecord", "notebook_for", "notebook_parameters", "load_params", "check_params", "export_html",
           "run_notebook"]

# what the HTML copy may show, richest first: no widget views (they need live widget state),
# so the static text/html fallback of the utterance browser is shown instead
HTML_PRIORITY = ["application/javascript", "text/html", "text/markdown", "image/svg+xml", "text/latex",
                 "image/png", "image/jpeg", "text/plain"]


@dataclass
class RunRecord:
    """One executed notebook."""

    name: str
    notebook: Path
    output_dir: Path
    executed: Path
    html: Path | None
    status: str  # "ok" | "failed"
    error: str | None
    seconds: float
    started: float = 0.0  # time.time() when the run began


def notebook_for(params_file: Path) -> Path:
    """``params/<suite>/<name>.yaml`` -> ``notebooks/<name>.ipynb``."""
    nb = paths.repo_root() / "notebooks" / f"{params_file.stem}.ipynb"
    if not nb.is_file():
        raise FileNotFoundError(f"{params_file}: no notebook {nb} for this params file (its name names the notebook)")
    return nb


def notebook_parameters(notebook: Path) -> dict[str, dict[str, Any]]:
    """The notebook's ``parameters`` cell as papermill reads it: name -> {default, inferred_type_name, help}."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def load_params(params_file: Path) -> dict[str, Any]:
    """A params YAML (safe_load); an empty file is no parameters."""
    with open(params_file, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{params_file}: expected a mapping of parameter: value, got {type(data).__name__}")
    return data


def check_params(notebook: Path, params: dict[str, Any], source: str) -> None:
    """Fail when a key is not a parameter of the notebook (papermill would only warn)."""
    known = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{source}: {', '.join(unknown)} not parameter(s) of {notebook.name} "
                         f"(known: {', '.join(sorted(known))})")


def export_html(executed: Path, html_path: Path, hide_code: bool = False) -> Path:
    """An HTML copy of an executed notebook (``hide_code``: outputs only, for sharing)."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    cfg = Config()
    cfg.NbConvertBase.display_data_priority = HTML_PRIORITY
    exporter = HTMLExporter(config=cfg, exclude_input=hide_code, exclude_input_prompt=hide_code,
                            exclude_output_prompt=hide_code)
    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:  # a widget with no static fallback (a progress bar) means nothing in a static page
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (
                "application/vnd.jupyter.widget-view+json" in o.get("data", {}) and "text/html" not in o.get("data", {}))]
    body, _ = exporter.from_notebook_node(nb)
    atomic_write_text(html_path, body)
    return html_path


def _default_output_dir(params_file: Path, notebook: Path) -> Path:
    suite = params_file.parent.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = paths.repo_root() / "outputs" / f"{suite}-{notebook.stem}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def run_notebook(params_file: str | Path, overrides: dict[str, Any] | None = None, hide_code: bool = False,
                 notebook: str | Path | None = None, progress: bool = True) -> RunRecord:
    """Execute the notebook a params file names into its run folder; never raises for a failing cell.

    Returns a :class:`RunRecord` whose ``status`` is ``failed`` (with the cell's error) when a cell raised.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params_file = paths.resolve(params_file)
    nb = paths.resolve(notebook) if notebook else notebook_for(params_file)
    params = {**load_params(params_file), **(overrides or {})}
    check_params(nb, params, str(params_file))
    out = paths.resolve(params["output_dir"]) if params.get("output_dir") else _default_output_dir(params_file, nb)
    out.mkdir(parents=True, exist_ok=True)
    params["output_dir"] = str(out)
    executed = out / nb.name
    root = paths.repo_root()
    shown = params_file.relative_to(root) if params_file.is_relative_to(root) else params_file
    cmd = ["asr-workbench", "run", str(shown)]
    for k, v in (overrides or {}).items():
        cmd += ["-p", f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix(chr(10) + '...')}"]
    atomic_write_text(out / "command.txt", shlex.join(cmd) + "\n"
                      f"# same run with papermill (from {root}):\n# papermill {shlex.quote(str(nb))} "
                      f"{shlex.quote(str(executed))} -f {shlex.quote(str(params_file))} -p output_dir {shlex.quote(str(out))}\n")
    t0 = time.time()
    status, error = "ok", None
    try:
        papermill.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(paths.repo_root()),
                                   progress_bar=progress, kernel_name="python3")
    except PapermillExecutionError as e:
        status, error = "failed", f"cell {e.exec_count}: {e.ename}: {e.evalue}"
    html = export_html(executed, out / "report.html", hide_code) if executed.is_file() else None
    return RunRecord(f"{params_file.parent.name}/{params_file.stem}", nb, out, executed, html, status, error,
                     round(time.time() - t0, 1), t0)
