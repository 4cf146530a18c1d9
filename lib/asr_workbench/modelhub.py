"""Model folders: a local folder or a ModelScope id, checked before funasr sees it.

Only this module talks to ModelScope. A model already in the cache is used
without the network (``local_files_only``); otherwise it is downloaded with
``modelscope.snapshot_download``. Offline or unknown ids end in one
:class:`ModelError` naming the id, the cache folder and what to do.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import paths

__all__ = ["ModelError", "ModelFolder", "resolve_model_dir", "check_folder", "open_model", "resolve_helper_model",
           "load_weights", "read_tokens", "default_cache_dir"]

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# files a Paraformer-style folder needs, by their configuration.json meta path
_REQUIRED_METAS = ("init_param", "config", "tokenizer_conf.token_list", "tokenizer_conf.bpemodel",
                   "frontend_conf.cmvn_file")


class ModelError(RuntimeError):
    """A model that cannot be found, downloaded or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder and the workbench defaults it carries."""

    path: Path
    source: str  # "folder", "modelscope-cache" or "modelscope-download"
    model_id: str | None
    config: dict[str, Any]
    tokens: list[str] | None
    decoding: dict[str, Any] = field(default_factory=dict)  # decoding.yaml
    finetune: dict[str, Any] = field(default_factory=dict)  # finetune.yaml
    warnings: tuple[str, ...] = ()
    weights: Path | None = None  # the weights file funasr loads: configuration.json's init_param, else model.pt

    @property
    def name(self) -> str:
        return self.model_id or self.path.name

    @property
    def sample_rate(self) -> int:
        """The audio rate the model's frontend takes (``frontend_conf.fs``; 16 kHz by default)."""
        conf = self.config.get("frontend_conf")
        fs = conf.get("fs") if isinstance(conf, dict) else None
        return int(fs) if isinstance(fs, (int, float)) and fs > 0 else 16000


def default_cache_dir() -> Path:
    """``$MODELSCOPE_CACHE``, else ModelScope's default ``~/.cache/modelscope``."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope")


_REVISIONS = re.compile(r"Available cached revisions|Cached revisions under")  # modelscope: the model is cached


def _cache_roots(cache: Path) -> list[Path]:
    """Where to look for ModelScope's ``<root>/models/<owner>--<name>/...``: the cache folder as given, and its parent
    when it is itself named ``models`` (the folder one sees holding the models); first the one that has a
    ``models`` folder (downloads go there)."""
    if cache.name != "models":
        return [cache]
    return [cache, cache.parent] if (cache / "models").is_dir() else [cache.parent, cache]


def resolve_model_dir(model: str, cache_dir: str | os.PathLike[str] | None = None,
                      revision: str | None = None, allow_download: bool = True) -> tuple[Path, str]:
    """The local folder of ``model`` (a folder path or a ModelScope id) and how it was found."""
    local = paths.resolve(model)
    if local.is_dir():
        return local, "folder"
    if not _MODEL_ID.match(model):
        raise ModelError(f"model {model!r}: no such folder ({local}) and not a ModelScope id (owner/name)")
    from modelscope import snapshot_download

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache = cache if cache.is_absolute() else paths.resolve(cache) if cache_dir else cache.resolve()
    roots = _cache_roots(cache)
    cached: Exception | None = None
    for root in roots:
        try:
            return Path(snapshot_download(model, revision=revision, cache_dir=str(root),
                                          local_files_only=True)), "modelscope-cache"
        except Exception as e:  # modelscope_hub.errors.CacheNotFound; the one that lists cached revisions is kept
            cached = cached if cached is not None and _REVISIONS.search(str(cached)) else e
    said = str(cached).splitlines()[0][:400] if cached else ""
    if "Available cached revisions" in said:  # several revisions cached and none asked for: not a download
        raise ModelError(f"model {model!r} is in the ModelScope cache {cache} in several revisions ({said}); set "
                         "model_revision to the one to use") from cached
    if local.parent.is_dir() and local.parent != paths.repo_root():
        raise ModelError(f"model {model!r}: no such folder {local} (its parent folder exists, so this looks like a "
                         f"mistyped path rather than a ModelScope id; it is not in the ModelScope cache {cache} "
                         "either)") from cached
    if not allow_download:
        raise ModelError(f"model {model!r} is not in the ModelScope cache {cache} and downloads are off") from cached
    try:
        unreachable = _hub_unreachable()
        if unreachable:  # modelscope would retry with back-off for ~25 s before saying the same
            raise ConnectionError(unreachable)
        return Path(snapshot_download(model, revision=revision, cache_dir=str(roots[0]))), "modelscope-download"
    except Exception as e:
        _remove_empty_tree(roots[0] / "models" / model.replace("/", "--"))  # what a failed download left: no files
        kind = type(e).__name__
        others = _same_name_cached(cache, model)
        raise ModelError(
            f"model {model!r}{f' at revision {revision!r}' if revision else ''} is not in the ModelScope cache "
            f"{cache} and could not be downloaded ({kind}: "
            f"{str(e).splitlines()[0][:200]}), and there is no folder {local} (relative paths start at the "
            "repository root). Check the id on modelscope.cn, the network, or pass a local folder / a "
            "cache_dir that holds it."
            + (f" The cache has it in other revisions ({said})." if revision and _REVISIONS.search(said) else "")
            + (f" The cache holds {', '.join(others)}: the same model under another owner (ModelScope renamed "
               "damo/ to iic/)?" if others and all(o.lower() != model.lower() for o in others) else
               f" The cache holds {', '.join(others)}: ids are case-sensitive." if others else "")
        ) from e


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` if it holds folders only (modelscope makes <id>/snapshots/master before it downloads)."""
    if folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)


def _same_name_cached(cache: Path, model: str) -> list[str]:
    """Ids in the cache with ``model``'s name under another owner (``iic/x`` for ``damo/x``), in any layout."""
    owner, name = model.split("/", 1)
    found = set()
    for root in (cache, cache / "hub", cache / "models", cache / "hub" / "models"):
        for hit in [*root.glob(f"*/{glob.escape(name)}"), *root.glob(f"*--{glob.escape(name)}")]:
            other = hit.name.split("--")[0] if "--" in hit.name else hit.parent.name
            if hit.is_dir() and other != owner and other not in ("hub", "models"):
                found.add(f"{other}/{name}")
    return sorted(found)


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the ModelScope endpoint cannot be reached (its host does not resolve, or refuses or ignores a TCP
    connection for ``timeout_s``), or None. Behind a proxy (``HTTPS_PROXY``...) the proxy is probed instead."""
    import socket
    from urllib.parse import urlparse

    from urllib.request import getproxies, proxy_bypass

    try:
        from modelscope_hub.config import get_default_config

        url, what = urlparse(get_default_config().endpoint), "the hub"
    except Exception:  # another modelscope layout: let snapshot_download find out
        return None
    if not url.hostname:
        return None
    proxies = getproxies()  # as requests picks one: by the endpoint's scheme, unless NO_PROXY lets it through
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(url.hostname):  # the proxy is what this machine connects to
        url, what = urlparse(proxy if "://" in proxy else "http://" + proxy), "the proxy"
        if not url.hostname:
            return None
    try:
        port = url.port or (443 if url.scheme == "https" else 1080 if url.scheme.startswith("socks") else 80)
    except ValueError:  # a port that is no number
        return None
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{what} {url.hostname}:{port} cannot be reached ({e})"


def _meta_paths(metas: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in metas.items():
        if isinstance(v, str):
            out[prefix + k] = v
        elif isinstance(v, dict):
            out.update(_meta_paths(v, f"{prefix}{k}."))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def read_tokens(path: Path) -> list[str]:
    """The token list of a ``tokens.json`` (a JSON list) or ``tokens.txt`` (one token per line)."""
    if path.suffix == ".json":
        return [str(t) for t in json.loads(path.read_text(encoding="utf-8"))]
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_CMVN_FRONTENDS = ("WavFrontend", "wav_frontend", "WavFrontendOnline", "wav_frontend_online")  # read am.mvn


def check_folder(path: Path, source: str = "folder", model_id: str | None = None) -> ModelFolder:
    """Check that every file funasr will need is there (funasr itself fails cryptically otherwise)."""
    if not path.is_dir():
        raise ModelError(f"model folder not found: {path}")
    conf_json = path / "configuration.json"
    metas: dict[str, str] = {}
    if conf_json.is_file():
        try:
            conf = json.loads(conf_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{conf_json}: not valid JSON ({e})") from e
        raw_metas = conf.get("file_path_metas", {}) if isinstance(conf, dict) else None
        if not isinstance(raw_metas, dict):
            raise ModelError(f"{conf_json}: expected a JSON object with a \"file_path_metas\" object")
        metas = _meta_paths(raw_metas)
        # with a configuration.json funasr reads config.yaml and the weights only through these two entries:
        # without "config" it fails with "<folder> is not registered", without "init_param" it decodes with
        # random weights
        absent = [m for m in ("config", "init_param") if m not in metas]
        if absent:
            raise ModelError(
                f"{conf_json}: file_path_metas lacks {' and '.join(repr(m) for m in absent)}; funasr reads the model "
                "only through them when a configuration.json exists. Add them (e.g. \"file_path_metas\": "
                "{\"init_param\": \"model.pt\", \"config\": \"config.yaml\", \"tokenizer_conf\": {\"token_list\": "
                "\"tokens.json\"}, \"frontend_conf\": {\"cmvn_file\": \"am.mvn\"}}) or remove configuration.json")
    interrupted = sorted(p.name for p in path.glob("*.incomplete")) + sorted(p.name for p in path.glob(".*.tmp"))
    unfinished = (f" (an interrupted download? {', '.join(interrupted)} is there: delete {path} and download it again)"
                  if interrupted else " (an interrupted download? delete it and download it again)"
                  if source == "modelscope-cache" else "")
    config_file = path / metas.get("config", "config.yaml")
    if not config_file.is_file():
        raise ModelError(f"{path}: no {config_file.name}: not a funasr model folder{unfinished}")
    config = _read_yaml(config_file)
    missing, warnings, notes = [], [], []
    for meta, rel in metas.items():
        if not (path / rel).exists():
            (missing if meta in _REQUIRED_METAS else warnings).append(f"{rel} (configuration.json {meta})")
    if not metas:  # funasr's fallback: config.yaml + model.pt + tokens.{json,txt} (or bpe.model) + am.mvn
        if not (path / "model.pt").is_file():
            other = sorted(p.name for p in path.iterdir() if p.suffix in (".pb", ".onnx", ".bin", ".safetensors"))
            missing.append("model.pt" + (f" ({', '.join(other)} is there: an ONNX export is for funasr-onnx, not "
                                         "AutoModel; a FunASR 0.x model.pb loads when configuration.json names it "
                                         "as init_param)" if other else ""))
        named = config.get("init_param")
        if isinstance(named, str) and named and Path(named).resolve() != (path / "model.pt").resolve():
            notes.append(f"config.yaml names init_param {named} (funasr would load those weights instead of the "
                         "folder's model.pt, if that file exists): ignored, the workbench loads model.pt")
        if config.get("tokenizer") == "SentencepiecesTokenizer":
            if not (path / "bpe.model").is_file() and not (config.get("tokenizer_conf") or {}).get("bpemodel"):
                missing.append("bpe.model (its SentencepiecesTokenizer's model)")
        elif config.get("tokenizer") and not any((path / t).is_file() for t in ("tokens.json", "tokens.txt")):
            missing.append("tokens.json or tokens.txt")
        if config.get("frontend") in _CMVN_FRONTENDS and not (path / "am.mvn").is_file() \
                and not (config.get("frontend_conf") or {}).get("cmvn_file"):
            warnings.append("am.mvn (funasr's fallback cmvn_file: features will not be mean/variance normalised)")
    for section, key in (("frontend_conf", "cmvn_file"), ("tokenizer_conf", "token_list"),
                         ("tokenizer_conf", "bpemodel"), ("tokenizer_conf", "seg_dict")):
        named = (config.get(section) or {}).get(key) if isinstance(config.get(section), dict) else None
        if metas and f"{section}.{key}" not in metas and isinstance(named, str) and named \
                and not Path(named).is_file():  # funasr opens it as written: from the working directory
            raise ModelError(f"{config_file}: {section}.{key} {named!r} is not there as funasr reads it (a path as "
                             f"written, from the working directory {Path.cwd()}), and {conf_json.name}'s "
                             f"file_path_metas do not name it: add it there (\"{section}\": {{\"{key}\": "
                             f"\"{Path(named).name}\"}}, a file in the folder)")
    if metas and config.get("frontend") in _CMVN_FRONTENDS and "frontend_conf.cmvn_file" not in metas \
            and not (config.get("frontend_conf") or {}).get("cmvn_file"):
        warnings.append("a cmvn_file (configuration.json's file_path_metas and config.yaml's frontend_conf name none: "
                        "features will not be mean/variance normalised)")
    weights = path / metas.get("init_param", "model.pt")
    if not missing and weights.is_file() and weights.stat().st_size == 0:  # funasr: "EOFError: " after the data
        raise ModelError(f"model folder {path}: its weights {weights.name} are an empty file"
                         f"{unfinished or ' (a copy or download cut short?)'}")
    if missing:
        raise ModelError(f"model folder {path} lacks: {', '.join(missing)}{unfinished}")
    tok_rel = metas.get("tokenizer_conf.token_list")
    tok_file = path / tok_rel if tok_rel else next((path / t for t in ("tokens.json", "tokens.txt") if (path / t).is_file()), None)
    tokens = read_tokens(tok_file) if tok_file else None
    return ModelFolder(path, source, model_id, config, tokens, _read_yaml(path / "decoding.yaml"),
                       _read_yaml(path / "finetune.yaml"), tuple([w + " is missing" for w in warnings] + notes),
                       weights)


def open_model(model: str, cache_dir: str | os.PathLike[str] | None = None, revision: str | None = None,
               allow_download: bool = True) -> ModelFolder:
    """Resolve ``model`` (folder or ModelScope id) and check its folder."""
    path, source = resolve_model_dir(model, cache_dir, revision, allow_download)
    return check_folder(path, source, None if source == "folder" else model)


def resolve_helper_model(name: str, cache_dir: str | os.PathLike[str] | None = None,
                         role: str = "vad_model") -> ModelFolder:
    """The checked local folder of a model funasr loads beside the main one (``vad_model``): a folder, a ModelScope
    id or one of funasr's short names (``fsmn-vad`` is ``iic/speech_fsmn_vad_zh-cn-16k-common-pytorch``), found in
    the cache or downloaded like the main model, so an offline machine fails with one message naming the id and
    the cache (funasr itself would try the hub under the short name and end in "not registered"); a folder funasr
    would load with random weights or fail on, after the data is read, is a :class:`ModelError` naming ``role``."""
    from funasr.download.name_maps_from_hub import name_maps_ms

    hub_id = name_maps_ms.get(name, name)
    try:
        path, source = resolve_model_dir(hub_id, cache_dir)
        return check_folder(path, source, hub_id if source != "folder" else None)
    except ModelError as e:
        raise ModelError(f"{role} {name}" + (f" ({hub_id})" if hub_id != name else "") + f": {e}") from e


def load_weights(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, Any]:
    """The weights of a funasr checkpoint or model.pt (``weights_only``), unwrapped as funasr's loader unwraps
    them (``state_dict``, ``model_state_dict``, ``model``). ``mmap``: map the file instead of reading it (for a
    look at names and shapes; an old-format file is read whole). A file torch cannot read is a
    :class:`ModelError` naming it."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: cannot be mapped
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                         "a file cut short (a training killed while saving it?), or another format") from e
    for wrapper in ("state_dict", "model_state_dict", "model"):
        state = state[wrapper] if isinstance(state, dict) and wrapper in state else state
    return state
