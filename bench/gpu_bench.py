"""GPU benchmark (one H100/H200 run, nothing from the network): Paraformer-large's architecture, random weights.

    bash bench/gpu.sh            # on the GPU machine (brings funasr's wheels, runs the plain-funasr anchor too)
    SMALL=1 python bench/gpu_bench.py   # dry run on CPU with a tiny architecture (recorded as a dry run)

Builds a model folder with Paraformer-large's architecture (SANM 50x512 encoder, 16-block decoder, 8404 tokens;
random weights: no hub is reachable from the benchmark machine), synthesizes >= 10 h of mixed-length audio from
the demo clips on the machine itself, and measures in one run: plain ``AutoModel.generate`` (batch 64, input
order, fp32, as a user calls it) against the workbench's ``infer.run`` (batch 64, length-sorted) in fp32 and bf16,
decoding-only variants (funasr's attention vs the fused kernel, batch by audio seconds, 4 processes on the one GPU)
and a profile of 3 batches ($OUT/profile.txt: torch.profiler and cProfile); and fine-tuning
audio-seconds/s in the 2nd epoch: funasr's stock trainer at the recipe's settings, the workbench's trainer on the
same config, and the workbench's recommended settings for the machine (``finetune.recommend``).
``PARTS=infer`` or ``PARTS=finetune`` runs one half (both take about 7 minutes on an H100 with the data and
model set-up: run one half per device call). Only the results and logs go to $OUT.
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
WORK = Path(tempfile.mkdtemp(prefix="gpu-bench-"))  # run folders, partial files, checkpoints: not brought back
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


def plain_generate(model: Path, scp: Path, bs: int) -> tuple[float, dict[str, str]]:
    from funasr import AutoModel

    m = AutoModel(model=str(model), device=DEV, disable_update=True, disable_pbar=True, log_level="ERROR", ncpu=8)
    m.generate(input=str(scp.parent / "warm.scp"), batch_size=bs)  # warm-up: CUDA kernels, allocator
    _sync()
    t = time.perf_counter()
    res = m.generate(input=str(scp), batch_size=bs)
    _sync()
    return time.perf_counter() - t, {r["key"]: r["text"] for r in res}


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _same(a: dict[str, str], b: dict[str, str]) -> str:
    return f"{sum(a.get(k, '').replace(' ', '') == v.replace(' ', '') for k, v in b.items())}/{len(b)}"


def inference(model: Path, data: Path, audio_s: float, note: str) -> None:
    """Plain generate vs the workbench end to end (fp32, bf16), then decode-only variants on one loaded model."""
    rows = []
    tb, plain = plain_generate(model, data / "wav_abs.scp", 64)
    rows.append({"what": "plain AutoModel.generate(wav.scp), model loaded and warmed", "batch": 64, "order": "input",
                 "dtype": "fp32", "x real time": round(audio_s / tb, 1), "wall s": round(tb, 1), "same text": "-"})
    print(rows[-1], flush=True)
    # bf16 picks its kernels for each new shape on first use (the first pass's cold bf16 run: 849x against 2,609x
    # warm): one untimed bf16 run on 256 utterances first, as plain generate warmed fp32
    warm = data / "warm256"
    warm.mkdir(exist_ok=True)
    (warm / "wav.scp").write_text("".join((data / "wav_abs.scp").read_text().splitlines(keepends=True)[:256]))
    infer.run(str(model), str(warm), str(WORK / "infer-warm-bf16"), batch_size=64, device=DEV, precision="bf16",
              progress=False)
    for precision, over in (("fp32", None), ("bf16", None), ("bf16", {"batch_seconds": 1280})):
        t = time.perf_counter()
        r = infer.run(str(model), str(data), str(WORK / f"infer-{precision}-{bool(over)}"), batch_size=64, device=DEV,
                      precision=precision, progress=False, decoding_overrides=over)
        wall = time.perf_counter() - t
        hyps = {x["key"]: x["hyp"] for x in r.results}
        m = r.metrics
        rows.append({"what": "workbench infer.run: load + validate + decode + score + files", "batch":
                     "64" if not over else f"{over['batch_seconds']} s of audio", "order": "sorted", "dtype": precision,
                     "x real time": round(audio_s / wall, 1), "wall s": round(wall, 1),
                     "same text": _same(hyps, plain) if precision == "fp32" else "-",
                     "decode-only x real time": round(1 / m["rtf"], 1) if m["rtf"] else "-",
                     "model load s": m.get("model_load_seconds")})
        print(rows[-1], flush=True)
    append_results("GPU inference: workbench vs plain funasr", "bash bench/gpu.sh", rows, note)
    # decoding alone, one loaded model: where features are computed, how many batches at once, batch size
    from asr_workbench import datadir, decode

    ds = datadir.load_dataset(data)
    items = [(u.key, u.audio, u.duration_s) for u in ds.utterances]
    loaded = decode.load_model(str(model), device=DEV)
    # (dtype, batch, batch seconds, features on, workers, attention): funasr's attention vs the fused kernel
    variants = [("fp32", 64, None, "model", 0, "funasr"), ("fp32", 64, None, "model", 0, "fused"),
                ("bf16", 64, None, "model", 0, "funasr"), ("bf16", 64, None, "model", 0, "fused"),
                ("bf16", 0, 1280, "model", 0, "fused")]
    drows, by_attention = [], {}
    for i, (precision, bs, secs, feats, workers, attn) in enumerate(variants):
        opts = decode.DecodeOptions(batch_size=bs or 64, batch_seconds=secs, device=DEV, precision=precision,
                                    features_on=feats, workers=workers, attention=attn)
        try:  # every variant warms up first: kernels for each dtype and attention are picked on first use
            decode.decode(str(model), items[:256], opts, WORK / f"warm{i}.partial", f"warm{i}", model=loaded,
                          progress=False)
            _sync()
            res = decode.decode(str(model), items, opts, WORK / f"v{i}.partial", f"v{i}", model=loaded, progress=False)
            hyps = {h.key: h.text for h in res.hypotheses}
            if bs and not workers:
                by_attention[(precision, attn)] = hyps
            other = by_attention.get((precision, "funasr")) if attn == "fused" and bs and not workers else None
            hw = decode.plan_workers(loaded, opts, {})
            drows.append({"dtype": precision, "batch": f"{bs}" if bs else f"{secs} s of audio", "features on": feats,
                          "workers": hw[0], "attention": attn, "x real time": round(audio_s / res.wall_s, 1),
                          "wall s": round(res.wall_s, 2), "same text as plain": _same(hyps, plain),
                          "same text as funasr attention": _same(hyps, other) if other else "-"})
        except Exception as e:  # noqa: BLE001 - a failed variant is a row, the others still run
            import traceback

            traceback.print_exc()
            drows.append({"dtype": precision, "batch": bs or secs, "features on": feats, "workers": workers,
                          "attention": attn, "x real time": f"error {e!r}"[:120]})
        print(drows[-1], flush=True)
    # several processes driving one GPU (each its own Python, so per-batch Python work overlaps): start-up,
    # torch/funasr import and model loading are inside this wall time
    for njob in (4,):
        opts = decode.DecodeOptions(batch_size=64, device=DEV, precision="bf16", njob=njob)
        try:
            res = decode.decode(str(model), items, opts, WORK / f"njob{njob}.partial", f"njob{njob}", progress=False)
            drows.append({"dtype": "bf16", "batch": "64", "features on": "model", "workers": f"{njob} processes",
                          "attention": "fused", "x real time": round(audio_s / res.wall_s, 1),
                          "wall s": round(res.wall_s, 2), "same text as plain": _same({h.key: h.text for h in res.hypotheses}, plain)})
        except Exception as e:  # noqa: BLE001
            drows.append({"dtype": "bf16", "workers": f"{njob} processes", "x real time": f"error {e!r}"[:120]})
        print(drows[-1], flush=True)
    append_results("GPU decoding alone (workbench decode.decode, model loaded once)", "bash bench/gpu.sh", drows,
                   note + f"; plain generate on the same set: {audio_s / tb:.0f}x; the process rows load the "
                   "model in each process, inside their wall time")
    profile_batches(loaded, sorted(items[:192], key=lambda it: it[2]))  # length-sorted, as decoding batches them


def profile_batches(loaded: object, items: list) -> None:
    """Where 3 batches of the default GPU decoding spend their time: torch.profiler (CPU and CUDA ops) and
    cProfile (Python), run on this thread, written to $OUT/profile.txt for the next round of work."""
    import cProfile
    import io
    import pstats

    from asr_workbench import attention, audio, decode

    opts = decode.DecodeOptions(batch_size=64, device=DEV, precision="bf16")
    kw = {k: v for k, v in decode._generate_kwargs(opts).items() if k not in ("data_type", "batch_size", "input_len")}
    device = next(loaded.model.parameters()).device

    def run() -> None:
        with attention.fused(loaded.model), decode._autocast(loaded, "bf16"):
            for i in range(0, len(items), 64):
                waves = [audio.load(p) for _, p, _ in items[i : i + 64]]
                decode._infer_batch(loaded, waves, device, kw)
        _sync()

    try:
        run()  # warm
        with torch.profiler.profile(activities=_activities()) as prof:
            run()
        text = prof_tables(prof)
        pr = cProfile.Profile()
        t = time.perf_counter()
        pr.enable()
        run()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(45)
        text += f"\ncProfile, {len(items)} utterances in {time.perf_counter() - t:.2f} s:\n" + buf.getvalue()
    except Exception as e:  # noqa: BLE001
        text = f"profile failed: {e!r}"
    (OUT / "profile.txt").write_text(text, encoding="utf-8")
    print(text[:6000], flush=True)


def _timed_trainer(base: type, times: list[float], profile: Path | None = None) -> type:
    """``base`` timing each epoch; with ``profile``, epoch 1 (not the timed one) also records steps 6-15 with
    torch.profiler into that file: where a step's time goes (the yardstick's 174 -> 736 audio-s/s for a 5x
    batch means ~0.3 s a step that does not grow with the batch)."""

    class Timed(base):  # type: ignore[misc, valid-type]
        _prof = None

        def train_epoch(self, *a, **k):  # noqa: ANN002, ANN003
            _sync()
            t = time.perf_counter()
            if profile is not None and not times:
                schedule = torch.profiler.schedule(wait=3, warmup=2, active=10, repeat=1)
                with torch.profiler.profile(activities=_activities(), schedule=schedule) as prof:
                    self._prof = prof
                    r = super().train_epoch(*a, **k)
                self._prof = None
                profile.write_text(prof_tables(prof), encoding="utf-8")
            else:
                r = super().train_epoch(*a, **k)
            _sync()
            times.append(time.perf_counter() - t)
            return r

        def forward_step(self, *a, **k):  # noqa: ANN002, ANN003
            r = super().forward_step(*a, **k)
            if self._prof is not None:
                self._prof.step()
            return r

    return Timed


def _activities() -> list:
    return [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if DEV == "cuda" else [])


def prof_tables(prof: object) -> str:
    """torch.profiler's op tables: by self time on the device (or the CPU), and by total CPU time."""
    try:
        by = "self_cuda_time_total" if DEV == "cuda" else "self_cpu_time_total"
        return (prof.key_averages().table(sort_by=by, row_limit=30) + "\n"
                + prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
    except Exception as e:  # noqa: BLE001 - too few steps recorded, or a profiler error: say so, go on
        return f"no profile: {e!r}"


def _train_epochs(cfg: dict, trainer: str, profile: Path | None = None) -> tuple[float, float]:
    """Train ``cfg`` 2 epochs in this process; the 2nd epoch's seconds (no start-up, warm loaders) and peak GiB
    (``profile``: see :func:`_timed_trainer`)."""
    import funasr.bin.train_ds as train_ds
    from funasr.train_utils.trainer_ds import Trainer

    from asr_workbench import training

    times: list[float] = []
    base = training._make_trainer_class() if trainer == "workbench" else Trainer
    timed = _timed_trainer(base, times, profile)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    saved = training._make_trainer_class
    training._make_trainer_class = lambda: timed  # train_in_process installs this class into train_ds
    try:
        if trainer == "workbench":
            training.train_in_process(cfg)
        else:
            train_ds.Trainer = timed
            train_ds.main(**cfg)
    finally:
        training._make_trainer_class = saved
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    return min(times[1:] or times), peak


def fine_tune(model: Path, data: Path, lines: list[str], note: str) -> None:
    """Epoch-2 throughput (as the plain-funasr yardstick times it): funasr's stock trainer at the recipe's
    settings, the workbench's trainer on the same resolved config, and the workbench's recommended settings."""
    ft_data = WORK / "ft-data"
    sub = lines[: (16 if SMALL else int(os.environ.get("FT_UTTS", 400)))]
    texts = dict(x.split(" ", 1) for x in (data / "text").read_text(encoding="utf-8").splitlines())
    for split, part in (("train", sub), ("dev", sub[:8])):
        (ft_data / split).mkdir(parents=True, exist_ok=True)
        (ft_data / split / "wav.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in part))
        (ft_data / split / "text").write_text("".join(f"{ln.split()[0]} {texts[ln.split()[0]]}\n" for ln in part),
                                              encoding="utf-8")
    rows = []
    recipe = {"batch_bins": 2000 if SMALL else 6000, "num_workers": 0 if SMALL else 4, "precision": "fp32"}
    settings = [("funasr's trainer (stock), recipe settings", "stock", recipe, False),
                ("workbench trainer, same config", "workbench", recipe, False),
                ("workbench, recommended settings", "workbench", {}, True)]
    base_rate = None
    for label, trainer, kw, rec in settings:
        try:
            p = finetune.plan(str(model), str(ft_data), str(WORK / f"ft-{len(rows)}"), max_epoch=2, keep_nbest_models=1,
                              device=DEV, recommended=rec, **kw)
            cfg = {**p.config, "output_dir": str(p.output_dir / "train")}
            cfg["train_conf"] = {**cfg["train_conf"], "validate_interval": 10**9, "save_checkpoint_interval": 10**9,
                                 "log_interval": 50}
            profile = OUT / "profile-train.txt"  # the first setting that trains (funasr's stock trainer on a GPU)
            epoch_s, peak = _train_epochs(cfg, trainer, None if profile.exists() else profile)
            rate = p.train.hours * 3600 / epoch_s
            if trainer == "stock":
                base_rate = rate
            ds = cfg["dataset_conf"]
            rows.append({"what": label, "batch frames": ds["batch_size"], "workers": ds.get("num_workers"),
                         "dtype": "bf16" if cfg["train_conf"].get("use_bf16") else "fp32",
                         "audio-s per s": round(rate, 1), "epoch s": round(epoch_s, 2), "peak GiB": round(peak, 1),
                         "vs stock recipe": round(rate / base_rate, 2) if base_rate else "-"})
            if p.recommendation and p.recommendation.measured:
                print("recommendation:", p.recommendation.reasons, p.recommendation.measured, flush=True)
                rows[-1]["what"] += " (" + "; ".join(f"{k} {v}" for k, v in p.recommendation.measured.items()) + ")"
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            rows.append({"what": label, "audio-s per s": f"error {e!r}"[:160]})
        print(rows[-1], flush=True)
    append_results("GPU fine-tune throughput, 2nd epoch", "bash bench/gpu.sh", rows,
                   note + f"; {len(sub)} training utterances, 2 epochs in this process, the 2nd timed (as the "
                   "plain-funasr yardstick times funasr's trainer)")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    n = 24 if SMALL else int(os.environ.get("N_UTTS", 3600))  # 1-20 s uniform, ~10.5 s mean: 3600 ~ 10.5 h
    t0 = time.perf_counter()
    data = mixed_set(Path(tempfile.gettempdir()) / f"gpu-mixed{n}", n, seed=1)
    lines = (data / "wav.scp").read_text().splitlines()
    (data / "wav_abs.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in lines))
    (data / "warm.scp").write_text("".join(f"{ln.split()[0]} {data / ln.split()[1]}\n" for ln in lines[:64]))
    from asr_workbench import audio as audio_mod

    audio_s = sum(audio_mod.probe(data / ln.split()[1]).duration_s for ln in lines)
    print(f"data: {n} utterances, {audio_s / 3600:.2f} h, made in {time.perf_counter() - t0:.0f} s", flush=True)
    model = large_arch(Path(tempfile.gettempdir()) / "paraformer-large-arch")
    note = (f"{'DRY RUN on CPU with a tiny architecture' if SMALL else 'Paraformer-large architecture, random weights (no hub reachable)'}; "
            f"{n} utterances, {audio_s / 3600:.2f} h of 1-20 s audio made from the demo clips; device {machine()}")
    parts = os.environ.get("PARTS", "infer,finetune").split(",")
    if "infer" in parts:
        inference(model, data, audio_s, note)
    if "finetune" in parts:
        fine_tune(model, data, lines, note)


if __name__ == "__main__":
    main()
