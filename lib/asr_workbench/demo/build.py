"""Build the embedded demo: synthetic corpus -> tiny Paraformer -> ModelScope-style model folder.

One command rebuilds everything shipped under ``demo/``::

    python -m asr_workbench.demo.build            # full build (<= 30 min on 2 CPU cores)
    python -m asr_workbench.demo.build --smoke --out /tmp/demo-smoke   # 1 epoch on a few utterances

Steps: synthesize base (pretraining) and target (fine-tuning) speech with
espeak-ng + sox; write Kaldi ``wav.scp``/``text`` and funasr jsonl; build the
character vocabulary; compute ``am.mvn`` with funasr's cmvn tool; train a ~2 M
parameter Paraformer from scratch with funasr's trainer (CPU fallback from
:mod:`asr_workbench.training`), average the best checkpoints; save the model
folder the way ModelScope lays one out; measure CER on every test set and the
fine-tuning story (target CER before/after a short fine-tune); write the
model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import datadir, training
from asr_workbench.fileio import atomic_write_json, atomic_write_text
from asr_workbench.modelhub import load_weights
from asr_workbench.demo import corpus
from asr_workbench.finetune.config import deep_merge
from asr_workbench.scoring import NORMALISER, corpus_cer

__all__ = ["BuildSizes", "FULL", "SMOKE", "MODEL_CONFIG", "FINETUNE_DEFAULTS", "DECODING_DEFAULTS",
           "build", "main"]

SEED = 2024


@dataclass(frozen=True)
class BuildSizes:
    """Utterance counts and training length of a build."""

    base_train: int
    base_dev: int
    base_test: int
    target_train: int
    target_dev: int
    target_test: int
    max_epoch: int
    finetune_epochs: int


FULL = BuildSizes(1800, 100, 40, 150, 25, 50, max_epoch=40, finetune_epochs=8)
SMOKE = BuildSizes(24, 6, 6, 8, 4, 4, max_epoch=1, finetune_epochs=1)

# The tiny Paraformer: Paraformer-large's architecture (SANM encoder, SANM decoder,
# CIF predictor v2, 80-mel LFR 7/6 frontend, SpecAugLFR) scaled down to ~2 M parameters.
MODEL_CONFIG: dict[str, Any] = {
    "model": "Paraformer",
    "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                   "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75},
    "encoder": "SANMEncoder",
    "encoder_conf": {"output_size": 128, "attention_heads": 4, "linear_units": 512, "num_blocks": 6,
                     "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
                     "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                     "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                     "selfattention_layer_type": "sanm"},
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {"attention_heads": 4, "linear_units": 512, "num_blocks": 2, "dropout_rate": 0.1,
                     "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
                     "src_attention_dropout_rate": 0.1, "att_layer_num": 2, "kernel_size": 11,
                     "sanm_shfit": 0},
    "predictor": "CifPredictorV2",
    "predictor_conf": {"idim": 128, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 7, "lfr_n": 6},
    "specaug": "SpecAugLFR",
    "specaug_conf": {"apply_time_warp": False, "time_warp_window": 5, "time_warp_mode": "bicubic",
                     "apply_freq_mask": True, "freq_mask_width_range": [0, 30], "lfr_rate": 6,
                     "num_freq_mask": 1, "apply_time_mask": True, "time_mask_width_range": [0, 12],
                     "num_time_mask": 1},
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": False},
    "dataset": "AudioDataset",
    "dataset_conf": {"index_ds": "IndexDSJsonl", "batch_sampler": "BatchSampler", "batch_type": "token",
                     "batch_size": 8000, "sort_size": 1024, "max_token_length": 2048,
                     "buffer_size": 1024, "shuffle": True, "num_workers": 1},
    "optim": "adam",
    "optim_conf": {"lr": 0.002},
    "scheduler": "warmuplr",
    "scheduler_conf": {"warmup_steps": 300},
    "train_conf": {"accum_grad": 1, "grad_clip": 5, "max_epoch": 40, "keep_nbest_models": 5,
                   "avg_nbest_model": 5, "avg_keep_nbest_models_type": "acc", "log_interval": 10,
                   "validate_interval": 100000, "save_checkpoint_interval": 100000, "resume": False},
    "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
    "normalize": None,
}

# What the workbench's fine-tuning notebook starts from (model folder's finetune.yaml):
# a short warm-up, so a few hundred steps of fine-tuning really move the model.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optim": "adam",
    "optim_conf": {"lr": 0.001},
    "scheduler": "warmuplr",
    "scheduler_conf": {"warmup_steps": 30},
    "dataset_conf": {"batch_type": "token", "batch_size": 4000, "num_workers": 1},
    "train_conf": {"max_epoch": 8, "accum_grad": 1, "keep_nbest_models": 3, "avg_nbest_model": 3,
                   "log_interval": 5, "grad_clip": 5},
}

# What the inference notebook starts from (model folder's decoding.yaml).
DECODING_DEFAULTS: dict[str, Any] = {"batch_size": 16, "beam_size": 1, "ctc_weight": 0.0}

CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"token_list": "tokens.json"},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}

SPECIAL_TOKENS = ["<blank>", "<s>", "</s>"]


@dataclass
class BuildReport:
    """What a build measured (written to the model card and ``build_report.json``)."""

    sizes: dict[str, int]
    audio_seconds: dict[str, float]
    vocab: str
    n_params: int = 0
    times_s: dict[str, float] = field(default_factory=dict)
    cer: dict[str, float] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    espeak: str = ""
    normaliser: str = NORMALISER


def _synth_split(name: str, utts: list[corpus.Utterance], data_dir: Path, jobs: int, seed: int) -> float:
    durations = corpus.synthesize(utts, data_dir / "audio", jobs=jobs, seed=seed)
    corpus.write_data_dir(data_dir, utts, "audio")
    print(f"  {name}: {len(utts)} utterances, {sum(durations.values()):.0f} s", flush=True)
    return sum(durations.values())


def make_corpus(out: Path, work: Path, sizes: BuildSizes, jobs: int) -> dict[str, float]:
    """Synthesize every split; shipped splits under ``out/data``, base train/dev under ``work``."""
    tv = dict(sentence=corpus.target_sentence, voices=corpus.TARGET_VOICES, snr_db=(4.0, 10.0))
    bv = dict(sentence=corpus.base_sentence, voices=corpus.BASE_VOICES)
    splits = {
        "base/train": (work / "data/base/train", corpus.make_utterances("base_tr_", sizes.base_train, SEED + 1, **bv)),
        "base/dev": (work / "data/base/dev", corpus.make_utterances("base_dv_", sizes.base_dev, SEED + 2, **bv)),
        "base/test": (out / "data/base/test", corpus.make_utterances("base_ts_", sizes.base_test, SEED + 3, **bv)),
        "target/train": (out / "data/target/train", corpus.make_utterances("tgt_tr_", sizes.target_train, SEED + 4, **tv)),
        "target/dev": (out / "data/target/dev", corpus.make_utterances("tgt_dv_", sizes.target_dev, SEED + 5, **tv)),
        "target/test": (out / "data/target/test", corpus.make_utterances("tgt_ts_", sizes.target_test, SEED + 6, **tv)),
    }
    seconds = {}
    for i, (name, (d, utts)) in enumerate(splits.items()):
        if d.exists():
            shutil.rmtree(d)
        seconds[name] = _synth_split(name, utts, d, jobs, seed=SEED * 100 + i * 10000)
    return seconds


def build_vocab(text_file: Path) -> list[str]:
    """Characters of the training transcripts, with funasr's special tokens around them."""
    chars: Counter[str] = Counter()
    for line in text_file.read_text(encoding="utf-8").splitlines():
        _, _, txt = line.partition(" ")
        chars.update(txt.strip())
    return SPECIAL_TOKENS + sorted(chars) + ["<unk>"]


def compute_cmvn(config: dict[str, Any], train_jsonl: Path, work: Path) -> Path:
    """``am.mvn`` from the training audio with funasr's own cmvn tool."""
    import funasr.bin.compute_audio_cmvn as cmvn_tool

    kwargs = copy.deepcopy(config)
    kwargs["frontend_conf"].pop("cmvn_file", None)
    kwargs["train_data_set_list"] = str(train_jsonl)
    kwargs["cmvn_file"] = str(work / "cmvn" / "cmvn.json")
    (work / "cmvn").mkdir(parents=True, exist_ok=True)
    cmvn_tool.main(**kwargs)
    return work / "cmvn" / "am.mvn"


def export_model_folder(train_dir: Path, model_dir: Path, config: dict[str, Any], vocab: list[str],
                        am_mvn: Path, checkpoint: str) -> int:
    """Lay out ``model_dir`` like a ModelScope Paraformer download (replacing it whole once every file is written:
    an interrupted build leaves the shipped model as it was); return the parameter count."""
    import torch

    final, model_dir = model_dir, model_dir.with_name(model_dir.name + ".partial")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    state = load_weights(train_dir / checkpoint)
    torch.save(state, model_dir / "model.pt")
    shipped = copy.deepcopy(config)
    shipped["tokenizer_conf"].pop("token_list", None)
    shipped["frontend_conf"].pop("cmvn_file", None)
    # the dither it was trained with (WavFrontend's default), written out: the workbench adds it at inference as
    # seeded noise (decode.trained_dither); without it the model hears digital silence it never heard in training
    shipped["frontend_conf"].setdefault("dither", 1.0)
    for k in ("train_data_set_list", "valid_data_set_list", "output_dir", "init_param", "device", "ncpu"):
        shipped.pop(k, None)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(shipped, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (model_dir / "tokens.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    shutil.copyfile(am_mvn, model_dir / "am.mvn")
    (model_dir / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=2), encoding="utf-8")
    (model_dir / "decoding.yaml").write_text(yaml.safe_dump(DECODING_DEFAULTS, sort_keys=False), encoding="utf-8")
    (model_dir / "finetune.yaml").write_text(yaml.safe_dump(FINETUNE_DEFAULTS, sort_keys=False), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    model_dir.rename(final)
    return sum(int(v.numel()) for v in state.values() if v.is_floating_point())


def score_dir(model_dir: Path, data_dir: Path, ncpu: int) -> float:
    """Corpus CER of ``model_dir`` on a shipped test folder."""
    from asr_workbench import decode

    wavs = datadir.read_table(data_dir / "wav.scp")
    refs = datadir.read_table(data_dir / "text")
    model = decode.load_model(str(model_dir), device="cpu", ncpu=ncpu)
    items = [(k, str(data_dir / p)) for k, p in wavs.items()]
    hyps = decode.transcribe(model, items, batch_size=16)
    return corpus_cer([refs[h.key] for h in hyps], [h.text for h in hyps]).cer


def _train_config(base: dict[str, Any], vocab_file: Path, am_mvn: Path, train: Path, dev: Path,
                  ncpu: int, **over: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["tokenizer_conf"]["token_list"] = str(vocab_file)
    cfg["frontend_conf"]["cmvn_file"] = str(am_mvn)
    cfg.update(train_data_set_list=str(train), valid_data_set_list=str(dev), ncpu=ncpu, seed=SEED)
    return deep_merge(cfg, over)


def finetune_check(model_dir: Path, out: Path, work: Path, epochs: int, ncpu: int) -> dict[str, Any]:
    """Fine-tune the exported model on target/train through the workbench's own fine-tuning path
    (the model's finetune.yaml, funasr's trainer); CER on the test sets before/after."""
    from asr_workbench import finetune

    ft_dir = work / "finetune_check"
    if ft_dir.exists():
        shutil.rmtree(ft_dir)
    plan = finetune.plan(str(model_dir), str(out / "data/target"), str(ft_dir), max_epoch=epochs, seed=SEED,
                         device="cpu")
    result = finetune.run(plan, live=False)
    return {"epochs": epochs, "seconds": round(result.seconds, 1), "checkpoint": result.checkpoint,
            "target_test_cer_after": round(score_dir(result.model_dir, out / "data/target/test", ncpu), 4),
            "base_test_cer_after": round(score_dir(result.model_dir, out / "data/base/test", ncpu), 4)}


def _progress_line(line: str) -> None:
    if "train, rank" in line or "average_checkpoints" in line or "Error" in line or "Traceback" in line:
        print("    " + line[-220:], flush=True)


def build(out: Path, work: Path, sizes: BuildSizes, jobs: int = 2, ncpu: int = 2) -> BuildReport:
    """Run every step; returns what it measured. ``out`` gets ``model/`` and ``data/``."""
    corpus.check_tools()
    random.seed(SEED)
    out, work = out.resolve(), work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    print("[1/6] synthesizing speech (espeak-ng + sox)", flush=True)
    seconds = make_corpus(out, work, sizes, jobs)
    t_corpus = time.time() - t_start

    print("[2/6] vocabulary, jsonl, am.mvn", flush=True)
    vocab = build_vocab(work / "data/base/train/text")
    vocab_file = work / "tokens.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    train_jl = datadir.write_jsonl_from_dir(work / "data/base/train", work / "jsonl/base_train.jsonl")
    dev_jl = datadir.write_jsonl_from_dir(work / "data/base/dev", work / "jsonl/base_dev.jsonl")
    am_mvn = compute_cmvn(MODEL_CONFIG, train_jl, work)

    print(f"[3/6] training the tiny Paraformer ({sizes.max_epoch} epochs, funasr trainer)", flush=True)
    cfg = _train_config(MODEL_CONFIG, vocab_file, am_mvn, train_jl, dev_jl, ncpu,
                        train_conf={"max_epoch": sizes.max_epoch,
                                    "avg_nbest_model": min(5, sizes.max_epoch),
                                    "keep_nbest_models": min(5, sizes.max_epoch)})
    train_dir = work / "train"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    t0 = time.time()
    training.launch(cfg, train_dir, on_line=_progress_line)
    t_train = time.time() - t0

    print("[4/6] exporting the model folder", flush=True)
    model_dir = out / "model"
    avg = f"model.pt.avg{cfg['train_conf']['avg_nbest_model']}"
    n_params = export_model_folder(train_dir, model_dir, cfg, vocab, am_mvn, avg)

    print("[5/6] scoring the test sets", flush=True)
    cer = {name: round(score_dir(model_dir, out / "data" / name, ncpu), 4)
           for name in ("base/test", "target/test", "target/dev")}
    print(f"  CER: {cer}", flush=True)

    print("[6/6] fine-tuning check on target/train", flush=True)
    ft = finetune_check(model_dir, out, work, sizes.finetune_epochs, ncpu)
    ft["target_test_cer_before"] = cer["target/test"]
    print(f"  fine-tune: {ft}", flush=True)

    report = BuildReport(
        sizes=asdict(sizes), audio_seconds={k: round(v, 1) for k, v in seconds.items()},
        vocab="".join(vocab[len(SPECIAL_TOKENS):-1]), n_params=n_params,
        times_s={"corpus": round(t_corpus, 1), "train": round(t_train, 1),
                 "total": round(time.time() - t_start, 1)},
        cer=cer, finetune=ft, espeak=corpus.espeak_version(),
    )
    atomic_write_json(out / "build_report.json", asdict(report))
    atomic_write_text(model_dir / "README.md", model_card(report))
    return report


def rescore(out: Path, work: Path, ncpu: int = 2) -> BuildReport:
    """Measure an existing build again (CER of every test set, the fine-tuning check) and rewrite
    ``build_report.json`` and the model card: for a change of decoding or fine-tuning code, not of weights."""
    out, work = out.resolve(), work.resolve()
    report = BuildReport(**json.loads((out / "build_report.json").read_text(encoding="utf-8")))
    model_dir = out / "model"
    report.cer = {name: round(score_dir(model_dir, out / "data" / name, ncpu), 4) for name in report.cer}
    ft = finetune_check(model_dir, out, work, report.finetune["epochs"], ncpu)
    ft["target_test_cer_before"] = report.cer["target/test"]
    report.finetune = ft
    report.normaliser = NORMALISER  # the figures above were measured with today's normaliser
    atomic_write_json(out / "build_report.json", asdict(report))
    atomic_write_text(model_dir / "README.md", model_card(report))
    return report


def model_card(r: BuildReport) -> str:
    """The model folder's README.md."""
    cer = "\n".join(f"| {k} | {v * 100:.2f} % |" for k, v in r.cer.items())
    ft = r.finetune
    return f"""# asr-workbench tiny Paraformer (embedded demo model)

A {r.n_params / 1e6:.2f} M-parameter Paraformer (Paraformer-large's architecture, scaled down:
SANMEncoder 6 x 128, ParaformerSANMDecoder 2 blocks, CifPredictorV2, WavFrontend 80-mel LFR 7/6,
CharTokenizer, SpecAugLFR) trained from scratch with funasr's trainer on synthetic Mandarin speech.
It exists so the workbench runs with no model hub. It is a toy: it knows only the characters below.

Laid out like a ModelScope download: `config.yaml`, `model.pt` (weights only), `tokens.json`, `am.mvn`
(funasr's `compute_audio_cmvn`), `configuration.json` (`file_path_metas`), plus `decoding.yaml` and
`finetune.yaml` (the defaults the workbench reads). Load it with
`funasr.AutoModel(model="demo/model", disable_update=True, device="cpu")`.

## Data
- Synthesized with {r.espeak} (`-v cmn-latn-pinyin`, variants `+m1 +f2` and default for base;
  `+m3 +f3 +f4`, ~1.5x faster, brown noise + hum at 4-10 dB SNR for target), converted by sox to
  16 kHz mono 16-bit. Templated sentences: dates, times, phone numbers, everyday phrases; numbers
  written as the Hanzi espeak-ng speaks.
- Utterances: {r.sizes}. Audio seconds: {r.audio_seconds}.
- Trained on `base/train` only ({r.sizes['max_epoch']} epochs, average of the 5 best checkpoints by
  dev accuracy). `target/*` is a shifted domain for the fine-tuning demo.

## Vocabulary
The model knows exactly these {len(r.vocab)} characters; anything else becomes `<unk>`:

{r.vocab}

## CER (normaliser: {r.normaliser})
| test set | CER |
|---|---|
{cer}

Fine-tuning check: {ft.get('epochs')} epochs on `target/train` with `finetune.yaml`
({ft.get('seconds')} s on {os.cpu_count()} CPU cores): target/test CER
{ft.get('target_test_cer_before', 0) * 100:.2f} % -> {ft.get('target_test_cer_after', 0) * 100:.2f} %,
base/test CER -> {ft.get('base_test_cer_after', 0) * 100:.2f} % (forgetting).

Build time: {r.times_s} seconds on {platform.machine()} with {os.cpu_count()} CPU cores.

## Rebuild
    python -m asr_workbench.demo.build   # or: make demo-build

Seeds are fixed; the same espeak-ng version gives the same audio.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m asr_workbench.demo.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("demo"), help="where model/ and data/ go (default: demo)")
    p.add_argument("--work", type=Path, default=Path("build/demo"), help="scratch folder (default: build/demo)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 epoch: checks the pipeline only")
    p.add_argument("--epochs", type=int, default=None, help="override the number of training epochs")
    p.add_argument("--jobs", type=int, default=2, help="synthesis processes")
    p.add_argument("--ncpu", type=int, default=2, help="torch threads for training and decoding")
    p.add_argument("--rescore", action="store_true",
                   help="keep the model and data in --out; measure the CER figures and the fine-tuning check again")
    a = p.parse_args(argv)
    if a.rescore:
        report = rescore(a.out, a.work, a.ncpu)
        print(json.dumps({"cer": report.cer, "finetune": report.finetune}, ensure_ascii=False, indent=2))
        return 0
    sizes = SMOKE if a.smoke else FULL
    if a.epochs:
        sizes = BuildSizes(**{**asdict(sizes), "max_epoch": a.epochs})
    try:
        report = build(a.out, a.work, sizes, a.jobs, a.ncpu)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"cer": report.cer, "finetune": report.finetune, "times_s": report.times_s},
                     ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
