"""Fine-tune benchmark: the workbench's fine-tune vs funasr's trainer launched by hand with the same config.

    .venv/bin/python bench/finetune_bench.py [--epochs 3] [--repeats 2] [--data demo/data/target]

(a) ``asr_workbench.finetune`` (plan + run: log streaming, live progress parsing; timed: the training process);
(b) ``python -m asr_workbench.training CONFIG`` on the config (a) resolved: funasr's ``train_ds.main`` with nothing
changed but the CPU device fallback (stock ``funasr/bin/train_ds.py`` cannot train on a CPU-only machine).
Throughput is audio-seconds trained per wall second; runs interleaved. Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, append_results  # noqa: E402

from asr_workbench import finetune, paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default="demo/data/target")
    ap.add_argument("--model", default="demo/model")
    a = ap.parse_args()
    cmd = "python bench/finetune_bench.py " + " ".join(sys.argv[1:])
    wa, wb = [], []
    audio_s = 0.0
    for rep in range(a.repeats):
        out = Path(tempfile.mkdtemp(prefix="ft-bench-"))
        plan = finetune.plan(str(paths.resolve(a.model)), a.data, str(out / "a"), max_epoch=a.epochs,
                             keep_nbest_models=1, device="cpu")
        audio_s = plan.train.hours * 3600 * a.epochs
        res = finetune.run(plan, live=False)
        wa.append(res.seconds)
        cfg = {**plan.config, "output_dir": str(out / "b")}
        (out / "b").mkdir()
        (out / "b.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        with Timer() as t:
            subprocess.run([sys.executable, "-m", "asr_workbench.training", str(out / "b.yaml")], check=True,
                           capture_output=True, cwd=str(out / "b"))
        wb.append(t.s)
        print(f"repeat {rep + 1}: workbench {res.seconds:.1f} s, by hand {t.s:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    ta, tb = min(wa), min(wb)
    append_results("Fine-tune: workbench vs funasr's trainer by hand (same resolved config)", cmd, [
        {"what": "workbench finetune.run (a)", "train wall s": round(ta, 1), "audio-s per s": round(audio_s / ta, 1),
         "a/b": round(tb / ta, 3)},
        {"what": "funasr train_ds.main by hand (b)", "train wall s": round(tb, 1), "audio-s per s": round(audio_s / tb, 1),
         "a/b": 1.0}],
        f"{plan.train.n_utts} utterances ({plan.train.hours * 60:.1f} min) x {a.epochs} epochs on CPU, batch "
        f"{plan.config['dataset_conf']['batch_size']} frames; process start-up and model loading included on both "
        f"sides; best of {a.repeats} interleaved repeats")


if __name__ == "__main__":
    main()
