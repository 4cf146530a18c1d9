"""A fine-tune's output as a self-contained model folder that funasr and the workbench load directly.

funasr leaves checkpoints (``model.pt.ep*``, ``model.pt.best``, ``model.pt.avgN``)
and a config with absolute paths into the base model folder; tokens and
``am.mvn`` are not copied, so the folder breaks when the base moves. This module
picks a checkpoint and lays out ``output_dir/model/`` like a ModelScope download:
weights-only ``model.pt``, path-free ``config.yaml``, the base's tokens,
``am.mvn``, ``configuration.json`` and ``decoding.yaml``, and a model card.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import runs
from asr_workbench.fileio import atomic_write_text
from asr_workbench.modelhub import ModelFolder, load_weights

__all__ = ["TRAINING_KEYS", "checkpoint_path", "list_checkpoints", "present_checkpoints", "find_checkpoint", "export_model_folder", "strip_optimizer_state",
           "path_free", "assemble_model"]

# what a fine-tuned config.yaml keeps from the training config, besides the base architecture
TRAINING_KEYS = ("train_conf", "optim", "optim_conf", "scheduler", "scheduler_conf", "specaug", "specaug_conf",
                 "dataset_conf", "freeze_param", "seed")
OPTIONAL_FILES = {"decoding.yaml", "finetune.yaml"}
_CKPT = re.compile(r"^model\.pt(\.(best|avg\d+|ep\d+(\.\d+)?))?$")


def list_checkpoints(train_dir: Path) -> list[str]:
    """funasr checkpoints present in ``train_dir`` (``model.pt.best``, ``model.pt.avg5``, ``model.pt.ep3``...)."""
    names = [p.name for p in train_dir.iterdir() if _CKPT.match(p.name) and p.name != "model.pt"] if train_dir.is_dir() else []
    return sorted(names, key=lambda n: (not n.endswith("best"), not n.startswith("model.pt.avg"), _epoch_of(n), n))


def _epoch_of(name: str) -> int:
    m = re.search(r"\.ep(\d+)", name)
    return int(m.group(1)) if m else 0


def present_checkpoints(train_dir: Path) -> list[str]:
    """Every checkpoint file a name may pick in ``train_dir``, for messages: funasr 1.x's (:func:`list_checkpoints`,
    and ``model.pt``, the last epoch's, kept for resuming) and FunASR 0.x's (``valid.acc.ave_10best.pth``,
    ``3epoch.pth``, ``*.pb``)."""
    if not train_dir.is_dir():
        return []
    old = sorted(p.name for p in train_dir.iterdir() if p.is_file() and p.suffix in (".pth", ".pb"))
    return list_checkpoints(train_dir) + (["model.pt"] if (train_dir / "model.pt").is_file() else []) + old


def checkpoint_path(train_dir: Path, name: str = "auto", avg_n: int | None = None) -> Path:
    """The checkpoint file for ``name``: ``auto`` is this run's n-best average (``model.pt.avg{avg_n}``)
    when present, else ``model.pt.best``."""
    if name in ("auto", "model"):
        avg = train_dir / f"model.pt.avg{avg_n}"
        name = avg.name if avg_n and avg.is_file() else "model.pt.best"
    path = train_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {name} in {train_dir} (present: {', '.join(present_checkpoints(train_dir)) or 'none'})")
    return path


def _check_fits(state: Mapping[str, Any], template: ModelFolder, ckpt: Path) -> None:
    """Refuse a checkpoint that is not the template model's: funasr would load the weights that fit and leave the
    rest random (another architecture, a dictionary of other things), and decode garbage without a word."""
    if template.weights is None or not template.weights.is_file():
        return
    want = {k.removeprefix("module."): v for k, v in load_weights(template.weights, mmap=True).items()
            if hasattr(v, "shape")}
    names = {k.removeprefix("module."): v for k, v in state.items() if hasattr(v, "shape")}
    shared = [k for k in want if k in names]
    other = [f"{k}: {tuple(names[k].shape)} in {ckpt.name}, {tuple(want[k].shape)} in {template.weights}"
             for k in shared if tuple(names[k].shape) != tuple(want[k].shape)]
    if len(shared) < len(want) / 2 or other:
        raise ValueError(f"{ckpt} does not fit the model of {template.path}: "
                         + (f"{len(other)} weights have another shape (e.g. {other[0]})" if other else
                            f"it holds {len(shared)} of the model's {len(want)} weights (its top-level names: "
                            f"{', '.join(list(state)[:5])})")
                         + ": another architecture, or not this fine-tune's base model (modelscope_model_name)?")


def path_free(value: Any) -> Any:
    """A config with every absolute path (into the base folder or the build machine) removed."""
    if isinstance(value, Mapping):
        return {k: path_free(v) for k, v in value.items() if not (isinstance(v, str) and os.path.isabs(v))}
    if isinstance(value, list):
        return [path_free(v) for v in value]
    return value


def export_model_folder(base: ModelFolder, train_dir: Path, checkpoint: str, out: Path,
                        training_config: Mapping[str, Any], card: str) -> Path:
    """Write ``out`` (replacing it) from ``checkpoint`` of ``train_dir`` and the base model's files."""
    import torch

    ckpt = checkpoint_path(train_dir, checkpoint)
    state = load_weights(ckpt)
    _check_fits(state, base, ckpt)  # before anything is written: a refused checkpoint leaves no folder
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "model.pt")
    # the checkpoint's time: a folder assembled again from an unchanged checkpoint is the same model to an
    # interrupted decoding's resume check (size and time of the weights), so it resumes instead of starting over
    os.utime(tmp / "model.pt", ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns))
    conf_json = base.path / "configuration.json"
    metas: dict[str, Any] = {}
    if conf_json.is_file():
        metas = json.loads(conf_json.read_text(encoding="utf-8")).get("file_path_metas", {})
    # written here (the base's own config under another name too: the export's config.yaml replaces it)
    copied = {"model.pt", "config.yaml", "README.md", "configuration.json", str(metas.get("config", "config.yaml"))}
    for src in base.path.iterdir():  # tokens, am.mvn, seg_dict, decoding.yaml, ... (never the base weights)
        if src.is_file() and src.name not in copied and not src.name.startswith("model.pt") and src.suffix not in (".pt", ".pb", ".bin", ".onnx"):
            shutil.copyfile(src, tmp / src.name)  # contents only: a read-only base must not make a read-only copy
    config = dict(base.config)
    for key in TRAINING_KEYS:
        if key in training_config:
            config[key] = training_config[key]
    config = path_free(config)
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    configuration = json.loads(conf_json.read_text(encoding="utf-8")) if conf_json.is_file() else {
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"}}
    if not metas:  # a base without configuration.json: funasr found tokens and am.mvn by name; once the export
        # has a configuration.json it only looks where its file_path_metas say (path_free dropped the config's paths)
        tokens = next((f for f in ("tokens.json", "tokens.txt") if (tmp / f).is_file()), None)
        tokenizer = {key: name for key, name in (("token_list", tokens), ("seg_dict", "seg_dict"),
                                                 ("bpemodel", "bpe.model")) if name and (tmp / name).is_file()}
        metas = {**({"tokenizer_conf": tokenizer} if tokenizer else {}),
                 **({"frontend_conf": {"cmvn_file": "am.mvn"}} if (tmp / "am.mvn").is_file() else {})}
    metas = {**_named_files(base, metas, tmp), "init_param": "model.pt", "config": "config.yaml"}
    configuration["file_path_metas"] = metas
    atomic_write_text(tmp / "configuration.json", json.dumps(configuration, ensure_ascii=False, indent=2))
    atomic_write_text(tmp / "README.md", card)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# files a model's config.yaml may name by path (funasr reads them from there when configuration.json does not
# name them): section, key, the name the export gives the copy (None: the file's own name)
_NAMED_FILES = (("frontend_conf", "cmvn_file", "am.mvn"), ("tokenizer_conf", "token_list", None),
                ("tokenizer_conf", "seg_dict", "seg_dict"), ("tokenizer_conf", "seg_dict_file", "seg_dict"),
                ("tokenizer_conf", "bpemodel", None))


_EXPORT_OWN = {"model.pt", "config.yaml", "configuration.json", "README.md"}  # written by the export itself


def _named_files(base: ModelFolder, metas: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Copy into ``out``, beside the weights, the files the base keeps elsewhere: named by configuration.json in a
    sub-folder or by absolute path (``assets/tokens.json``: only the base's top level is copied otherwise, and the
    export, or a checkpoint assembled for evaluation, could not be loaded after the whole training had run), or by
    absolute path in config.yaml alone (a cmvn_file kept elsewhere: the exported config drops absolute paths, and
    the copy would lose its feature normalisation without a word). Returns ``metas`` naming the copies. Two such
    files of one name, or one named like a file the export writes, are a ValueError: one would replace the other."""
    placed: dict[str, Path] = {}

    def place(src: Path, name: str) -> str:
        if name in _EXPORT_OWN or placed.get(name, src) != src:
            other = placed.get(name) or f"the export's own {name}"
            raise ValueError(f"{base.path}: {src} and {other} would both be {name} in the exported model folder; "
                             "rename one in the base model (and its configuration.json)")
        shutil.copyfile(src, out / name)  # the file funasr reads, over a same-named top-level one
        placed[name] = src
        return name

    def flat(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: flat(v) for k, v in value.items()}
        if isinstance(value, list):
            return [flat(v) for v in value]
        if isinstance(value, str) and Path(value).name != value:
            src = Path(value) if os.path.isabs(value) else base.path / value
            if src.is_file():
                return place(src, src.name)
        return value

    named = {k: v if k in ("init_param", "config") else flat(v) for k, v in metas.items()}
    for section, key, name in _NAMED_FILES:
        value = (base.config.get(section) or {}).get(key)
        if not (isinstance(value, str) and os.path.isabs(value) and Path(value).is_file()):
            continue
        if isinstance(named.get(section), Mapping) and named[section].get(key):
            continue
        named.setdefault(section, {})[key] = place(Path(value), name or Path(value).name)
    return named


def strip_optimizer_state(train_dir: Path) -> list[str]:
    """Rewrite kept checkpoints (``model.pt.ep*``, ``.best``) as weights only; ``model.pt`` keeps its state for resume."""
    import torch

    done = []
    for name in list_checkpoints(train_dir):
        if name.startswith("model.pt.avg"):
            continue
        path = train_dir / name
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "optimizer" in state:
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"state_dict": state["state_dict"]}, tmp)
            os.replace(tmp, path)  # a crash mid-write leaves the original checkpoint
            done.append(name)
    return done


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link to ``src`` (same disk), else a copy: an evaluation's completed model folder costs no second
    copy of the weights."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# files that do one job under either name: a model with tokens.txt needs no tokens.json
_SAME_ROLE = {"tokens.json": ("tokens.txt",), "tokens.txt": ("tokens.json",)}


def _has(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds the required file ``name``, or one that does its job (:data:`_SAME_ROLE`)."""
    return any((folder / n).exists() for n in (name, *_SAME_ROLE.get(name, ())))


# required files by their usual names that a model folder may keep under others (configuration.json's metas)
_ROLE_FILES = {"am.mvn", "tokens.json", "tokens.txt", "configuration.json", "bpe.model", "seg_dict", "config.yaml"}


def _loads(folder: Path) -> bool:
    """Whether ``folder`` has every file funasr needs, whatever their names (:func:`check_folder`)."""
    from asr_workbench.modelhub import ModelError, check_folder

    try:
        return not [w for w in check_folder(folder).warnings if w.endswith(" is missing")]
    except ModelError:
        return False


def find_checkpoint(finetune_dir: Path, name: str) -> Path:
    """What ``name`` picks in a fine-tune output: ``model`` its self-contained ``model/`` folder, another name a
    checkpoint of ``finetune_dir/train/`` (or of ``finetune_dir`` itself: funasr's trainer run by hand).
    ``FileNotFoundError`` listing what there is otherwise."""
    train_dir = finetune_dir / "train" if (finetune_dir / "train").is_dir() else finetune_dir
    if name != "model":
        return checkpoint_path(train_dir, name)
    if not (finetune_dir / "model").is_dir():
        present = present_checkpoints(train_dir)
        raise FileNotFoundError(f"{finetune_dir}: no model/ folder (a fine-tune that did not finish, or funasr's "
                                "trainer run by hand); name one of its checkpoints in decoding_model_name instead"
                                + (f": {', '.join(present)}" if present else f" (none in {train_dir} either)"))
    return finetune_dir / "model"


def assemble_model(finetune_dir: Path, name: str, base: ModelFolder | None, required_files: list[str], out: Path) -> Path:
    """A runnable model folder from a fine-tune output (FunASR 0.x ``infer_after_finetune.py``'s job).

    ``name`` is ``model`` (the workbench's self-contained ``finetune_dir/model/``) or a funasr checkpoint
    (``model.pt.best``, ``model.pt.avg5``, ``model.pt.ep3``) of ``finetune_dir/train/`` (or of ``finetune_dir``
    itself when funasr's trainer was run by hand). Files in ``required_files`` that the assembled folder lacks
    are copied from ``base``; nothing existing is overwritten. Raises ``FileNotFoundError`` naming what is missing.
    """
    from asr_workbench.modelhub import check_folder

    own = finetune_dir / "model"
    for f in required_files:
        if not f or Path(f).is_absolute() or ".." in Path(f).parts:
            raise ValueError(f"required_files: {f!r} is not a file name inside a model folder")
    find_checkpoint(finetune_dir, name)
    if name == "model":
        folder = own
        # complete a copy (hard links where the disk allows: no second copy of the weights), never the fine-tune's
        # own folder; only for a file the base has (decoding.yaml is optional: no copy for its sake alone)
        if any(not _has(own, f) and base is not None and (base.path / f).exists() for f in required_files):
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(own, out, copy_function=_link_or_copy)
            folder = out
    else:
        train_dir = finetune_dir / "train" if (finetune_dir / "train").is_dir() else finetune_dir
        if own.is_dir():
            template = check_folder(own)
            training_config: Mapping[str, Any] = {}
        elif base is not None:
            template = base
            training_config = runs.read_config(train_dir / "config.yaml")
        else:
            raise FileNotFoundError(f"{finetune_dir}: no model/ folder to take config and tokens from; "
                                    "give modelscope_model_name (the base model) too")
        export_model_folder(template, train_dir, name, out, training_config,
                            f"# {name} of {finetune_dir}\n\nAssembled for evaluation by ASR Workbench.\n")
        folder = out
    still = []
    for f in required_files:
        if _has(folder, f):
            continue
        if base is not None and (base.path / f).exists() and folder != own:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)  # lm/lm.yaml: its sub-folder too
            if (base.path / f).is_dir():
                shutil.copytree(base.path / f, folder / f)
            else:
                shutil.copyfile(base.path / f, folder / f)
        elif f not in OPTIONAL_FILES:  # decoding.yaml / finetune.yaml only carry defaults
            still.append(f)
    if still and _loads(folder):  # am.mvn, tokens.json by their default names: the folder names its own in their role
        still = [f for f in still if f not in _ROLE_FILES]
    if still:
        raise FileNotFoundError(f"assembled model {folder} lacks {', '.join(still)}"
                                + ("" if base is not None else " (give modelscope_model_name to copy them from the base model)")
                                + (f" and the base model {base.path} has none" if base is not None else ""))
    return folder
