"""``asr-workbench`` (also ``python -m asr_workbench``): run notebooks from params files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main"]


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _cmd_run(a: argparse.Namespace) -> int:
    from asr_workbench.batch import run_notebook

    overrides = dict(a.param or [])
    failed = 0
    for params_file in a.params:
        rec = run_notebook(params_file, overrides, hide_code=a.hide_code, progress=not a.quiet)
        print(f"[{rec.status}] {rec.name}: {rec.seconds:.0f} s")
        print(f"  run folder: {rec.output_dir}")
        if rec.html:
            print(f"  report:     {rec.html}")
        metrics = rec.output_dir / "metrics.json"
        if rec.status == "ok" and metrics.is_file() and metrics.stat().st_mtime >= rec.started:
            import json

            m = json.loads(metrics.read_text(encoding="utf-8"))
            if m.get("cer") is not None:
                norm = m["normaliser"].split(":")[0]
                if "per_set_cer" in m:
                    for name, cer in m["per_set_cer"].items():
                        base = m.get("per_set_base_cer", {}).get(name)
                        was = f"base {base * 100:.2f} % -> " if base is not None else ""
                        print(f"  {name}: {was}fine-tuned {cer * 100:.2f} % CER (normaliser {norm})")
                    for w in m.get("warnings", []):
                        print(f"  warning: {w}")
                elif "n_scored" in m:
                    print(f"  CER {m['cer'] * 100:.2f} % on {m['n_scored']} utterances (normaliser {norm})")
                else:
                    print(f"  dev CER {m['cer'] * 100:.2f} % ({m.get('checkpoint')}; base "
                          f"{m['dev_cer']['base'] * 100:.2f} %) -> {m.get('model_dir')} (normaliser {norm})")
        if rec.error:
            print(f"  error: {rec.error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asr-workbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute the notebook each params file names (params/<suite>/<notebook>.yaml)")
    r.add_argument("params", nargs="+", type=Path, help="params file(s)")
    r.add_argument("-p", "--param", action="append", type=_parse_override, metavar="KEY=VALUE",
                   help="override one parameter (YAML value), e.g. -p batch_size=8")
    r.add_argument("--hide-code", action="store_true", help="HTML report without code cells, for sharing")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
