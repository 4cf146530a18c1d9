"""``asr-workbench`` (also ``python -m asr_workbench``): run notebooks from params files, pipelines and sweeps."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main"]


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"-p {key}: not a YAML value ({str(e).splitlines()[0]}): {value!r}") from e
    # a scalar stays text: the notebook parameter's type reads it (YAML 1.1 would make 0755 493 and yes true);
    # quoted, it is the string inside the quotes
    if isinstance(parsed, (list, dict)) or (isinstance(parsed, str) and value.strip()[:1] in ("'", '"')):
        return key, parsed
    return key, value


def _cer(value: Any) -> str:
    return f"{value * 100:.2f} %" if isinstance(value, (int, float)) else "-"


def _details(rec: Any) -> list[str]:
    """What a finished run says about itself (from its metrics.json)."""
    m, lines = rec.metrics, []
    norm = str(m.get("normaliser", "")).split(":")[0]
    if "per_set_cer" in m:
        for name, cer in m["per_set_cer"].items():
            base = (m.get("per_set_base_cer") or {}).get(name)
            lines.append(f"{name}: base {_cer(base)} -> fine-tuned {_cer(cer)} CER ({norm})")
        lines += [f"warning: {w}" for w in m.get("warnings", [])]
    elif "n_scored" in m and m.get("cer") is not None:
        skipped = m.get("n_skipped") or 0
        lines.append(f"CER {_cer(m['cer'])} on {m['n_scored']} utterances of {'/'.join(Path(str(m.get('data_dir'))).parts[-2:])} ({norm})"
                     + (f"; {skipped} of {m.get('n_input')} input lines skipped (see data_report.jsonl)" if skipped else ""))
    elif "dev_cer" in m:
        lines.append(f"dev CER {_cer(m['cer'])} ({m.get('checkpoint')}; base {_cer(m['dev_cer'].get('base'))}; {norm}) "
                     f"-> {m.get('model_dir')}")
        lines += [f"warning: {w}" for w in m.get("warnings", [])]
    return lines


def _cmd_run(a: argparse.Namespace) -> int:
    from asr_workbench import batch, runs, scoring

    specs = batch.expand(a.params, dict(a.param or []), reserve=not a.dry_run)
    if a.dry_run:
        for s in specs:
            print(f"{s.name}  [{s.notebook.name}]  group {s.group}" + (f"  after {', '.join(s.after)}" if s.after else ""))
            print("  " + yaml.safe_dump(s.params, allow_unicode=True, sort_keys=False).strip().replace("\n", "\n  "))
        return 0
    devices = [d for d in (a.devices or "").split(",") if d]
    terminated: list[int] = []

    def on_term(signum: int, frame: Any) -> None:  # a job scheduler's SIGTERM stops the runs as Ctrl-C does
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        records = batch.run_all(specs, jobs=a.jobs, devices=devices, hide_code=a.hide_code, progress=not a.quiet)
    except KeyboardInterrupt:
        # the interrupted notebook client leaves a cell task whose kernel died: asyncio would print its traceback
        # ("Task exception was never retrieved") when it is collected, after the line below
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        for s in specs:  # folders reserved for runs that never started
            batch.remove_if_empty(Path(s.params["output_dir"]))
        print(f"\ninterrupted: finished runs are in the index ({runs.paths.outputs_root() / runs.INDEX}). The same "
              "command starts the others again; a run in a fixed output_dir resumes there (an inference from its "
              "partial file, a fine-tune with -p resume=true), one in a fresh folder gets a new folder: to resume it, "
              "rerun it with -p output_dir=<its folder> (a pipeline step: output_dir and resume: true in the step's "
              "with:)", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\n{'run':<40} {'status':<8} {'CER':>9} {'time':>7}  report")
    for r in records:
        print(f"{r.name:<40} {r.status:<8} {_cer(r.metrics.get('cer')):>9} {r.seconds:>6.0f}s  {r.html or '-'}")
    if any(r.metrics.get("cer") is not None for r in records):
        print(f"CER after the normaliser {scoring.NORMALISER_NAME}; a fine-tune's is on its dev set, an evaluation's on "
              "its first test set")
    for r in records:
        for line in _details(r):
            print(f"  {r.name}: {line}")
        if r.error:
            print(f"  {r.name}: {r.error}", file=sys.stderr)
    print(f"\nrun folders under {Path(records[0].output_dir).parent if records else '-'}; index: "
          f"{runs.paths.outputs_root() / runs.INDEX}")
    return 1 if any(r.status != "ok" for r in records) else 0


def _cmd_leaderboard(a: argparse.Namespace) -> int:
    from asr_workbench import leaderboard

    board = leaderboard.load(a.index, notebook=a.notebook, data=a.data)
    print(json.dumps(board.rows, ensure_ascii=False, indent=1, default=str) if a.json else board.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asr-workbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute params files (params/<suite>/<notebook>.yaml), *.pipeline.yaml, *.sweep.yaml")
    r.add_argument("params", nargs="+", type=Path, help="params / pipeline / sweep files, or folders of them")
    r.add_argument("-p", "--param", action="append", type=_parse_override, metavar="KEY=VALUE",
                   help="set a parameter (YAML value) in every run whose notebook has it, e.g. -p batch_size=8")
    r.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    r.add_argument("--jobs", type=int, default=1, help="independent runs (pipelines, sweep points) in parallel")
    r.add_argument("--devices", default="", help="GPUs for the parallel runs, e.g. 0,1 (one per run)")
    r.add_argument("--hide-code", action="store_true", help="HTML reports without code cells, for sharing")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)
    lb = sub.add_parser("leaderboard", help="the runs of outputs/runs.jsonl, best CER first")
    lb.add_argument("--index", default=None, help="run index (default outputs/runs.jsonl)")
    lb.add_argument("--notebook", default=None, help="only runs of this notebook (infer, finetune, ...)")
    lb.add_argument("--data", default=None, help="only runs on this data set name")
    lb.add_argument("--json", action="store_true", help="rows as JSON")
    lb.set_defaults(func=_cmd_leaderboard)
    a = p.parse_args(argv)
    env = os.environ.get("ASR_WORKBENCH_OUTPUTS")
    if env:  # relative to where the command was typed, for every kernel too (they start in the repository root)
        os.environ["ASR_WORKBENCH_OUTPUTS"] = str(Path(env).expanduser().absolute())
    try:
        return a.func(a)
    except (OSError, ValueError) as e:  # a missing or unreadable file, a name too long, a read-only disk
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
