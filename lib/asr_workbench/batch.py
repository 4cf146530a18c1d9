"""Run notebooks headlessly with papermill: single params files, pipelines and sweeps, with a run index.

- A params file ``params/<suite>/<notebook>.yaml`` names its notebook (``notebooks/<notebook>.ipynb``) and holds
  only that notebook's parameters; every key must be a parameter of the notebook (papermill itself only warns).
- A pipeline ``*.pipeline.yaml`` lists ``steps`` (``name``, ``params`` file and/or ``notebook``, ``with``
  overrides) run in order; ``${step.key}`` in a value is an earlier step's resolved parameter
  (``${finetune.output_dir}``). A failed step skips the steps after it.
- A sweep ``*.sweep.yaml`` has a ``base`` params file, a ``grid`` of list-valued keys (their product is
  run, each point under a readable name such as ``lr=0.0005_max_epoch=2``) and optional ``with`` values.

Each run goes to ``output_dir`` (fixed by the params, else ``outputs/<name>-<time>``) and leaves the executed
notebook (papermill records the parameters in its metadata), ``report.html`` and ``command.txt``; a line per
finished run is appended to ``outputs/runs.jsonl`` (under a file lock: runs may finish in parallel).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import paths, runs
from asr_workbench.fileio import atomic_write_text, load_yaml_strict, yaml_number

__all__ = ["RunSpec", "RunRecord", "notebook_for", "notebook_parameters", "load_params", "check_params", "remove_if_empty",
           "export_html", "expand", "load_pipeline", "load_sweep", "execute", "run_all", "run_notebook",
           "append_index"]

_REF = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_]+)\}")
_PIPELINE_KEYS, _STEP_KEYS, _SWEEP_KEYS = {"description", "steps"}, {"name", "params", "notebook", "with"}, \
    {"description", "base", "notebook", "grid", "with"}

# what the HTML copy may show, richest first: no widget views (they need live widget state),
# so the static text/html fallback of the utterance browser is shown instead
HTML_PRIORITY = ["application/javascript", "text/html", "text/markdown", "image/svg+xml", "text/latex",
                 "image/png", "image/jpeg", "text/plain"]


@dataclass
class RunSpec:
    """One notebook run, fully resolved before anything executes (what ``--dry-run`` prints)."""

    name: str  # "demo/infer", "demo.pipeline/finetune", "lr.sweep/lr=0.0005"
    notebook: Path
    params: dict[str, Any]  # output_dir included
    source: str  # the file it came from
    group: str  # runs of one group (a pipeline) execute in order; groups are independent
    command: str = ""
    after: list[str] = field(default_factory=list)  # runs of other groups whose output_dir this one reads


@dataclass
class RunRecord:
    """One executed (or skipped) notebook."""

    name: str
    notebook: Path
    output_dir: Path
    executed: Path
    html: Path | None
    status: str  # "ok" | "failed" | "skipped"
    error: str | None
    seconds: float
    started: float = 0.0  # time.time() when the run began
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


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
    """A params YAML (safe_load, a key given twice refused); an empty file is no parameters."""
    try:
        data = load_yaml_strict(Path(params_file).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{params_file}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:  # its message carries the line and column
        raise ValueError(f"{params_file}: not valid YAML: {' '.join(str(e).split())}") from e
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
    """An HTML copy of an executed notebook (``hide_code``: outputs only, for sharing) that loads nothing from the
    network (JupyterLab's page without its CDN scripts: nothing in a report needs them)."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    cfg = Config()
    cfg.NbConvertBase.display_data_priority = HTML_PRIORITY
    exporter = HTMLExporter(config=cfg, exclude_input=hide_code, exclude_input_prompt=hide_code,
                            exclude_output_prompt=hide_code, template_name="lab", template_file="offline.html.j2",
                            extra_template_paths=[str(Path(__file__).parent / "report" / "templates")])
    nb = nbformat.read(str(executed), as_version=4)
    nb.metadata.pop("widgets", None)  # the state of widgets a static page cannot show (their views are dropped below)
    for cell in nb.cells:  # a widget with no static fallback (a progress bar) means nothing in a static page
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (
                "application/vnd.jupyter.widget-view+json" in o.get("data", {}) and "text/html" not in o.get("data", {}))]
    body, _ = exporter.from_notebook_node(nb)
    atomic_write_text(html_path, body)
    return html_path


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


_MAX_NAME = 100  # characters of a run folder's name (file systems take 255 bytes; the time stamp follows)


def _safe_name(name: str) -> str:
    """A folder name from a run or sweep-point name: letters, digits and ``_.=+-`` only; a long one (a sweep over
    many keys) cut, with a hash of the whole name so that two long names stay two folders."""
    safe = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", name).strip("-.") or "run"
    if len(safe) <= _MAX_NAME:
        return safe
    return f"{safe[:_MAX_NAME - 9].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass
class _Expansion:
    """What the runs of one ``expand`` share: the time stamp of fresh run folders, the folders given out so far,
    whether to reserve them on disk (not for a dry run), and the ``-p`` arguments for the commands they record."""

    stamp: str
    reserve: bool = False
    args: list[str] = field(default_factory=list)
    taken: set[Path] = field(default_factory=set)
    created: list[Path] = field(default_factory=list)  # reserved here: removed again if the expansion fails

    def command(self, path: Path) -> str:
        shown = path.relative_to(paths.repo_root()) if path.is_relative_to(paths.repo_root()) else path
        return shlex.join(["asr-workbench", "run", str(shown), *self.args])


def _fresh_dir(name: str, ex: _Expansion) -> Path:
    """``outputs/<name>-<stamp>`` (``-2``, ``-3``... when taken). Reserved by creating it: two commands started in
    the same second would otherwise both pick the same folder and mix their files."""
    base = paths.outputs_root() / f"{_safe_name(name)}-{ex.stamp}"
    out, n = base, 1
    while out in ex.taken or not _claim(out, ex.reserve):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    ex.taken.add(out)
    if ex.reserve:
        ex.created.append(out)
    return out


def _claim(folder: Path, reserve: bool) -> bool:
    """Whether ``folder`` is free: created now when ``reserve`` (atomic: one command wins), else not there."""
    if not reserve:
        return not folder.exists()
    try:
        folder.mkdir(parents=True)
        return True
    except FileExistsError:
        return False


def _with_overrides(notebook: Path, params: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """``params`` with the command line's ``-p`` values that are parameters of ``notebook``, typed (a value of the
    wrong type is blamed on -p, not on the params file)."""
    known = notebook_parameters(notebook)
    return {**params, **_typed(notebook, {k: v for k, v in overrides.items() if k in known}, "-p")}


def _resolve_refs(value: Any, done: dict[str, dict[str, Any]], where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            step, key = m.group(1), m.group(2)
            if step not in done:
                raise ValueError(f"{where}: ${{{step}.{key}}} names no earlier step")
            if key not in done[step]:
                raise ValueError(f"{where}: step {step!r} has no parameter {key!r}")
            if done[step][key] is None:  # it became the text "None" inside a path
                raise ValueError(f"{where}: ${{{step}.{key}}} is null, so it cannot be part of the text {value!r}")
            return str(done[step][key])

        whole = _REF.fullmatch(value)
        if whole and whole.group(1) in done and whole.group(2) in done[whole.group(1)]:
            return done[whole.group(1)][whole.group(2)]  # keep the type (a dict, a number)
        text = _REF.sub(sub, value)
        left = re.search(r"\$\{[^}]*\}", text)
        if left:  # ${ step.key } with spaces, a key with a dash: run as literal text, it would name a wrong folder
            raise ValueError(f"{where}: {left.group(0)} is not a reference; write ${{step.parameter}} (no spaces; "
                             "a parameter name as the notebook has it)")
        return text
    if isinstance(value, dict):
        return {k: _resolve_refs(v, done, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, done, where) for v in value]
    return value


_NULLS = ("null", "~", "None", "")


# text parameters that take a list too (devices: [0, 1]; freeze_param: [encoder, predictor]): papermill drops a
# parameter annotated ``str | list`` from the notebook's parameters, so the annotation cannot say it
_TEXT_OR_LIST = {"devices", "freeze_param"}


def _typed(notebook: Path, params: dict[str, Any], source: str) -> dict[str, Any]:
    """Each value as its parameter's annotated type reads it. Text (every scalar ``-p`` value, and YAML 1.1's
    ``1e-4``) is read per type: a number for int and float (``1e3`` is 1000 for an int), YAML for bool, dict and
    untyped parameters, itself for str (YAML would read ``0755`` as 493 and ``yes`` as true), a list of one for a
    list (``-p required_files=am.mvn``); ``null`` is None. A value that is not of its type fails, naming the key."""
    import yaml

    known = notebook_parameters(notebook)
    out = dict(params)

    def bad(k: str, kind: str, v: Any) -> ValueError:
        return ValueError(f"{source}: {k} is a{'n' if kind == 'int' else ''} {kind} parameter of {notebook.name}, "
                          f"got {v!r}")

    for k, v in params.items():
        kind = str((known.get(k) or {}).get("inferred_type_name") or "")
        if v is None or (isinstance(v, str) and v.strip() in (_NULLS[:3] if kind == "str" else _NULLS)):
            if (known.get(k) or {}).get("default", "None") != "None" and k != "output_dir":  # null: a fresh folder
                raise ValueError(f"{source}: {k} cannot be null: {notebook.name} needs a value "
                                 f"(its default is {known[k]['default']})")
            out[k] = None
        elif kind in ("int", "float"):
            number = yaml_number(v.strip()) if isinstance(v, str) else v
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise bad(k, kind, v)
            if kind == "int" and isinstance(number, float):
                if not number.is_integer():
                    raise bad(k, kind, v)
                number = int(number)
            out[k] = float(number) if kind == "float" else number
        elif kind == "str" and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = str(v)  # a name that YAML read as a number (model: 123)
        elif kind == "bool" and not isinstance(v, (bool, str)):
            raise bad(k, kind, v)
        elif not isinstance(v, str):
            expected = {"str": (str, list) if k in _TEXT_OR_LIST else str, "list": list, "dict": dict}.get(kind)
            if expected is not None and not isinstance(v, expected):
                raise ValueError(f"{source}: {k} is a {kind} parameter of {notebook.name}, got {v!r}" + (
                    " (YAML reads yes/no/on/off as true/false: quote the word)" if isinstance(v, bool) else ""))
            continue
        elif kind == "list":
            out[k] = [v]
        elif kind == "str":
            out[k] = v
        else:  # bool, dict, untyped: as YAML reads it
            value = yaml.safe_load(v)
            if (kind == "bool" and not isinstance(value, bool)) or (kind == "dict" and not isinstance(value, dict)):
                raise bad(k, kind, v)
            out[k] = value
    return out


def _leftover_ref(value: Any) -> str | None:
    """The first ``${step.key}`` in ``value`` (text, or inside lists and mappings, keys too), or None."""
    if isinstance(value, str):
        m = _REF.search(value)
        return m.group(0) if m else None
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return next((left for left in map(_leftover_ref, items) if left), None)


def _finish(spec_name: str, notebook: Path, params: dict[str, Any], source: str, group: str, ex: _Expansion,
            cmd: str) -> RunSpec:
    check_params(notebook, params, source)
    for key, value in params.items():  # one left here was never resolved: it would run as literal text
        left = _leftover_ref(value)
        if left:
            raise ValueError(f"{source}: {key}: {left} is resolved only in a pipeline step (its params file "
                             "or 'with'), not in a plain params file, a sweep or -p")
    params = _typed(notebook, params, source)
    out = params.get("output_dir")
    params["output_dir"] = str(paths.resolve(out) if out else _fresh_dir(spec_name.replace("/", "-"), ex))
    return RunSpec(spec_name, notebook, params, source, group, cmd)


def load_pipeline(path: Path, overrides: dict[str, Any], ex: _Expansion) -> list[RunSpec]:
    """The steps of a ``*.pipeline.yaml`` with ``${step.key}`` references resolved."""
    data = load_params(path)
    bad = set(data) - _PIPELINE_KEYS
    if bad or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: a pipeline has 'steps' (a non-empty list) and optional 'description'"
                         + (f"; unknown key(s) {', '.join(sorted(bad))}" if bad else ""))
    label = path.name.removesuffix(".yaml")
    done: dict[str, dict[str, Any]] = {}
    specs = []
    for i, step in enumerate(data["steps"], 1):
        where = f"{path}: step {i}"
        if not isinstance(step, dict) or set(step) - _STEP_KEYS or "name" not in step or not _shaped(step):
            raise ValueError(f"{where}: a step has 'name' and 'params' (a file) and/or 'notebook' (a name), optional "
                             f"'with' (key: value) (got {step!r})")
        name = str(step["name"])
        if name in done:
            raise ValueError(f"{where}: duplicate step name {name!r}")
        base: dict[str, Any] = {}
        if step.get("params"):
            pfile = paths.resolve(step["params"])
            if not pfile.is_file():
                raise FileNotFoundError(f"{where}: step {name!r}: params {step['params']}: no such file ({pfile})")
            base = load_params(pfile)
            nb = paths.resolve(f"notebooks/{step['notebook']}.ipynb") if step.get("notebook") else notebook_for(pfile)
        elif step.get("notebook"):
            nb = paths.resolve(f"notebooks/{step['notebook']}.ipynb")
        else:
            raise ValueError(f"{where}: give 'params' (a params file) or 'notebook'")
        if not nb.is_file():
            raise ValueError(f"{where}: no notebook {nb}")
        params = _resolve_refs({**base, **(step.get("with") or {})}, done, where)  # its params file's refs too
        params = _with_overrides(nb, params, overrides, where)
        spec = _finish(f"{label}/{name}", nb, params, where, str(path), ex, ex.command(path))
        done[name] = {**_defaults(nb), **spec.params}  # a later step may name a parameter left at its default
        specs.append(spec)
    return specs


def _defaults(notebook: Path) -> dict[str, Any]:
    """The notebook's parameters at their defaults (literals: the parameters cell holds nothing else)."""
    import ast

    out = {}
    for name, p in notebook_parameters(notebook).items():
        try:
            out[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            pass
    return out


def _point_name(point: dict[str, Any]) -> str:
    return "_".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in point.items())


def _shaped(entry: dict[str, Any]) -> bool:
    """Whether a pipeline step's or a sweep's files and notebook are names and its ``with`` a mapping."""
    return (all(isinstance(entry.get(k), (str, type(None))) for k in ("params", "base", "notebook"))
            and isinstance(entry.get("with"), (dict, type(None))))


def load_sweep(path: Path, overrides: dict[str, Any], ex: _Expansion) -> list[RunSpec]:
    """One run per point of the grid of a ``*.sweep.yaml``."""
    data = load_params(path)
    bad = set(data) - _SWEEP_KEYS
    grid = data.get("grid")
    if bad or "base" not in data or not isinstance(grid, dict) or not grid or not _shaped(data) or not all(
            isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{path}: a sweep has 'base' (a params file) and 'grid' (key: non-empty list), optional "
                         "'notebook' and 'with'" + (f"; unknown key(s) {', '.join(sorted(bad))}" if bad else ""))
    pfile = paths.resolve(data["base"])
    if not pfile.is_file():
        raise FileNotFoundError(f"{path}: base {data['base']}: no such params file ({pfile})")
    nb = paths.resolve(f"notebooks/{data['notebook']}.ipynb") if data.get("notebook") else notebook_for(pfile)
    base = {**load_params(pfile), **(data.get("with") or {})}
    label = path.name.removesuffix(".yaml")
    clash = sorted(set(grid) & set(overrides))
    if clash:
        raise ValueError(f"{path}: -p {', '.join(clash)} would replace the swept values; change the grid instead")
    specs = []
    keys = list(grid)
    folders: set[str] = set()
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        params = _with_overrides(nb, {**base, **point}, overrides, str(path))
        name = _point_name(point)
        root = params.get("output_dir")  # the params file's, or -p output_dir
        if isinstance(root, str) and root.strip() in _NULLS:  # -p output_dir=null: fresh folders, as in a file
            root = params["output_dir"] = None
        if root:  # a fixed folder: one sub-folder per point, named safely (two points whose names differ only in
            # characters a folder name cannot keep, data_dir=a/b and data_dir=a_b, get a hash of the whole name)
            folder = _safe_name(name)
            if folder in folders:
                folder = f"{folder[:_MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            folders.add(folder)
            params["output_dir"] = str(Path(str(root)) / folder)
        specs.append(_finish(f"{label}/{name}", nb, params, str(path), f"{path}#{name}", ex, ex.command(path)))
    return specs


def expand(targets: Sequence[str | Path], overrides: dict[str, Any] | None = None,
           reserve: bool = False) -> list[RunSpec]:
    """Params files, pipelines, sweeps, or folders of them -> the runs to execute, in order.

    ``reserve``: create the fresh run folders now (for runs about to execute; not for a dry run)."""
    overrides = overrides or {}
    ex = _Expansion(_stamp(), reserve, _override_args(overrides))
    try:
        return _expand(targets, overrides, ex)
    except BaseException:  # a typo in -p, a bad reference: no empty run folders left behind
        for folder in ex.created:
            remove_if_empty(folder)
        raise


def _override_args(overrides: dict[str, Any]) -> list[str]:
    return [x for k, v in overrides.items() for x in ("-p", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]


def remove_if_empty(folder: Path) -> None:
    """Remove a reserved run folder that no run wrote into."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _expand(targets: Sequence[str | Path], overrides: dict[str, Any], ex: _Expansion) -> list[RunSpec]:
    files: list[Path] = []
    for t in targets:
        here = Path(t).expanduser().absolute()  # a command-line path is relative to the working directory first
        p = here if here.exists() else paths.resolve(t)
        if p.is_dir():
            found = sorted(p.glob("*.yaml"))
            if not found:  # ran nothing and exited 0
                subs = sorted(d.name for d in p.iterdir() if d.is_dir() and any(d.glob("*.yaml")))
                other = sorted(f.name for f in p.glob("*.yml"))
                raise ValueError(f"{t}: no *.yaml params, pipeline or sweep files in this folder"
                                 + (f"; its sub-folders {', '.join(subs)} have some: name one" if subs else "")
                                 + (f"; {', '.join(other)}: name them *.yaml" if other else ""))
            files += found
        elif p.is_file() and p.suffix == ".ipynb":  # a notebook is what a params file names, not a params file
            raise ValueError(f"{t}: a notebook; run takes params files (params/<suite>/{p.stem}.yaml, which runs "
                             f"notebooks/{p.name}), pipelines or sweeps; for the notebook alone: papermill {t} OUT.ipynb "
                             "-p key value")
        elif p.is_file():
            files.append(p)
        else:
            tried = [str(here)] + ([str(p)] if p != here else [])
            raise FileNotFoundError(f"{t}: no such params file or folder (looked for {' and '.join(tried)})")
    specs: list[RunSpec] = []
    for f in files:
        if f.name.endswith(".pipeline.yaml"):
            specs += load_pipeline(f, overrides, ex)
        elif f.name.endswith(".sweep.yaml"):
            specs += load_sweep(f, overrides, ex)
        else:
            nb = notebook_for(f)
            params = _with_overrides(nb, load_params(f), overrides, str(f))
            specs.append(_finish(f"{f.parent.name}/{f.stem}", nb, params, str(f), str(f), ex, ex.command(f)))
    unused = sorted(k for k in overrides if not any(k in notebook_parameters(s.notebook) for s in specs))
    if unused:
        raise ValueError(f"-p {', '.join(unused)}: not a parameter of any notebook in these runs")
    seen: dict[Path, str] = {}
    for s in specs:  # the real folders: x/../same and a symlink are the same folder
        real = Path(os.path.realpath(s.params["output_dir"]))
        if real in seen:
            if "output_dir" in overrides:
                raise ValueError(f"-p output_dir would send {seen[real]} and {s.name} to one folder; set it per "
                                 "params file (a sweep puts each point in a sub-folder of it)")
            raise ValueError(f"runs {seen[real]} and {s.name} would both write to {real}; give them different "
                             "output_dir values")
        seen[real] = s.name
    return _with_dependencies(specs)


# parameters that read what another run may write: a fine-tune's folder, a model, data
_INPUT_KEYS = ("finetune_dir", "model", "modelscope_model_name", "data_dir", "data_path")


def _with_dependencies(specs: list[RunSpec]) -> list[RunSpec]:
    """Note in ``after`` which runs of other groups each run reads the ``output_dir`` of (an evaluation of a
    fine-tune listed beside it in a folder of params files): :func:`run_all` starts its group once theirs have
    finished, and skips the run when one of them failed. Groups stay as they are (a failure elsewhere in the
    producer's pipeline does not skip an unrelated run)."""
    outs = [(Path(os.path.realpath(s.params["output_dir"])), s) for s in specs]
    for s in specs:
        for key in _INPUT_KEYS:
            value = s.params.get(key)
            if not isinstance(value, str) or not value:
                continue
            real = Path(os.path.realpath(paths.resolve(value)))
            s.after += [p.name for out, p in outs if p.group != s.group and p.name not in s.after
                        and (real == out or out in real.parents)]
    return specs


def _metrics(out: Path) -> dict[str, Any]:
    m = out / "metrics.json"
    try:
        return json.loads(m.read_text(encoding="utf-8")) if m.is_file() else {}
    except json.JSONDecodeError:
        return {}


# the kind of run each notebook's library call marks its folder with (runs.prepare_output_dir)
_RUN_KINDS = {"infer": "infer", "finetune": "finetune", "infer_after_finetune": "evaluate", "compare_runs": "leaderboard"}


def execute(spec: RunSpec, hide_code: bool = False, progress: bool = True) -> RunRecord:
    """Run one spec with papermill; a failing cell gives a ``failed`` record, never an exception (an interrupt
    goes on once the attempt's files are named)."""
    out = Path(spec.params["output_dir"])
    executed = out / spec.notebook.name
    t0 = time.time()
    try:  # a folder the notebook would refuse (a model, another kind of run's) gets nothing written, not even here
        # the folders the notebook itself protects: its model, a fine-tune's model/ and train/
        model, ft = (spec.params.get(k) for k in ("model", "finetune_dir"))
        protect = [paths.resolve(model)] if isinstance(model, str) and model else []
        protect += [paths.resolve(ft) / sub for sub in ("model", "train")] if isinstance(ft, str) and ft else []
        runs.check_output_dir(out, _RUN_KINDS.get(spec.notebook.stem), [p for p in protect if p.is_dir()])
        lock = runs.lock_folder(out)
    except (OSError, ValueError) as e:
        return RunRecord(spec.name, spec.notebook, out, executed, None, "failed", f"{type(e).__name__}: {e}", 0.0, t0,
                         spec.params)
    try:
        return _execute_locked(spec, out, executed, t0, hide_code, progress)
    finally:
        lock.close()


def _execute_locked(spec: RunSpec, out: Path, executed: Path, t0: float, hide_code: bool, progress: bool) -> RunRecord:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    status, error = "ok", None
    # a folder holding a finished run (a fixed output_dir run again): this attempt writes beside it and takes the
    # usual names only if it succeeds; a failure stays <notebook>.failed.ipynb / report.failed.html /
    # command.failed.txt, so the earlier run's notebook and report still match its metrics.json and index line
    tag = ".attempt" if (out / "metrics.json").is_file() else ""
    before = _file_state(out / "metrics.json")
    attempt, command = out / f"{spec.notebook.stem}{tag}.ipynb", out / f"command{tag}.txt"
    interrupted: BaseException | None = None
    try:  # a run folder that cannot be made (a file of that name, no permission) fails this run, not the batch
        # marked here too: the leaderboard notebook writes nothing itself, and another kind of run must not take it
        runs.prepare_output_dir(out, _RUN_KINDS.get(spec.notebook.stem))
        # each value as papermill -y reads it, mappings in their order (evaluate's first test set is the headline)
        atomic_write_text(command, f"{spec.command}{' --hide-code' if hide_code else ''}\n"
                          f"# same notebook with papermill (from {paths.repo_root()}):\n"
                          f"# papermill {shlex.quote(str(spec.notebook))} {shlex.quote(str(executed))} "
                          + " ".join(f"-y {shlex.quote(yaml.safe_dump({k: v}, default_flow_style=True, sort_keys=False, allow_unicode=True).strip())}"
                                     for k, v in spec.params.items()) + "\n")
        # iopub_timeout: nbclient's 4 s for the last output of a cell failed runs whose report output was large;
        # the kernel inherits the name of the folder held for it (runs.hold_folder lets its library call write)
        with _environ({runs.HELD_FOR_KERNEL: str(out.resolve())}):
            papermill.execute_notebook(str(spec.notebook), str(attempt), parameters=spec.params,
                                       cwd=str(paths.repo_root()), progress_bar=progress, kernel_name="python3",
                                       iopub_timeout=120)
    except PapermillExecutionError as e:
        status, error = "failed", f"cell {e.exec_count}: {e.ename}: {e.evalue}"
    except Exception as e:  # the kernel died, a parameter could not be injected...
        status, error = "failed", f"{type(e).__name__}: {e}"
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the attempt's files are named below, then the interrupt goes on
        status, error, interrupted = "failed", "interrupted", e
    if status != "ok" and _RUN_KINDS.get(spec.notebook.stem) == "evaluate":
        from asr_workbench import evaluate  # a kernel that died mid-rerun put nothing back: the finished sets return

        evaluate.restore(out)
    # a failed attempt that already replaced the results (a later cell failed, an interrupt after decoding): the
    # earlier notebook and report no longer describe the folder's metrics.json, this attempt's do
    replaced = bool(tag) and _file_state(out / "metrics.json") != before
    final = "" if status == "ok" or not tag or replaced else ".failed"
    if status == "ok":  # an earlier failed attempt's files no longer describe this folder
        for stale in (f"{spec.notebook.stem}.failed.ipynb", "report.failed.html", "command.failed.txt"):
            (out / stale).unlink(missing_ok=True)
    if tag:
        executed = out / f"{spec.notebook.stem}{final}.ipynb"
        for src, dst in ((attempt, executed), (command, out / f"command{final}.txt")):
            if src.is_file():
                src.replace(dst)
    if interrupted is not None:
        if tag and final == "":  # the attempt replaced the results: the earlier run's report describes what is gone
            (out / "report.html").unlink(missing_ok=True)
        raise interrupted
    html = None
    try:
        html = export_html(executed, out / f"report{final}.html", hide_code) if executed.is_file() else None
    except Exception as e:  # a report that cannot be rendered must not stop the other runs
        error = (error + "; " if error else "") + f"HTML export failed: {type(e).__name__}: {e}"
    metrics = _metrics(out) if status == "ok" else {}
    return RunRecord(spec.name, spec.notebook, out, executed, html, status, error, round(time.time() - t0, 1), t0,
                     spec.params, metrics)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (a kernel started in it inherits them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _file_state(path: Path) -> tuple[int, int] | None:
    """A file's (mtime in ns, size), None when absent: whether a run replaced it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _index_entry(rec: RunRecord) -> dict[str, Any]:
    m = rec.metrics
    # each CER under its data folder's last two parts (target/test), whichever notebook measured it, so one data
    # set has one name on the leaderboard (an evaluation's set names are its own choice)
    short = lambda d: "/".join(Path(str(d)).parts[-2:])  # noqa: E731
    data = short(m["data_dir"]) if m.get("data_dir") else "dev"
    per_set = m.get("per_set_cer") or ({data: m["cer"]} if m.get("cer") is not None else {})
    folders = m.get("per_set_data_dir") or ({data: m["data_dir"]} if m.get("data_dir") else {})
    if folders and len({short(folders.get(k, k)) for k in per_set}) == len(per_set):
        per_set, folders = ({short(folders.get(k, k)): v for k, v in d.items()} for d in (per_set, folders))
    # which folder each set is, wherever it was reached from: two corpora's data/test are two data sets
    where = {k: os.path.realpath(folders[k]) for k in per_set if folders.get(k)}
    return {"name": rec.name, "status": rec.status, "notebook": rec.notebook.stem, "output_dir": str(rec.output_dir),
            "html": str(rec.html) if rec.html else None, "started": datetime.fromtimestamp(rec.started).isoformat(timespec="seconds"),
            "seconds": rec.seconds, "error": rec.error, "primary_cer": m.get("cer"), "per_set_cer": per_set,
            "per_set_data": where,
            "rtf": m.get("rtf"), "normaliser": m.get("normaliser"),
            # an evaluation also carries what its fine-tune trained with: test CER against finetune.lr
            "parameters": {**rec.params, **{f"finetune.{k}": v for k, v in (m.get("finetune_settings") or {}).items()}}}


def append_index(rec: RunRecord, index: Path | None = None) -> None:
    """Record a finished (or failed, or skipped) run in the run index."""
    runs.append_to_index(_index_entry(rec), index)


def _run_group(specs: list[RunSpec], hide_code: bool, progress: bool, env: dict[str, str],
               index: Path | None, devices: Any = None, failed: dict[str, str] | None = None) -> list[RunRecord]:
    os.environ.update(env)
    device = devices.get() if devices is not None else None  # a free GPU, given back when the group ends
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        return _run_specs(specs, hide_code, progress, index, failed)
    finally:
        if device is not None:
            devices.put(device)


def _run_group_in_worker(*args: Any) -> list[RunRecord]:
    """:func:`_run_group` in a ``--jobs`` worker process: SIGTERM (sent by the main process when it is interrupted
    or terminated) interrupts the run as Ctrl-C does, so its files are named and its kernel shut down."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return _run_group(*args)


def _run_specs(specs: list[RunSpec], hide_code: bool, progress: bool, index: Path | None,
               failed: dict[str, str] | None = None) -> list[RunRecord]:
    """Run a group's specs in order; one is skipped after a failed step of its group, or when a run it reads
    (``after``) did not succeed (``failed``: name -> status of runs of other groups)."""
    records: list[RunRecord] = []
    for spec in specs:
        cause = next(((n, st) for n, st in (failed or {}).items() if n in spec.after), None)
        if records and records[-1].status != "ok":
            cause = (records[-1].name, records[-1].status)
        if cause:
            out = Path(spec.params["output_dir"])
            remove_if_empty(out)  # reserved for it, never written
            rec = RunRecord(spec.name, spec.notebook, out, out / spec.notebook.name, None, "skipped",
                            f"skipped: {cause[0]} {cause[1]}", 0.0, time.time(), spec.params)
        else:
            rec = execute(spec, hide_code, progress)
        append_index(rec, index)
        records.append(rec)
    return records


def run_all(specs: Sequence[RunSpec], jobs: int = 1, devices: Sequence[str] = (), hide_code: bool = False,
            progress: bool = True, index: Path | None = None) -> list[RunRecord]:
    """Execute the specs: groups (pipelines) in order inside, independent groups ``jobs`` at a time.

    With several jobs each run's kernel gets one torch thread (``OMP_NUM_THREADS=1``); with ``devices`` each
    job gets its own GPU (``CUDA_VISIBLE_DEVICES``).
    """
    groups: dict[str, list[RunSpec]] = {}
    for s in specs:
        groups.setdefault(s.group, []).append(s)
    group_of = {s.name: s.group for s in specs}
    # a group starts once the groups it reads from have finished; leaderboards (compare_runs) read the run index:
    # a group of leaderboards alone waits for every other group, a pipeline that ends in one for every group
    # without one (a pipeline's board showed half of a sweep run beside it)
    with_board = {g for g, members in groups.items() if any(s.notebook.stem == "compare_runs" for s in members)}
    boards = {g for g in with_board if all(s.notebook.stem == "compare_runs" for s in groups[g])}
    needs = {g: ({group_of[a] for s in members for a in s.after if a in group_of} - {g})
             | (set(groups) - boards if g in boards else set(groups) - with_board if g in with_board else set())
             for g, members in groups.items()}
    statuses: dict[str, str] = {}

    def failed() -> dict[str, str]:
        return {n: st for n, st in statuses.items() if st != "ok"}

    def next_ready(done: set[str], pending: list[str]) -> str | None:
        return next((g for g in pending if needs[g] <= done), None)

    results: list[RunRecord] = []
    pending, done = list(groups), set()
    if jobs <= 1:
        env = {"CUDA_VISIBLE_DEVICES": devices[0]} if devices else {}
        with _environ(env):
            while pending:
                g = next_ready(done, pending) or pending[0]  # a cycle (two runs reading each other): listing order
                pending.remove(g)
                records = _run_group(groups[g], hide_code, progress, env, index, failed=failed())
                statuses.update((r.name, r.status) for r in records)
                results += records
                done.add(g)
            return results
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        free = None
        if devices:
            free = manager.Queue()
            for d in devices:
                free.put(d)
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        running: dict[Any, str] = {}
        try:
            while pending or running:
                # at most `jobs` groups handed to the pool: nothing waits in its queue, so Ctrl-C starts nothing new
                while len(running) < jobs and (g := next_ready(done, pending) or (
                        pending[0] if pending and not running else None)):
                    pending.remove(g)
                    running[pool.submit(_run_group_in_worker, groups[g], hide_code, False, env, index, free,
                                        failed())] = g
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    records = f.result()
                    statuses.update((r.name, r.status) for r in records)
                    results += records
                    done.add(running.pop(f))
        except KeyboardInterrupt:  # the workers' runs are interrupted too (SIGTERM: see _run_group_in_worker)
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def run_notebook(params_file: str | Path, overrides: dict[str, Any] | None = None, hide_code: bool = False,
                 notebook: str | Path | None = None, progress: bool = True) -> RunRecord:
    """Execute the notebook one params file names into its run folder (and append it to the index)."""
    params_file = paths.resolve(params_file)
    if notebook is None:
        specs = expand([params_file], overrides, reserve=True)
        spec = specs[0]
        for other in specs[1:]:  # a pipeline or sweep: only its first run runs here
            remove_if_empty(Path(other.params["output_dir"]))
    else:
        nb = paths.resolve(notebook)
        params = {**load_params(params_file), **(overrides or {})}
        ex = _Expansion(_stamp(), reserve=True, args=_override_args(overrides or {}))
        spec = _finish(f"{params_file.parent.name}/{params_file.stem}", nb, params, str(params_file),
                       str(params_file), ex, ex.command(params_file))
    rec = execute(spec, hide_code, progress)
    append_index(rec)
    return rec
