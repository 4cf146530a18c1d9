"""The fine-tuning notebook's calls: :func:`plan` (check data, resolve config, show the schedule) then :func:`run`.

``plan`` does everything that can fail or mislead before compute is spent:
validates ``data_path/{train,dev}``, lists what funasr would drop silently and the
characters the model does not know, layers the config (model ``config.yaml`` <-
``finetune.yaml`` <- parameters <- ``finetune_overrides``), writes it to
``output_dir/config.yaml`` and computes the planned learning-rate schedule.
``run`` trains with funasr's trainer in a subprocess (``output_dir/train/``),
computes dev CER with the inference pipeline, and exports a self-contained
model folder ``output_dir/model/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from asr_workbench import decode, infer, modelhub, paths, runs, scoring, training
from asr_workbench.fileio import atomic_write_text
from asr_workbench.processes import usable_cores
from asr_workbench.finetune import config as fconfig
from asr_workbench.finetune import data as fdata
from asr_workbench.finetune import export
from asr_workbench.finetune.progress import Progress
from asr_workbench.finetune.sizing import Recommendation, recommend

__all__ = ["FinetunePlan", "FinetuneResult", "Recommendation", "plan", "run", "recommend", "make_data_path",
           "data_path_from"]

make_data_path = fdata.make_data_path


def data_path_from(audio_dir: str | None, transcripts: str | None, data_path: str, dev_fraction: float = 0.1,
                   seed: int = 0) -> str:
    """``data_path`` itself, or - when ``audio_dir`` and ``transcripts`` are given - a ``{train,dev}`` folder
    built there from a folder of audio and a ``key text`` table with a seeded dev split."""
    if not audio_dir:
        return data_path
    if not transcripts:
        raise ValueError("audio_dir needs transcripts (a 'key text' file whose keys are the audio file names)")
    out, n_train, n_dev = make_data_path(paths.resolve(audio_dir), paths.resolve(transcripts), paths.resolve(data_path),
                                         dev_fraction, seed)
    missing = fdata.missing_audio(out)
    print(f"built {out}: {n_train} train / {n_dev} dev utterances"
          + (f"; {len(missing)} id(s) of {transcripts} have no audio file ({', '.join(missing[:5])}"
             f"{', ...' if len(missing) > 5 else ''}: all in {out / fdata.MISSING_AUDIO})" if missing else ""))
    return str(out)


@dataclass
class FinetunePlan:
    """Everything decided before training."""

    output_dir: Path
    base: modelhub.ModelFolder
    config: dict[str, Any]
    train: fdata.SplitData
    dev: fdata.SplitData
    nproc: int
    device: str
    steps_per_epoch: int
    total_steps: int
    lr: list[float]
    warnings: list[str] = field(default_factory=list)
    dev_cer: str = "end"
    strip_optimizer: bool = False
    checkpoint: str = "auto"
    recommendation: Recommendation | None = None  # measured settings for this machine, when asked for


@dataclass
class FinetuneResult:
    """What a fine-tune produced."""

    output_dir: Path
    model_dir: Path
    checkpoint: str
    dev_cer: dict[str, float | None]  # checkpoint name -> dev CER (the base model under "base"; None: nothing scored)
    progress: Progress
    seconds: float
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # found in training and after it (the plan's are the plan's)
    dev_finetuned: infer.InferResult | None = None  # the dev set decoded by the exported model (dev/finetuned/)
    dev_base: infer.InferResult | None = None  # ... and by the base model (dev/base/)


def _device_and_nproc(device: str, num_gpus: int) -> tuple[str, int]:
    dev = decode.resolve_device(device)
    if dev.startswith("cuda"):
        import torch

        return dev, max(1, min(int(num_gpus), torch.cuda.device_count()))
    return dev, max(1, int(num_gpus)) if dev == "cpu" and int(num_gpus) > 1 else 1


def plan(
    model: str,
    data_path: str,
    output_dir: str,
    dataset_type: str = "small",
    batch_bins: int | None = None,
    max_epoch: int | None = None,
    accum_grad: int | None = None,
    keep_nbest_models: int | None = None,
    optim: str | None = None,
    lr: float | None = None,
    scheduler: str | None = None,
    scheduler_conf: dict[str, Any] | None = None,
    specaug: str | None = None,
    specaug_conf: dict[str, Any] | None = None,
    finetune_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    num_gpus: int = 1,
    cache_dir: str | None = None,
    precision: str | None = None,
    resume: bool = False,
    early_stopping_patience: int | None = None,
    freeze_param: str | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    max_duration_s: float | None = None,
    on_bad_input: str = "skip",
    dev_cer: str = "end",
    strip_optimizer: bool = False,
    checkpoint: str = "auto",
    recommended: bool = False,
    model_revision: str | None = None,
) -> FinetunePlan:
    """Validate, resolve and write the fine-tuning config; nothing is trained yet.

    ``recommended``: measure the model on this machine (:func:`recommend`) and take its ``batch_bins``,
    loader workers and precision wherever these are left at None (values given here win).

    ``num_gpus`` > 1 launches ``torchrun`` (on CPU: that many gloo processes, for testing).
    ``dev_cer``: ``end`` (every kept checkpoint after training) or ``epoch`` (each epoch as it is saved).
    """
    decode.import_funasr()  # its import-time notice kept out of the report
    from funasr.download.download_model_from_hub import download_model

    decode.check_device(device)  # cuda on a machine without one: funasr's trainer would run on the CPU, unsaid
    base = modelhub.open_model(model, cache_dir=cache_dir, revision=model_revision)
    _check_trainable(base, finetune_overrides)
    # the base's weights as they are now, hashed while the data is read: an evaluation compares against this base,
    # which may be replaced later (the fine-tune it came from rerun, an updated download)
    base_sha256 = runs.sha256_in_background(base.weights)
    data = paths.resolve(data_path)
    out = runs.check_output_dir(output_dir, "finetune", protect=[base.path])
    kept = {"the base model": base.path, "data_path": data,
            **{f"the {name} split": data / name for name in ("train", "dev", "validation", "valid")}}
    for replaced in ("train", "model", ".eval", "dev"):  # what a fresh run removes before training
        folder = (out / replaced).resolve()
        for what, path in kept.items():
            if path.resolve() == folder or folder in path.resolve().parents:
                raise ValueError(f"{what} {path} is {out / replaced} or inside it, which a fine-tune into {out} "
                                 "replaces; fine-tune into another output_dir (e.g. outputs/<name>)")
    dev_name, nproc = _device_and_nproc(device, num_gpus)
    rec = recommend(str(base.path), dev_name, cache_dir=cache_dir, nproc=nproc) if recommended else None
    if rec is not None:
        batch_bins = rec.batch_bins(dataset_type) if batch_bins is None else batch_bins
        num_workers = rec.num_workers if num_workers is None else num_workers
        precision = rec.precision if precision is None else precision
    precision = precision or "fp32"
    early: list[str] = list(base.warnings)  # known before the data is read: the base folder's (no am.mvn...)
    if precision != "fp32" and not dev_name.startswith("cuda"):
        early.append(f"precision {precision} has no effect on {dev_name}: funasr's trainer autocasts on CUDA only "
                     "(its config keeps the setting for a GPU run); this run trains in fp32")
    params = fconfig.FinetuneParams(
        dataset_type=dataset_type, batch_bins=batch_bins, max_epoch=max_epoch, accum_grad=accum_grad,
        keep_nbest_models=keep_nbest_models, optim=optim, lr=lr, scheduler=scheduler, scheduler_conf=scheduler_conf,
        specaug=specaug, specaug_conf=specaug_conf, precision=precision, resume=resume,
        early_stopping_patience=early_stopping_patience, freeze_param=freeze_param, seed=seed,
        num_workers=num_workers, max_duration_s=max_duration_s)
    base_kwargs = download_model(model=str(base.path), is_training=True)
    probe_cfg = fconfig.build_config(base, base_kwargs, params, finetune_overrides)
    _check_freeze(probe_cfg, base)
    resuming = bool((probe_cfg.get("train_conf") or {}).get("resume"))  # the parameter, or finetune_overrides
    early += _earlier_run(out, resuming)
    # the lists the interrupted run trained on (their hashes): a resume on other data is said, or refused
    before = (runs.read_config(out / "config.yaml").get("workbench") or {}).get("lists_sha256")
    out = runs.prepare_output_dir(output_dir, "finetune", protect=[base.path])  # the settings are sound: now written
    lists = out / "lists"
    kept = lists.with_name("lists.before")  # the earlier run's lists, back in place if this plan refuses
    held = contextlib.ExitStack()  # the folder is this plan's while it writes lists/ and config.yaml
    held.enter_context(runs.hold_folder(out))
    if lists.is_dir():  # a refused plan must not leave the earlier run's config naming lists it did not train on
        shutil.rmtree(kept, ignore_errors=True)
        lists.rename(kept)
    try:
        train = fdata.prepare_split(fdata.find_split(data, "train"), "train", lists, base.tokens,
                                    probe_cfg.get("dataset_conf", {}), on_bad_input, base.sample_rate)
        dev = fdata.prepare_split(fdata.find_split(data, "dev"), "dev", lists, base.tokens,
                                  probe_cfg.get("dataset_conf", {}), on_bad_input, base.sample_rate)
        cfg = fconfig.build_config(base, base_kwargs, params, finetune_overrides, n_train=train.n_utts)
        train_list = str(train.jsonl)
        if dataset_type == "large":
            train_list = str(fdata.write_shards(train, int(cfg["dataset_conf"]["data_split_num"]), lists))
        cfg.update(train_data_set_list=train_list, valid_data_set_list=str(dev.jsonl),
                   init_param=str(base.weights),
                   device="cuda" if dev_name.startswith("cuda") else "cpu", ncpu=1 if nproc > 1 else usable_cores())
        tc = cfg.get("train_conf", {})
        dconf = cfg["dataset_conf"]
        batch, batch_type = int(dconf.get("batch_size", 2000)), dconf.get("batch_type", "token")
        if batch_type != "example":
            _check_batch_fits(batch, batch_bins, dataset_type, (train, dev))
        accum, shards = int(tc.get("accum_grad", 1)), int(dconf.get("data_split_num") or 1)
        batches = fconfig.planned_batches(train.frames(), batch, nproc, batch_type, shards)
        per_epoch, total = fconfig.planned_steps(batches, accum, int(tc.get("max_epoch", 1)), shards)
        each = (" per process" if nproc > 1 else "") + (f" and shard ({shards} shards an epoch)" if shards > 1 else "")
        if per_epoch == 0:
            raise ValueError(f"accum_grad {accum} with about {batches} batch(es) per epoch{each}: funasr's trainer updates "
                             f"the weights after every {accum}th batch and clears the gradients at each epoch's start, so "
                             "this fine-tune would never change the model; lower accum_grad or batch_bins")
        warnings = early
        if batches % accum:
            warnings.append(f"about {batches % accum} of {batches} batches per epoch{each} are computed but never applied: "
                            f"funasr's trainer updates after every {accum}th batch and drops the rest at the next epoch "
                            f"(an accum_grad that divides {batches}, or a smaller one, wastes nothing)")
        warnings += _checkpoint_warnings(checkpoint, tc)
        warnings += _resume_warnings(cfg, out / "train") if tc.get("resume") else []
        # the lists as trained: a resume on other data mixes two trainings in one model and, with another dev set,
        # ranks the earlier epochs' checkpoints by one set and the new ones by another (the best and the average)
        lists_sha256 = {split.name: fdata.list_sha256(split.jsonl) for split in (train, dev)}
        if tc.get("resume") and (out / "train" / "model.pt").is_file() and isinstance(before, dict):
            if before.get("dev") and before["dev"] != lists_sha256["dev"]:
                raise ValueError(f"resume: the dev set differs from the one the interrupted run was ranking its checkpoints "
                                 f"by ({dev.folder}): the best and averaged checkpoints would mix two rankings; resume with "
                                 "the same dev set, or start afresh (resume: false)")
            if before.get("train") and before["train"] != lists_sha256["train"]:
                warnings.append(f"resume: the training data differs from the interrupted run's ({train.folder}): the "
                                "epochs already trained saw the earlier data, the rest will see this")
        done = _epochs_done(out / "train") if tc.get("resume") else 0
        if done >= int(tc.get("max_epoch", 1)):
            warnings.append(f"resume: {out / 'train'} already holds {done} epoch(s) and max_epoch is {tc.get('max_epoch', 1)}: "
                            "funasr's trainer will train nothing (the run re-exports and re-scores what is there); raise "
                            "max_epoch to train on")
        schedule = fconfig.lr_schedule(cfg, total)
        w = fconfig.warmup_warning(cfg, schedule)
        if w:
            warnings.append(w)
        trained_audio = {os.path.realpath(u.audio) for u in train.dataset.scored}
        shared = [u.audio for u in dev.dataset.scored if os.path.realpath(u.audio) in trained_audio]
        if shared:  # the checkpoints are chosen (and averaged) by dev accuracy: on training audio it rewards memorising
            warnings.append(f"{len(shared)} of {len(dev.dataset.scored)} dev utterances are train audio too (e.g. "
                            f"{shared[0]}): the best checkpoints are chosen by dev accuracy, which then rewards "
                            "memorising; hold dev out of train")
        missing = fdata.missing_audio(data)
        if missing:  # a data_path make_data_path built: transcripts it found no audio file for are not trained on
            warnings.append(f"{len(missing)} transcript id(s) have no audio file and are not in train or dev (e.g. "
                            f"{missing[0]}; all in {data / fdata.MISSING_AUDIO})")
        if train.dropped or dev.dropped:
            warnings.append(f"funasr would silently skip {len(train.dropped)} train and {len(dev.dropped)} dev utterance(s) "
                            "(too long; see the dropped table); raise max_duration_s or cut them")
        unreadable = [i for split in (train, dev) for i in split.dataset.report.errors if i.code == "undecodable_audio"]
        if unreadable:
            warnings.append(f"{len(unreadable)} audio file(s) cannot be decoded to their end and are left out (funasr's "
                            f"trainer would stop at them mid-epoch), e.g. {unreadable[0].where}: {unreadable[0].reason}")
        if train.marks or dev.marks:
            listed = " ".join(f"{c}({n})" for c, n in (train.marks + dev.marks).most_common(20))
            warnings.append(f"{sum((train.marks + dev.marks).values())} tags (<NOISE>, [LAUGHTER]: not scored), punctuation "
                            f"marks and symbols the model's vocabulary lacks are left out of the training targets (funasr "
                            f"would train each as <unk>, or a tag's letters): {listed}")
        converted = [i for split in (train, dev) for i in split.dataset.report.issues if i.code in _TEXT_READ_CODES]
        if converted:  # a transcript file read through a guess: what is trained should be looked at once
            warnings.append(f"{len(converted)} transcript file problem(s) were read around (encoding, line ends), e.g. "
                            f"{converted[0].where}: {converted[0].reason.split('. Convert')[0]}; the training targets are "
                            f"in {out / 'lists'}")
        if train.oov:
            listed = " ".join(f"{c}({n})" for c, n in train.oov.most_common(30))
            warnings.append(f"{sum(train.oov.values())} transcript tokens are not in the model's vocabulary and train as "
                            f"<unk>: {listed}")
        runs.write_config(out, {**cfg, "workbench": {"model": model, "model_dir": str(base.path), "cache_dir": cache_dir,
                                                     "model_revision": model_revision, "lists_sha256": lists_sha256,
                                                     "model_sha256": base_sha256(),
                                                     "data_path": str(data), "dataset_type": dataset_type,
                                                     "batch_bins": batch_bins, "nproc": nproc, "device": dev_name,
                                                     "steps_per_epoch": per_epoch, "total_steps": total,
                                                     "warnings": warnings,
                                                     "recommended": rec.reasons if rec else None}})
    except BaseException:  # refused (or interrupted): the earlier run's lists stay as they were
        if kept.is_dir():
            shutil.rmtree(lists, ignore_errors=True)
            kept.rename(lists)
        raise
    finally:
        held.close()
    shutil.rmtree(kept, ignore_errors=True)
    return FinetunePlan(out, base, cfg, train, dev, nproc, dev_name, per_epoch, total,
                        schedule, warnings, dev_cer, strip_optimizer, checkpoint, rec)


# layers with one row per token: a tokens file of another length than these is another model's vocabulary
_VOCAB_LAYERS = ("decoder.output_layer.weight", "decoder.embed.0.weight", "ctc.ctc_lo.weight")
# model classes funasr's AudioDataset cannot feed: their forward() needs hotword lists it does not make
_HOTWORD_MODELS = ("SeacoParaformer", "ContextualParaformer")


def _check_trainable(base: modelhub.ModelFolder, overrides: dict[str, Any] | None) -> None:
    """Fail before training for a base funasr's trainer would quietly retrain from scratch in part (tokens that are
    not its weights' vocabulary: funasr re-initialises those layers) or fail on after start-up (hotword models
    with a dataset that makes no hotword lists)."""
    kind = str(base.config.get("model", ""))
    dataset = (overrides or {}).get("dataset") or base.finetune.get("dataset") or base.config.get("dataset")
    if kind in _HOTWORD_MODELS and dataset != "AudioDatasetHotword":
        raise ValueError(f"{base.path / 'config.yaml'}: model {kind} needs hotword lists in every training batch, "
                         f"which funasr's {dataset or 'AudioDataset'} does not make (its forward() fails after "
                         "start-up); fine-tune the plain Paraformer it is built on, or name funasr's hotword dataset "
                         "(finetune_overrides: {dataset: AudioDatasetHotword}; not checked by the workbench)")
    if not base.tokens or base.weights is None or not base.weights.is_file():
        return
    state = modelhub.load_weights(base.weights, mmap=True)
    for name in _VOCAB_LAYERS:
        rows = state.get(name, state.get(f"module.{name}"))
        if rows is not None and rows.shape[0] != len(base.tokens):
            raise ValueError(f"{base.path}: the tokens file lists {len(base.tokens)} tokens, but {base.weights.name}'s "
                             f"{name} has {rows.shape[0]} rows: tokens and weights are not one model's (funasr would "
                             "re-initialise the layers they disagree on and train them from nothing); use the tokens "
                             "file the weights were trained with")


def _check_batch_fits(batch: int, batch_bins: int | None, dataset_type: str,
                      splits: tuple[fdata.SplitData, ...]) -> None:
    """funasr's sampler emits an empty batch (and the model fails with "missing 4 required positional
    arguments") when the shortest utterance of a sort buffer is longer than the batch; for dev only after a whole
    training epoch."""
    for split in splits:
        if not split.trained:
            continue
        shortest = min(split.trained, key=lambda u: u.duration_s)
        frames = int(shortest.duration_s * 100)
        if batch < frames:
            given = (f"batch_bins {batch_bins} ({'frames' if dataset_type == 'small' else 'ms of audio'})"
                     if batch_bins is not None else "dataset_conf.batch_size (finetune.yaml or finetune_overrides)")
            raise ValueError(f"{given} makes batches of {batch} frames, shorter than the shortest {split.name} "
                             f"utterance ({shortest.key}, {shortest.where}: {frames} frames of 10 ms): funasr would "
                             "make an empty batch and fail; raise batch_bins")


# data report codes of a transcript file read through a conversion or a guess
_TEXT_READ_CODES = ("gbk_encoding", "utf16_encoding", "not_utf8", "carriage_return", "undecodable_transcript")


def _resume_warnings(cfg: dict[str, Any], train_dir: Path) -> list[str]:
    """What a resumed run will not change: funasr restores the optimizer and scheduler state saved in
    ``train/model.pt``, so another lr, optimizer or schedule than the interrupted run's has no effect (its config
    and model card would claim it had)."""
    saved_file = train_dir / "config.yaml"
    if not saved_file.is_file() or not (train_dir / "model.pt").is_file():  # no checkpoint yet: nothing is restored
        return []
    saved = runs.read_config(saved_file)
    changed = [f"{k} {saved.get(k)!r} -> {cfg.get(k)!r}" for k in ("optim", "optim_conf", "scheduler", "scheduler_conf")
               if saved.get(k) != cfg.get(k)]
    if not changed:
        return []
    return [f"resume: funasr's trainer restores the optimizer and scheduler state of {train_dir / 'model.pt'}, so "
            f"these changes since that run have no effect: {'; '.join(changed)}. Set resume: false to train with them "
            "(from the base model again)"]


def _check_freeze(cfg: dict[str, Any], base: modelhub.ModelFolder) -> None:
    """A ``freeze_param`` prefix (comma-separated, as the config builder left it) that names no weight of the base
    is a ValueError: a typo froze nothing, unsaid."""
    frozen = cfg.get("freeze_param")
    if not frozen:
        return
    names = list(modelhub.load_weights(base.weights, mmap=True)) if base.weights else []
    unmatched = [t for t in frozen.split(",") if not any(k == t or k.startswith(t + ".") for k in names)]
    if unmatched and names:
        raise ValueError(f"freeze_param {frozen!r}: {', '.join(map(repr, unmatched))} name(s) no weight of "
                         f"{base.weights}; its weights start with {', '.join(sorted({k.split('.')[0] for k in names}))}")


def _checkpoint_warnings(checkpoint: str, tc: dict[str, Any]) -> list[str]:
    """Check ``checkpoint`` against what this run will write (fails before training, not after it)."""
    m = re.fullmatch(r"auto|model|model\.pt\.(best|avg(\d+)|ep(\d+)(\.\d+)?)", str(checkpoint))
    if not m:
        raise ValueError(f"checkpoint must be auto, model.pt.best, model.pt.avg<n>, model.pt.ep<k> or "
                         f"model.pt.ep<k>.<step>, got {checkpoint!r}")
    # funasr's trainer averages 10 when the config does not say
    avg_n, max_epoch = int(tc.get("avg_nbest_model", 10) or 0), int(tc.get("max_epoch") or 1)
    if m.group(2) and int(m.group(2)) != avg_n:
        raise ValueError(f"checkpoint {checkpoint}: this run averages its {avg_n or 'no'} best checkpoints "
                         f"(keep_nbest_models), so it writes model.pt.avg{avg_n} (or use auto)")
    if m.group(3) and int(m.group(3)) > max_epoch:
        raise ValueError(f"checkpoint {checkpoint}: the run has only {max_epoch} epoch(s)")
    out = []
    if m.group(3):
        out.append(f"checkpoint {checkpoint} is kept only if it is among the {tc.get('keep_nbest_models')} best "
                   "(keep_nbest_models); otherwise the run falls back to auto")
    if avg_n > max_epoch:
        out.append(f"keep_nbest_models {avg_n} > max_epoch {max_epoch}: one checkpoint per epoch, so model.pt.avg{avg_n} "
                   f"averages at most {max_epoch}")
    return out


def _earlier_run(out: Path, resume: bool) -> list[str]:
    """What a fine-tune into ``out`` does to the one already there. A fresh run deletes it: an unfinished one (epochs
    in train/, no model/ exported: interrupted, perhaps in the export after hours of training) is refused unless
    resumed; a finished one is said. A resume needs a readable train/model.pt (funasr writes it in place: a run
    killed while saving leaves it cut short; the last model.pt.epN holds the same state)."""
    train_dir = out / "train"
    epochs = [n for n in export.list_checkpoints(train_dir) if n.startswith("model.pt.ep")]  # in epoch order
    last = train_dir / "model.pt"
    if resume:
        if not last.is_file():
            return [f"resume: {train_dir} holds no checkpoint to continue (model.pt): this run trains from the base "
                    "model"] if not epochs else []
        try:
            modelhub.load_weights(last, mmap=True)
        except modelhub.ModelError as e:
            raise ValueError(f"resume: {last} cannot be read ({e}); a run killed while saving it leaves it cut "
                             + (f"short: copy {epochs[-1]} (the same state, saved at that epoch's end) over it and "
                                "resume again" if epochs else "short, and no model.pt.epN is there to recover "
                                "it from: start afresh (resume: false)")) from e
        return []
    if not epochs and not last.is_file():
        return []
    if not (out / "model").is_dir():
        raise ValueError(f"{train_dir} holds an unfinished fine-tune ({len(epochs)} epoch checkpoint(s), "
                         f"{', '.join(epochs[-3:]) or 'model.pt'}; no model/ exported: interrupted, or failed?), which "
                         "a fresh run would delete: set resume: true to continue it (with its optimizer and learning "
                         "rate), or delete train/ (or choose another output_dir) to start over")
    return [f"{out} holds a finished fine-tune ({len(epochs)} epoch checkpoint(s) and model/): this fresh run replaces "
            "it (resume: true would continue it instead)"]


def _epochs_done(train_dir: Path) -> int:
    """Epochs an earlier (resumed) run finished: the epochs funasr's last checkpoint has dev records for."""
    import torch

    last = train_dir / "model.pt"
    if not last.is_file():
        return 0
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return 0
    names = state.get("val_loss_step_or_epoch", {}) if isinstance(state, dict) else {}
    return max((int(m.group(1)) for n in names if (m := re.fullmatch(r"model\.pt\.ep(\d+)", str(n)))), default=0)


def _dev_run(p: FinetunePlan, model_dir: Path, out: Path) -> infer.InferResult:
    """The dev set decoded by ``model_dir`` into ``out``: an inference run (the model's decoding.yaml, the same
    scoring), the one way every dev CER of a fine-tune is measured, so one table compares them."""
    return infer.run(str(model_dir), str(p.dev.folder), str(out), device=p.device, progress=False)


def _checkpoint_cer(p: FinetunePlan, train_dir: Path, name: str) -> float | None:
    """Dev CER of one funasr checkpoint: a throw-away model folder around its weights (:func:`_dev_run`)."""
    tmp = p.output_dir / ".eval" / name
    export.export_model_folder(p.base, train_dir, name, tmp / "model", p.config, "evaluation copy\n")
    try:
        return _dev_run(p, tmp / "model", tmp / "dev").metrics["cer"]
    finally:
        shutil.rmtree(p.output_dir / ".eval", ignore_errors=True)


def _rounded(cer: float | None) -> float | None:
    return round(cer, 6) if cer is not None else None


def _literal_list(text: str) -> list[Any]:
    """A Python list literal as funasr prints it (``['a', 'b']``), or [] for anything else."""
    import ast

    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return []
    return value if isinstance(value, list) else []


def _card(p: FinetunePlan, checkpoint: str, dev_cer: dict[str, float], seconds: float, resumed_from: int = 0,
          averaged: list[str] | None = None, warnings: list[str] | None = None) -> str:
    tc = p.config.get("train_conf", {})
    rows = "\n".join(f"| {k}{' (exported)' if k == checkpoint else ''} | "
                     + (f"{v * 100:.2f} % |" if v is not None else "- |") for k, v in dev_cer.items())
    base = p.base.model_id or str(p.base.path)
    warned = ("\n## Warnings\n" + "".join(f"- {w}\n" for w in warnings)) if warnings else ""
    return f"""# Fine-tuned {p.base.model_id or p.base.path.name}

Fine-tuned with ASR Workbench (funasr's trainer) from `{base}`; self-contained: load it with
`funasr.AutoModel(model="<this folder>", disable_update=True)` or the workbench's inference notebook.

- data: `{p.train.folder}` ({p.train.n_utts} utterances, {p.train.hours:.2f} h), dev `{p.dev.folder}` ({p.dev.n_utts})
- weights: `{checkpoint}` of `train/`{f" (the average of {', '.join(averaged)})" if averaged else ""}
- epochs {tc.get('max_epoch')}{f" (resumed after epoch {resumed_from}: the settings and data below are this attempt's)" if resumed_from else ""}, accum_grad {tc.get('accum_grad', 1)}, optim {p.config.get('optim')} lr
  {(p.config.get('optim_conf') or {}).get('lr')}, scheduler {p.config.get('scheduler')} {p.config.get('scheduler_conf')},
  specaug {p.config.get('specaug')}, batch {p.config.get('dataset_conf', {}).get('batch_size')} frames, {p.nproc} process(es) on {p.device}
- training time: {seconds:.0f} s{" (this attempt)" if resumed_from else ""}

## Dev CER ({scoring.NORMALISER_NAME})
The normaliser: {scoring.NORMALISER}. funasr's trainer keeps and averages checkpoints by their dev accuracy with
the reference fed in (teacher forcing), not by this CER.

| model | dev CER |
|---|---|
{rows}
{warned}"""


def run(p: FinetunePlan, live: bool = True) -> FinetuneResult:
    """Train (funasr's trainer, subprocess), compute dev CER, export ``output_dir/model/``."""
    with runs.hold_folder(p.output_dir):  # an evaluation sees it running; no other run writes here meanwhile
        train_dir = p.output_dir / "train"
        progress = Progress(live=live)
        cer: dict[str, float | None] = {}
        seen: set[str] = set()
        averaged: list[str] = []

        def on_line(line: str) -> None:
            progress.feed(line)
            if line.startswith("average_checkpoints: ["):  # funasr says which checkpoints its model.pt.avgN averages
                averaged[:] = [Path(str(f)).name for f in _literal_list(line.split(": ", 1)[1])]
            if p.dev_cer == "epoch" and "Checkpoint saved to" in line:
                name = Path(line.rsplit("Checkpoint saved to", 1)[1].strip()).name
                if name.startswith("model.pt.ep") and name not in seen:
                    seen.add(name)
                    cer[name] = _checkpoint_cer(p, train_dir, name)

        if not p.config["train_conf"].get("resume"):
            # a fresh run: an earlier run's checkpoints must not be averaged or exported, and its model/ and metrics.json
            # must not stay beside this run's config.yaml (a failed rerun would leave a folder that lies)
            for stale in (train_dir, p.output_dir / "model", p.output_dir / ".eval", p.output_dir / "dev"):
                if stale.exists():
                    shutil.rmtree(stale)
            (p.output_dir / "metrics.json").unlink(missing_ok=True)
        done = _epochs_done(train_dir) if p.config["train_conf"].get("resume") else 0
        t0 = time.time()
        env = {"OMP_NUM_THREADS": "1"} if p.nproc > 1 else {}
        training.launch(p.config, train_dir, nproc=p.nproc, on_line=on_line, env=env)
        seconds = time.time() - t0
        progress.close()
        progress.load_checkpoint_metrics(train_dir / "model.pt")
        warnings = list(p.warnings)
        try:
            chosen = export.checkpoint_path(train_dir, p.checkpoint, p.config["train_conf"].get("avg_nbest_model")).name
        except FileNotFoundError as e:  # e.g. an epoch funasr pruned (keep_nbest_models): the run's work is not lost
            chosen = export.checkpoint_path(train_dir, "auto", p.config["train_conf"].get("avg_nbest_model")).name
            warnings.append(f"checkpoint {p.checkpoint} was not written ({e}); exported {chosen} instead")
        avg_n = int(p.config["train_conf"].get("avg_nbest_model", 10) or 0)
        # this run's checkpoints: an average of another n is an earlier attempt's (a resume that changed
        # keep_nbest_models), not this run's
        present = [n for n in export.list_checkpoints(train_dir)
                   if not n.startswith("model.pt.avg") or n == f"model.pt.avg{avg_n}"]
        if p.dev_cer == "end":
            for name in present:
                if name != chosen:  # the exported one is decoded below, with every file an inference run writes
                    cer[name] = _checkpoint_cer(p, train_dir, name)
        pruned = {n: c for n, c in cer.items() if n not in present and n != chosen}
        if pruned:  # scored as they were saved (dev_cer: epoch), then deleted by funasr (keep_nbest_models)
            scored = {n: c for n, c in pruned.items() if c is not None}
            best = min(scored, key=lambda n: scored[n]) if scored else None
            warnings.append(f"{', '.join(pruned)} were scored on dev as they were saved and then deleted by funasr's "
                            "trainer, which keeps the keep_nbest_models best by teacher-forced accuracy, not CER"
                            + (f" (the lowest dev CER of them: {best}, {scored[best] * 100:.2f} %)" if best else ""))
            cer = {n: c for n, c in cer.items() if n not in pruned}
        # fewer than the epochs allow (the plan already said when there are fewer epochs than keep_nbest_models)
        if averaged and len(averaged) < min(avg_n, int(p.config["train_conf"].get("max_epoch") or 1)) \
                and chosen == f"model.pt.avg{avg_n}":
            warnings.append(f"{chosen} averages {len(averaged)} checkpoint(s), not {avg_n}: {', '.join(averaged)} "
                            "(fewer epochs, or fewer kept, than keep_nbest_models)")
        model_dir = export.export_model_folder(p.base, train_dir, chosen, p.output_dir / "model", p.config, "")
        # the dev CERs behind the headline, utterance by utterance (results.jsonl, errors.txt, text.cer): exported
        # model and base, each a full inference run in dev/<finetuned|base>/
        dev = {who: _dev_run(p, folder, p.output_dir / "dev" / who)
               for who, folder in (("finetuned", model_dir), ("base", p.base.path))}
        cer[chosen] = dev["finetuned"].metrics["cer"]
        all_cer = {"base": dev["base"].metrics["cer"], **cer}
        if all_cer["base"] is not None and cer[chosen] is not None and cer[chosen] > all_cer["base"]:
            others = {n: c for n, c in cer.items() if n != chosen and c is not None and c < cer[chosen]}
            better = min(others, key=lambda n: others[n]) if others else None
            warnings.append(f"the exported {chosen} is worse on dev than the base model ({all_cer['base'] * 100:.2f} % "
                            f"-> {cer[chosen] * 100:.2f} %)"
                            + (f"; {better} scores {others[better] * 100:.2f} % (checkpoint: {better} exports it)"
                               if better else "")
                            + ": too high a learning rate, too little data, or a dev set unlike the training data?")
        atomic_write_text(model_dir / "README.md", _card(p, chosen, all_cer, seconds, done,
                                                         averaged if chosen.startswith("model.pt.avg") else [],
                                                         warnings))
        stripped = export.strip_optimizer_state(train_dir) if p.strip_optimizer else []
        metrics = {"dev_cer": {k: _rounded(v) for k, v in all_cer.items()}, "checkpoint": chosen,
                   "train_seconds": round(seconds, 1), "train_utts": p.train.n_utts, "train_hours": round(p.train.hours, 4),
                   "audio_seconds_per_second": round(p.train.hours * 3600 * max(0, int(p.config["train_conf"].get("max_epoch", 1)) - done) / seconds, 2),
                   "epochs_resumed_from": done,
                   "nproc": p.nproc, "device": p.device, "steps_per_epoch": p.steps_per_epoch, "total_steps": p.total_steps,
                   "warnings": warnings, "stripped_optimizer_state": stripped, "normaliser": scoring.NORMALISER,
                   "cer": _rounded(cer[chosen]), "model_dir": str(model_dir),
                   "data_dir": str(p.dev.folder),  # what "cer" was measured on: the dev split
                   "dev_runs": {who: str(r.output_dir) for who, r in dev.items()},
                   # what funasr said it averaged (None: it said nothing this time, e.g. a resume with nothing left)
                   "averaged": (averaged or None) if chosen.startswith("model.pt.avg") else [],
                   "provenance": runs.provenance(model_dir / "model.pt", [p.train.jsonl, p.dev.jsonl])}
        runs.write_metrics(p.output_dir, metrics)
        return FinetuneResult(p.output_dir, model_dir, chosen, all_cer, progress, seconds, metrics,
                              [w for w in warnings if w not in p.warnings], dev["finetuned"], dev["base"])
