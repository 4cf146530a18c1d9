"""Inference benchmark: the workbench's pipeline vs plain ``funasr.AutoModel.generate``; funasr's attention
vs the fused kernel; sharding; memory.

    .venv/bin/python bench/infer_bench.py [--n 300] [--batch-size 16] [--repeats 2] [--device cpu] [--model demo/model]

Same model, same device, same batch size, runs interleaved and repeated; both sides include loading the
model. (a) is ``asr_workbench.infer.run`` (validation, length-sorted batches, scoring, files);
(b) is what a user types: ``AutoModel(model, device=..., disable_update=True).generate(input=wav.scp, batch_size=N)``.
Results are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, append_results, mixed_set  # noqa: E402

from asr_workbench import audio as audio_mod  # noqa: E402
from asr_workbench import infer, paths  # noqa: E402


def plain_funasr(model: str, scp: Path, batch_size: int, device: str) -> tuple[float, dict[str, str]]:
    from funasr import AutoModel

    with Timer() as t:
        m = AutoModel(model=model, device=device, disable_update=True, disable_pbar=True, log_level="ERROR",
                      ncpu=os.cpu_count() or 1)
        res = m.generate(input=str(scp), batch_size=batch_size)
    return t.s, {r["key"]: r["text"] for r in res}


def workbench(model: str, data: Path, batch_size: int, device: str, njob: int = 1) -> tuple[float, dict[str, str], dict]:
    out = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    with Timer() as t:
        r = infer.run(model, str(data), str(out), batch_size=batch_size, device=device, njob=njob, progress=False)
    shutil.rmtree(out, ignore_errors=True)
    return t.s, {x["key"]: x["hyp"] for x in r.results}, r.metrics


def peak_rss_child(model: str, data: Path, batch_size: int) -> float:
    """Peak RSS (MiB) of a fresh process running the workbench's inference on ``data``."""
    code = ("import resource,sys,tempfile; from asr_workbench import infer; "
            f"infer.run({model!r}, {str(data)!r}, tempfile.mkdtemp(), batch_size={batch_size}, device='cpu', progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def repeated(data: Path, times: int, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = (data / "wav.scp").read_text().splitlines()
    texts = (data / "text").read_text(encoding="utf-8").splitlines()
    (out / "wav.scp").write_text("".join(f"r{i}_{ln.split()[0]} {data / ln.split()[1]}\n" for i in range(times) for ln in lines))
    (out / "text").write_text("".join(f"r{i}_{t}\n" for i in range(times) for t in texts), encoding="utf-8")
    return out


def attention_rows(model: str, data: Path, a: argparse.Namespace, audio_s: float, cmd: str) -> None:
    """Decoding alone, one loaded model: funasr's attention code vs the fused kernel, interleaved."""
    from asr_workbench import datadir, decode

    items = [(u.key, u.audio, u.duration_s) for u in datadir.load_dataset(data).utterances]
    loaded = decode.load_model(model, device=a.device)
    times: dict[str, list[float]] = {"funasr": [], "fused": []}
    hyps: dict[str, dict[str, str]] = {}
    work = Path(tempfile.mkdtemp(prefix="wb-attn-"))
    for rep in range(a.repeats):
        for mode in times:
            opts = decode.DecodeOptions(batch_size=a.batch_size, device=a.device, attention=mode)
            res = decode.decode(model, items, opts, work / f"{mode}{rep}.partial", f"{mode}{rep}", model=loaded,
                                progress=False)
            times[mode].append(res.wall_s)
            hyps[mode] = {h.key: h.text for h in res.hypotheses}
    shutil.rmtree(work, ignore_errors=True)
    same = sum(hyps["fused"][k] == v for k, v in hyps["funasr"].items())
    base = min(times["funasr"])
    append_results("Inference decoding alone: funasr's attention vs the fused kernel", cmd, [
        {"attention": mode, "decode s": round(min(t), 2), "x real time": round(audio_s / min(t), 1),
         "speed-up": round(base / min(t), 2)} for mode, t in times.items()],
        f"{a.n} utterances, batch {a.batch_size}, device {a.device}, model loaded once, best of {a.repeats} "
        f"interleaved repeats; identical transcripts: {same}/{len(hyps['funasr'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="demo/model")
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: attention,shard,memory")
    a = ap.parse_args()
    model = str(paths.resolve(a.model))
    work = paths.resolve(a.work)
    data = mixed_set(work / f"mixed{a.n}", a.n)
    scp_abs = data / "wav_abs.scp"
    scp_abs.write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in (data / "wav.scp").read_text().splitlines()))
    audio_s = sum(audio_mod.probe(data / ln.split()[1]).duration_s for ln in (data / "wav.scp").read_text().splitlines())
    cmd = "python bench/infer_bench.py " + " ".join(sys.argv[1:])
    rows, a_times, b_times = [], [], []
    same = None
    for rep in range(a.repeats):
        ta, hyp_a, metrics = workbench(model, data, a.batch_size, a.device)
        tb, hyp_b = plain_funasr(model, scp_abs, a.batch_size, a.device)
        a_times.append(ta)
        b_times.append(tb)
        same = sum(hyp_a.get(k, "").replace(" ", "") == v.replace(" ", "") for k, v in hyp_b.items())
        print(f"repeat {rep + 1}: workbench {ta:.1f} s, plain funasr {tb:.1f} s", flush=True)
    ta, tb = min(a_times), min(b_times)
    rows.append({"what": "workbench infer.run (a)", "batch": a.batch_size, "utts/s": round(a.n / ta, 2),
                 "x real time": round(audio_s / ta, 1), "RTF": round(ta / audio_s, 5), "a/b speed": round(tb / ta, 2)})
    rows.append({"what": "plain AutoModel.generate(wav.scp) (b)", "batch": a.batch_size, "utts/s": round(a.n / tb, 2),
                 "x real time": round(audio_s / tb, 1), "RTF": round(tb / audio_s, 5), "a/b speed": 1.0})
    append_results("Inference: workbench vs plain funasr", cmd, rows,
                   f"{a.n} utterances, {audio_s:.0f} s of audio (1-20 s each), device {a.device}, best of {a.repeats} "
                   f"interleaved repeats, model loading included on both sides; identical transcripts: {same}/{a.n}; "
                   f"workbench CER {metrics['cer'] * 100:.2f} % ({metrics['normaliser'].split(':')[0]})")
    skip = set(a.skip.split(","))
    if "attention" not in skip:
        attention_rows(model, data, a, audio_s, cmd)
    if "shard" not in skip:
        t1, _, _ = workbench(model, data, a.batch_size, "cpu", njob=1)
        t2, _, _ = workbench(model, data, a.batch_size, "cpu", njob=2)
        append_results("Inference sharding on CPU", cmd, [
            {"processes": 1, "wall s": round(t1, 1), "x real time": round(audio_s / t1, 1), "speed-up": 1.0},
            {"processes": 2, "wall s": round(t2, 1), "x real time": round(audio_s / t2, 1), "speed-up": round(t1 / t2, 2)}],
            f"{a.n} utterances, batch {a.batch_size}; njob=2 runs one torch thread per process")
    if "memory" not in skip:
        r1 = peak_rss_child(model, data, a.batch_size)
        r4 = peak_rss_child(model, repeated(data, 4, work / f"mixed{a.n}x4"), a.batch_size)
        append_results("Inference memory", cmd, [
            {"data": f"{a.n} utts", "peak RSS MiB": round(r1)}, {"data": f"{4 * a.n} utts (x4)", "peak RSS MiB": round(r4),
                                                                 "ratio": round(r4 / r1, 2)}],
            "peak RSS of a fresh process running infer.run; flat means results stream to disk")


if __name__ == "__main__":
    main()
