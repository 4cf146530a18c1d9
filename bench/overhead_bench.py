"""What ``infer.run`` spends outside decoding (validation, scoring, text.cer, files) on a large set, this checkout
against an earlier commit, in the same run.

    .venv/bin/python bench/overhead_bench.py [--n 3600] [--baseline 28f8ac9] [--repeats 2]

On a GPU decoding 10 h takes ~13 s (bench/RESULTS.md), so the seconds outside decoding decide how close the whole
run gets to the decoder's speed; they are CPU work, measured here on the CPU. Each side runs ``infer.run`` in a
fresh process with its own ``lib/`` (the baseline from a git worktree), on the same data (the GPU benchmark's
mixed set: 1-20 s utterances), interleaved, best of ``--repeats``. Results are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, mixed_set  # noqa: E402

from asr_workbench import paths  # noqa: E402

_CHILD = """
import json, sys, tempfile, time
from asr_workbench import infer
t = time.perf_counter()
r = infer.run(sys.argv[1], sys.argv[2], tempfile.mkdtemp(prefix="wb-overhead-"), batch_size=16, device="cpu",
              progress=False)
total = time.perf_counter() - t
m = r.metrics
print(json.dumps({"total": total, "decode": m["wall_seconds"], "load": m.get("model_load_seconds", 0.0),
                  "audio": m["audio_seconds"], "n": m["n_decoded"]}))
"""


def one_run(lib: Path, model: str, data: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(lib)}
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(data)], capture_output=True, text=True, env=env,
                         check=True, cwd=str(lib.parent))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3600)
    ap.add_argument("--baseline", default="28f8ac9", help="the commit to compare with")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="demo/model")
    a = ap.parse_args()
    root = paths.repo_root()
    data = mixed_set(Path(tempfile.gettempdir()) / f"gpu-mixed{a.n}", a.n, seed=1)
    model = str(paths.resolve(a.model))
    tree = Path(tempfile.mkdtemp(prefix="wb-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tree), a.baseline], check=True)
    try:
        libs = {f"{a.baseline} (baseline)": tree / "lib", "this checkout": root / "lib"}
        best: dict[str, dict[str, float]] = {}
        for _ in range(a.repeats):
            for name, lib in libs.items():
                r = one_run(lib, model, data)
                r["outside"] = r["total"] - r["decode"] - r["load"]
                if name not in best or r["outside"] < best[name]["outside"]:
                    best[name] = r
                print(name, {k: round(v, 2) for k, v in r.items()}, flush=True)
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)
    base = best[f"{a.baseline} (baseline)"]["outside"]
    rows = [{"code": name, "infer.run s": round(r["total"], 1), "decoding s": round(r["decode"], 1),
             "model load s": round(r["load"], 1), "outside decoding s": round(r["outside"], 2),
             "outside decoding per audio hour s": round(r["outside"] / (r["audio"] / 3600), 2),
             "speed-up outside decoding": round(base / r["outside"], 2) if r["outside"] else "-"}
            for name, r in best.items()]
    n, hours = int(next(iter(best.values()))["n"]), next(iter(best.values()))["audio"] / 3600
    append_results("infer.run outside decoding: validation, scoring, text.cer, files", " ".join(
        ["python bench/overhead_bench.py", *sys.argv[1:]]), rows,
        f"{n} utterances, {hours:.2f} h of 1-20 s audio (the GPU benchmark's set), demo model on the CPU, batch 16, "
        f"fresh process per run, interleaved, best of {a.repeats}; outside decoding = infer.run wall - decoding - "
        "model loading")


if __name__ == "__main__":
    main()
