"""The fine-tuning config: model ``config.yaml`` <- ``finetune.yaml`` <- notebook parameters <- overrides.

Every parameter of FunASR 0.x's ``finetune.py`` lands in a named funasr 1.x
key (:data:`PARAM_KEYS`), so nothing is silently ignored; unknown or
conflicting options fail at once, naming the option.

``dataset_type`` keeps the original's meaning:

- ``small``: ``batch_bins`` counts fbank frames (10 ms each) per batch
  -> ``dataset_conf.batch_type: token``, ``batch_size: batch_bins``;
- ``large`` (> 1000 h): ``batch_bins`` counts milliseconds of audio
  -> ``batch_size: batch_bins / 10`` frames, and the training list is split
  into jsonl shards read one at a time (``dataset_conf.data_split_num``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asr_workbench.fileio import yaml_number
from asr_workbench.modelhub import ModelFolder

__all__ = ["PARAM_KEYS", "FinetuneParams", "deep_merge", "build_config", "planned_batches", "planned_steps", "lr_schedule",
           "optimizer_and_scheduler",
           "warmup_warning"]

# notebook parameter -> the funasr config key(s) it sets (what the resolved-config test checks)
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "batch_bins": ("dataset_conf.batch_size",),
    "dataset_type": ("dataset_conf.batch_type", "dataset_conf.data_split_num"),
    "max_epoch": ("train_conf.max_epoch",),
    "accum_grad": ("train_conf.accum_grad",),
    "keep_nbest_models": ("train_conf.avg_nbest_model", "train_conf.keep_nbest_models"),
    "optim": ("optim",),
    "lr": ("optim_conf.lr",),
    "scheduler": ("scheduler",),
    "scheduler_conf": ("scheduler_conf",),
    "specaug": ("specaug",),
    "specaug_conf": ("specaug_conf",),
    "precision": ("train_conf.use_bf16", "train_conf.use_fp16"),
    "resume": ("train_conf.resume",),
    "early_stopping_patience": ("train_conf.early_stopping_patience",),
    "freeze_param": ("freeze_param",),
    "seed": ("seed",),
    "num_workers": ("dataset_conf.num_workers",),
    "max_duration_s": ("dataset_conf.max_source_length", "dataset_conf.max_token_length"),
}

# top-level keys a funasr training config may hold (anything else in finetune_overrides is a typo)
_KNOWN_TOP = {
    "model", "model_conf", "encoder", "encoder_conf", "decoder", "decoder_conf", "predictor", "predictor_conf",
    "frontend", "frontend_conf", "specaug", "specaug_conf", "normalize", "normalize_conf", "tokenizer",
    "tokenizer_conf", "ctc_conf", "dataset", "dataset_conf", "train_conf", "optim", "optim_conf", "scheduler",
    "scheduler_conf", "init_param", "freeze_param", "seed", "ncpu", "device", "model_path", "model_revision",
    "excludes", "scope_map", "ignore_init_mismatch", "lora_only", "lora_bias", "use_deepspeed", "deepspeed_config",
    "use_fsdp", "backend", "cudnn_enabled", "cudnn_benchmark", "cudnn_deterministic", "enable_tf32", "cmvn_file",
    "token_list", "input_size", "vocab_size", "hub", "is_training", "disable_update", "jieba_usr_dict",
}


@dataclass(frozen=True)
class FinetuneParams:
    """The fine-tuning notebook's parameters (``None``: keep the model's ``finetune.yaml``)."""

    dataset_type: str = "small"
    batch_bins: int | None = None
    max_epoch: int | None = None
    accum_grad: int | None = None
    keep_nbest_models: int | None = None
    optim: str | None = None
    lr: float | None = None
    scheduler: str | None = None
    scheduler_conf: dict[str, Any] | None = None
    specaug: str | None = None  # a funasr SpecAug class name, "none" to switch it off
    specaug_conf: dict[str, Any] | None = None
    precision: str = "fp32"
    resume: bool = False
    early_stopping_patience: int | None = None
    freeze_param: str | None = None
    seed: int = 0
    num_workers: int | None = None
    max_duration_s: float | None = None
    data_split_num: int | None = None  # shards for dataset_type large (default: ~1 per 100k utterances)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (mappings merged key by key, other values replaced)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param_layer(p: FinetuneParams, base: Mapping[str, Any], n_train: int) -> dict[str, Any]:
    if p.dataset_type not in ("small", "large"):
        raise ValueError(f"dataset_type must be 'small' or 'large', got {p.dataset_type!r}")
    if p.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {p.precision!r}")
    layer: dict[str, Any] = {"dataset_conf": {"batch_type": "token"}, "train_conf": {}, "seed": p.seed}
    ds, tc = layer["dataset_conf"], layer["train_conf"]
    if p.batch_bins is not None:
        if p.batch_bins <= 0:
            raise ValueError(f"batch_bins must be > 0, got {p.batch_bins}")
        ds["batch_size"] = int(p.batch_bins) if p.dataset_type == "small" else max(1, int(p.batch_bins) // 10)
    # large: shards of ~100k utterances; small: one list (a model's config may carry its own recipe's value,
    # SenseVoice's says 32, which with small data would train each epoch that many times)
    ds["data_split_num"] = int(p.data_split_num or max(1, math.ceil(n_train / 100_000))) if p.dataset_type == "large" else 1
    for name in ("max_epoch", "accum_grad", "early_stopping_patience"):
        value = getattr(p, name)
        if value is not None:
            if int(value) < (0 if name == "early_stopping_patience" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value}")
            tc[name] = int(value)
    if p.keep_nbest_models is not None:
        n = int(p.keep_nbest_models)
        if n < 1:
            raise ValueError(f"keep_nbest_models must be >= 1, got {n}")
        kept = (base.get("train_conf") or {}).get("keep_nbest_models", n)
        tc.update(avg_nbest_model=n, keep_nbest_models=max(n, int(kept)), avg_keep_nbest_models_type="acc")
    tc["resume"] = bool(p.resume)
    tc["use_bf16"], tc["use_fp16"] = p.precision == "bf16", p.precision == "fp16"
    if p.optim is not None:
        layer["optim"] = p.optim
    if p.lr is not None:
        layer["optim_conf"] = {"lr": float(p.lr)}
    if p.scheduler is not None:
        layer["scheduler"] = p.scheduler
    if p.specaug is not None:
        layer["specaug"] = None if str(p.specaug).lower() in ("none", "null", "") else p.specaug
    if p.freeze_param:
        layer["freeze_param"] = p.freeze_param
    if p.num_workers is not None:
        ds["num_workers"] = int(p.num_workers)
    if p.max_duration_s is not None:
        frames = int(p.max_duration_s * 100)
        ds["max_source_length"] = frames
        ds["max_token_length"] = frames + int((base.get("dataset_conf") or {}).get("max_target_length", 200))
    return layer


@functools.lru_cache(maxsize=1)
def trainer_options() -> frozenset[str]:
    """The ``train_conf`` keys funasr's trainer (``funasr.bin.train_ds``, ``train_utils.trainer_ds.Trainer``) reads:
    its arguments and the names its code looks up; it takes any others and ignores them."""
    import inspect

    from funasr.bin import train_ds
    from funasr.train_utils import trainer_ds

    source = inspect.getsource(trainer_ds) + inspect.getsource(train_ds)
    names = set(re.findall(r"""kwargs\.get\(\s*["'](\w+)["']""", source))
    names |= set(re.findall(r"""train_conf["']?\s*,\s*\{\}\)\.get\(\s*["'](\w+)["']""", source))
    names |= set(inspect.signature(trainer_ds.Trainer.__init__).parameters) - {"self", "kwargs"}
    return frozenset(names | set(getattr(train_ds, "_DISTRIBUTED_TRAIN_CONF_KEYS", ())))


def build_config(model: ModelFolder, base_kwargs: Mapping[str, Any], params: FinetuneParams,
                 overrides: Mapping[str, Any] | None = None, n_train: int = 0) -> dict[str, Any]:
    """Layer the training config; raise ``ValueError`` naming any unknown or conflicting option.

    Args:
        model: the checked base model folder (its ``finetune.yaml`` is the second layer).
        base_kwargs: the model's config with absolute file paths (funasr's ``download_model`` output).
        params: the notebook parameters.
        overrides: ``finetune_overrides`` (nested funasr keys), applied last.
        n_train: training utterances (for the number of shards with ``dataset_type: large``).
    """
    overrides = dict(overrides or {})
    for where, layer_in in (("finetune_overrides", overrides), (str(model.path / "finetune.yaml"), model.finetune)):
        unknown = sorted(k for k in layer_in if k not in _KNOWN_TOP)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)} "
                             f"(top-level funasr config keys only, e.g. train_conf, optim_conf, dataset_conf)")
        glued = [k for k in _flatten(layer_in) if ":" in k]
        if glued:  # YAML read {train_conf:{max_epoch:0}} (no space after the colons) as one key
            raise ValueError(f"{where}: option(s) {', '.join(glued)} hold a ':' - a YAML mapping needs a space after "
                             "each colon ({train_conf: {max_epoch: 2}})")
        train_conf = layer_in.get("train_conf")
        typos = sorted(k for k in train_conf if k not in trainer_options()) if isinstance(train_conf, dict) else []
        if typos:  # funasr's Trainer takes **kwargs and reads the names it knows: a typo changed nothing, unsaid
            hints = {k: difflib.get_close_matches(k, sorted(trainer_options()), n=1) for k in typos}
            raise ValueError(f"{where}: train_conf option(s) funasr's trainer does not read: "
                             + ", ".join(f"{k}{f' (did you mean {hints[k][0]}?)' if hints[k] else ''}" for k in typos))
    cfg = deep_merge(base_kwargs, model.finetune)
    own = dict(cfg.get("dataset_conf") or {})  # the model's own batching (config.yaml <- finetune.yaml)
    layer = _param_layer(params, cfg, n_train)
    if params.scheduler is not None and params.scheduler != cfg.get("scheduler"):
        cfg["scheduler_conf"] = {}  # another scheduler: the old one's settings do not apply
    if params.scheduler_conf is not None:
        layer["scheduler_conf"] = dict(params.scheduler_conf)
    if params.specaug is not None and layer.get("specaug") != cfg.get("specaug"):
        cfg["specaug_conf"] = {}
    if params.specaug_conf is not None:
        layer["specaug_conf"] = dict(params.specaug_conf)
    given = _flatten(layer)
    for key, value in _flatten(overrides).items():
        if key in given and given[key] != value and not _is_default(key, params):
            raise ValueError(f"option {key} is set twice: by a notebook parameter ({given[key]!r}) and by "
                             f"finetune_overrides ({value!r}); keep one")
    cfg = deep_merge(cfg, layer)
    for name in ("scheduler_conf", "specaug_conf"):  # replaced, not merged, when a parameter gives them
        if name in layer:
            cfg[name] = layer[name]
    cfg = deep_merge(cfg, overrides)
    ds = cfg.get("dataset_conf") or {}
    # funasr's "length" counts frames as "token" does; "example" counts utterances
    if own.get("batch_type") == "example" and ds.get("batch_type") == "token" and params.batch_bins is None \
            and "batch_size" not in (overrides.get("dataset_conf") or {}):
        raise ValueError(f"{model.path}: the model's dataset_conf batches by {own['batch_type']!r} (batch_size "
                         f"{own.get('batch_size')}), the workbench by frames of padded audio: its batch_size would "
                         "mean frames. Set batch_bins (frames for dataset_type small, e.g. 6000; ms for large), or "
                         "finetune_overrides: {dataset_conf: {batch_type: example, batch_size: N}}")
    for name in _NUMERIC_CONFS:
        if isinstance(cfg.get(name), Mapping):
            cfg[name] = {k: yaml_number(v) for k, v in cfg[name].items()}
    if params.dataset_type == "small" and (cfg.get("dataset_conf") or {}).get("data_split_num", 1) not in (1, None):
        raise ValueError("dataset_conf.data_split_num is for dataset_type: large (a list split into shards read one "
                         "at a time); with small, funasr would read the whole list once per 'shard' and train each "
                         "epoch that many times")
    flat = _flatten(cfg)
    for key in ("train_conf.max_epoch", "train_conf.accum_grad", "dataset_conf.batch_size"):
        value = flat.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r} (from {model.path / 'finetune.yaml'} "
                             "or finetune_overrides)")
    kept, averaged = flat.get("train_conf.keep_nbest_models"), flat.get("train_conf.avg_nbest_model")
    if isinstance(kept, int) and isinstance(averaged, int) and 0 < kept < averaged:
        raise ValueError(f"train_conf.keep_nbest_models {kept} is less than the {averaged} checkpoints averaged "
                         "(keep_nbest_models, avg_nbest_model): funasr deletes the others before it averages")
    if cfg.get("optim") and cfg["optim"] not in _optim_names():
        raise ValueError(f"optim {cfg['optim']!r} is not a funasr optimizer ({', '.join(_optim_names())})")
    if cfg.get("scheduler") and cfg["scheduler"] not in _scheduler_names():
        raise ValueError(f"scheduler {cfg['scheduler']!r} is not a funasr scheduler ({', '.join(_scheduler_names())})")
    if cfg.get("scheduler") in _UNSTEPPABLE:
        raise ValueError(f"scheduler {cfg['scheduler']!r} cannot run under funasr's trainer as the workbench calls it "
                         f"({_UNSTEPPABLE[cfg['scheduler']]}); use warmuplr, noamlr or CosineAnnealingLR")
    frozen = cfg.get("freeze_param")
    if frozen:  # as funasr's trainer splits it: on commas only (it kept " predictor" and froze nothing by it)
        cfg["freeze_param"] = ",".join(t.strip() for t in (frozen.split(",") if isinstance(frozen, str) else frozen)
                                       if str(t).strip())
    where = f"the notebook parameter, {model.path / 'finetune.yaml'} or finetune_overrides"
    optimizer_and_scheduler(cfg, where)
    _check_specaug(cfg, model.config, where)
    return cfg


def _check_specaug(cfg: Mapping[str, Any], base: Mapping[str, Any], where: str) -> None:
    """Build the config's SpecAugment as funasr's model will: an unknown class or a ``specaug_conf`` it cannot
    build from (a partial conf replaces the model's whole one; another class starts from an empty one) is a
    ValueError now, not a trainer that dies building the model."""
    import inspect

    from funasr.register import tables

    name = cfg.get("specaug")
    if not name:
        return
    cls = tables.specaug_classes.get(name)
    if cls is None:
        raise ValueError(f"specaug {name!r} is not a funasr SpecAugment class ({', '.join(sorted(tables.specaug_classes))})"
                         "; none switches it off")
    conf = dict(cfg.get("specaug_conf") or {})
    try:
        cls(**conf)
    except (TypeError, ValueError) as e:
        takes = [n for n in inspect.signature(cls).parameters if n != "self"]
        model_conf = base.get("specaug_conf") if base.get("specaug") == name else None
        raise ValueError(f"specaug_conf {conf} does not build {name} ({e}); it takes {', '.join(takes)}. A specaug_conf "
                         "replaces the model's whole one" + (f" ({model_conf})" if model_conf else "")
                         + f": give it complete ({where})") from e


_DEFAULTS = {"optim": "adam", "scheduler": "warmuplr"}  # funasr's trainer's when the config names none


def optimizer_and_scheduler(config: Mapping[str, Any], where: str = "the config") -> tuple[Any, Any]:
    """funasr's optimizer and scheduler for ``config``, on one dummy weight, built as its trainer builds them (for
    the plan's check and the schedule plot). A mistyped key of ``optim_conf`` / ``scheduler_conf``
    (``warmup_step``) or a missing one (CosineAnnealingLR's ``T_max``) is a ValueError naming the keys the class
    takes and ``where`` to set them, not a TypeError after the trainer started."""
    import inspect

    import torch
    from funasr.optimizers import optim_classes
    from funasr.schedulers import scheduler_classes

    def built(what: str, cls: Any, *args: Any) -> Any:
        conf = dict(config.get(f"{what}_conf") or {})
        try:
            return cls(*args, **conf)
        except (TypeError, ValueError) as e:
            takes = [n for n in inspect.signature(cls).parameters if n not in ("self", "params", "optimizer")]
            raise ValueError(f"{what}_conf {conf} does not fit {what} {config.get(what, _DEFAULTS[what])!r} "
                             f"({cls.__name__}: {e}); it takes {', '.join(takes)}. Set it in {what}_conf "
                             f"({where})") from e

    optim = built("optim", optim_classes[config.get("optim", _DEFAULTS["optim"])], [torch.nn.Parameter(torch.zeros(1))])
    closure = inspect.signature(optim.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:  # LBFGS
        raise ValueError(f"optim {config.get('optim')!r} cannot run under funasr's trainer: its step() needs a closure "
                         "that re-evaluates the loss, and the trainer calls step() without one; use adam or adamw")
    return optim, built("scheduler", scheduler_classes[config.get("scheduler", _DEFAULTS["scheduler"])], optim)


# nested settings whose values are numbers or names: a YAML 1.1 "1e-4" is a string there, and funasr would get it
_NUMERIC_CONFS = ("optim_conf", "scheduler_conf", "train_conf", "dataset_conf")
# schedulers funasr registers whose step() needs what its trainer does not pass, or that it cannot build
_UNSTEPPABLE = {"ReduceLROnPlateau": "its step() needs the validation loss, funasr's trainer calls step() without it",
                "tri_stage": "its constructor needs phase ratios funasr's config does not provide"}


def _is_default(key: str, p: FinetuneParams) -> bool:
    """Keys the parameter layer always writes from defaults (an override of them is no conflict)."""
    always = {"dataset_conf.batch_type": True, "train_conf.resume": not p.resume, "seed": p.seed == 0,
              # derived from keep_nbest_models (at least as many kept as averaged): keeping more is no conflict
              "train_conf.keep_nbest_models": p.keep_nbest_models is not None,
              "dataset_conf.data_split_num": p.data_split_num is None,  # computed: an override sets the shards
              "train_conf.use_bf16": p.precision == "fp32", "train_conf.use_fp16": p.precision == "fp32"}
    return always.get(key, False)


def _optim_names() -> list[str]:
    from funasr.optimizers import optim_classes

    return sorted(optim_classes)


def _scheduler_names() -> list[str]:
    from funasr.schedulers import scheduler_classes

    return sorted(scheduler_classes)


def planned_batches(train_frames: list[int], batch_size: int, nproc: int = 1, batch_type: str = "token",
                    shards: int = 1) -> int:
    """Batches per process and shard (``dataset_type: large`` reads ``shards`` lists one at a time, each like an
    epoch of its own): token batches pack ``longest * count <= batch_size`` frames over length-sorted utterances
    (what funasr's sampler does within a sort buffer), example batches hold ``batch_size`` utterances; each rank
    gets its share."""
    if batch_type == "example":
        return math.ceil(len(train_frames) / max(1, shards) / max(1, batch_size) / max(1, nproc))
    batch_size_frames = batch_size
    batches, longest, count = 0, 0, 0
    for n in sorted(train_frames):
        if count and max(longest, n) * (count + 1) > batch_size_frames:
            batches, longest, count = batches + 1, 0, 0
        longest, count = max(longest, n), count + 1
    batches += 1 if count else 0
    return math.ceil(batches / max(1, nproc) / max(1, shards))


def planned_steps(batches: int, accum_grad: int, max_epoch: int, shards: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total) from :func:`planned_batches`' count per process and shard. funasr's
    trainer steps after every ``accum_grad``-th batch and clears the gradients at the start of each epoch (each
    shard), so the last ``batches % accum_grad`` batches of each never reach the weights, and fewer batches than
    ``accum_grad`` take no step at all (0 here)."""
    per_epoch = shards * (batches // max(1, accum_grad))
    return per_epoch, per_epoch * max_epoch


def lr_schedule(config: Mapping[str, Any], total_steps: int) -> list[float]:
    """The learning rate at each optimizer step, from funasr's own scheduler class."""
    optim, sched = optimizer_and_scheduler(config)
    out = []
    for _ in range(max(1, total_steps)):
        out.append(float(sched.get_last_lr()[0]))
        optim.step()
        sched.step()
    return out


def warmup_warning(config: Mapping[str, Any], schedule: Sequence[float], max_fraction: float = 0.3) -> str | None:
    """A warning when the warm-up takes more than ``max_fraction`` of the planned steps (the scheduler's own
    warm-up: its default of 25000 steps applies when ``scheduler_conf`` names none), or when the planned
    ``schedule`` never comes near the requested lr (noamlr scales it down by the model size), and what to change."""
    total_steps = len(schedule)
    _, sched = optimizer_and_scheduler(config)
    warmup = getattr(sched, "warmup_steps", None)
    lr = float((config.get("optim_conf") or {}).get("lr") or 0)
    said = "" if "warmup_steps" in (config.get("scheduler_conf") or {}) else f" ({type(sched).__name__}'s default)"
    if isinstance(warmup, (int, float)) and warmup > max(1.0, max_fraction * total_steps):
        return (f"warmup_steps={warmup:g}{said} but the whole run has only {total_steps} optimizer steps: the learning "
                f"rate stays low for {min(100, round(100 * warmup / max(1, total_steps)))}% of the run and fine-tuning "
                f"may have little effect. Set scheduler_conf to e.g. {{'warmup_steps': {max(1, int(0.1 * total_steps))}}} "
                "(about 10% of the steps), or train longer.")
    if lr > 0 and schedule and max(schedule) < 0.1 * lr:
        return (f"the learning rate of this schedule peaks at {max(schedule):.3g}, far below lr {lr:g} "
                f"({config.get('scheduler')}): fine-tuning may have little effect; use warmuplr, or raise lr")
    return None
