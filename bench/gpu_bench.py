"""GPU benchmark (one H100/H200 run, nothing from the network): Paraformer-large's architecture, random weights.

    bash bench/gpu.sh            # on the GPU machine (brings funasr's wheels, runs the plain-funasr anchor too)
    SMALL=1 python bench/gpu_bench.py   # dry run on CPU with a tiny architecture (recorded as a dry run)

Builds a model folder with Paraformer-large's architecture (SANM 50x512 encoder, 16-block decoder, 8404 tokens;
random weights: no hub is reachable from the benchmark machine), synthesizes >= 10 h of mixed-length audio from
the demo clips on the machine itself, and measures in one run: plain ``AutoModel.generate`` (batch 64, input
order, fp32, as a user calls it) against the workbench's ``infer.run`` (batch 64, length-sorted) in fp32 and bf16;
and fine-tuning audio-seconds/s of the workbench at the recipe's settings and at 5x the batch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, mixed_set  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from asr_workbench import finetune, infer, paths  # noqa: E402
from asr_workbench.demo.build import CONFIGURATION_JSON, MODEL_CONFIG  # noqa: E402
from asr_workbench.finetune.config import deep_merge  # noqa: E402

SMALL = os.environ.get("SMALL") == "1"
OUT = Path(os.environ.get("OUT") or tempfile.mkdtemp())
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def large_arch(folder: Path) -> Path:
    """A model folder with Paraformer-large's architecture and random weights (tiny when SMALL)."""
    d, ff, enc, dec = (64, 256, 2, 1) if SMALL else (512, 2048, 50, 16)
    cfg = deep_merge(MODEL_CONFIG, {
        "encoder_conf": {"output_size": d, "linear_units": ff, "num_blocks": enc},
        "decoder_conf": {"linear_units": ff, "num_blocks": dec, "att_layer_num": dec},
        "predictor_conf": {"idim": d}})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    vocab = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(8400)] + ["<unk>"]
    (folder / "tokens.json").write_text(json.dumps(vocab, ensure_ascii=False))
    mvn = paths.repo_root() / "demo/model/am.mvn"
    (folder / "am.mvn").write_bytes(mvn.read_bytes())
    (folder / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON))
    (folder / "decoding.yaml").write_text("batch_size: 64\n")
    (folder / "finetune.yaml").write_text(yaml.safe_dump({"optim_conf": {"lr": 0.0002}, "scheduler_conf": {"warmup_steps": 100}}))
    from funasr import AutoModel

    torch.manual_seed(0)
    # no model.pt yet: a missing init_param leaves funasr's random initialisation
    m = AutoModel(model=str(folder), device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR",
                  init_param=str(folder / "random-init-no-file.pt"))
    torch.save(m.model.state_dict(), folder / "model.pt")
    n = sum(p.numel() for p in m.model.parameters())
    print(f"model: {n / 1e6:.1f} M parameters", flush=True)
    return folder


def plain_generate(model: Path, scp: Path, bs: int) -> float:
    from funasr import AutoModel

    m = AutoModel(model=str(model), device=DEV, disable_update=True, disable_pbar=True, log_level="ERROR", ncpu=8)
    m.generate(input=str(scp.parent / "warm.scp"), batch_size=bs)  # warm-up: CUDA kernels, allocator
    if DEV == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    m.generate(input=str(scp), batch_size=bs)
    if DEV == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    n = 24 if SMALL else int(os.environ.get("N_UTTS", 3600))  # 1-20 s uniform, ~10.5 s mean: 3600 ~ 10.5 h
    data = mixed_set(Path(tempfile.gettempdir()) / f"gpu-mixed{n}", n, seed=1)
    lines = (data / "wav.scp").read_text().splitlines()
    (data / "wav_abs.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in lines))
    (data / "warm.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in lines[:64]))
    from asr_workbench import audio as audio_mod

    audio_s = sum(audio_mod.probe(data / ln.split()[1]).duration_s for ln in lines)
    print(f"data: {n} utterances, {audio_s / 3600:.2f} h", flush=True)
    model = large_arch(Path(tempfile.gettempdir()) / "paraformer-large-arch")
    rows = []
    tb = plain_generate(model, data / "wav_abs.scp", 64)
    rows.append({"what": "plain AutoModel.generate(wav.scp)", "batch": 64, "order": "input", "dtype": "fp32",
                 "x real time": round(audio_s / tb, 1), "wall s": round(tb, 1)})
    print(rows[-1], flush=True)
    for precision in ("fp32", "bf16"):
        t = time.perf_counter()
        r = infer.run(str(model), str(data), str(OUT / f"infer-{precision}"), batch_size=64, device=DEV,
                      precision=precision, progress=False)
        wall = time.perf_counter() - t
        rows.append({"what": "workbench infer.run (validation + decode + scoring)", "batch": 64, "order": "sorted",
                     "dtype": precision, "x real time": round(audio_s / wall, 1), "wall s": round(wall, 1),
                     "decode-only x real time": round(1 / r.metrics["rtf"], 1) if r.metrics["rtf"] else "-"})
        print(rows[-1], flush=True)
    note = (f"{'DRY RUN on CPU with a tiny architecture' if SMALL else 'Paraformer-large architecture, random weights (no hub reachable)'}; "
            f"{n} utterances, {audio_s / 3600:.2f} h of 1-20 s audio made from the demo clips; device {machine()}")
    append_results("GPU inference: workbench vs plain funasr", "bash bench/gpu.sh", rows, note)
    if os.environ.get("INFER_ONLY") == "1":
        return
    ft_rows = []
    ft_data = OUT / "ft-data"
    sub = lines[: (16 if SMALL else 400)]
    for split, part in (("train", sub), ("dev", sub[:8])):
        (ft_data / split).mkdir(parents=True, exist_ok=True)
        (ft_data / split / "wav.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in part))
        texts = dict(x.split(" ", 1) for x in (data / "text").read_text(encoding="utf-8").splitlines())
        (ft_data / split / "text").write_text("".join(f"{ln.split()[0]} {texts[ln.split()[0]]}\n" for ln in part), encoding="utf-8")
    for label, bins, workers in (("recipe settings", 6000, 4), ("5x batch", 30000, 12)):
        plan = finetune.plan(str(model), str(ft_data), str(OUT / f"ft-{bins}"), max_epoch=1, batch_bins=bins,
                             num_workers=0 if SMALL else workers, keep_nbest_models=1, device=DEV, dev_cer="end")
        res = finetune.run(plan, live=False)
        ft_rows.append({"what": f"workbench fine-tune, {label}", "batch_bins": bins, "workers": workers,
                        "audio-s per s": round(plan.train.hours * 3600 / res.seconds, 1), "train wall s": round(res.seconds, 1)})
        print(ft_rows[-1], flush=True)
    append_results("GPU fine-tune throughput (workbench)", "bash bench/gpu.sh", ft_rows,
                   note + "; 1 epoch, process start-up and model loading included")


if __name__ == "__main__":
    main()
