"""Run folders: one ``output_dir`` per run, the same files every time, with provenance.

Every run writes ``config.yaml`` (the resolved settings) and ``metrics.json``
(figures + provenance: package versions, git commit, hashes of the model
weights and of the input lists), atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from asr_workbench import paths
from asr_workbench.fileio import atomic_write_json, atomic_write_text, jsonl_line, read_jsonl

__all__ = ["check_output_dir", "prepare_output_dir", "file_sha256", "sha256_in_background", "inputs_sha256", "git_commit", "package_versions",
           "provenance", "read_config", "write_config", "write_metrics", "INDEX", "append_to_index", "read_index", "LOCK_FILE",
           "lock_folder", "folder_in_use", "hold_folder", "read_folder", "HELD_FOR_KERNEL"]

INDEX = "runs.jsonl"  # the run index, under paths.outputs_root()
LOCK_FILE = ".asr_workbench_lock"  # in a run folder while a run writes it (an flock, not its existence)

_PACKAGES = ("asr-workbench", "funasr", "modelscope", "torch", "torchaudio", "jiwer", "papermill", "numpy")


_KIND_FILE = ".asr_workbench_run"  # in every run folder: which kind of run wrote it


def check_output_dir(output_dir: str | Path, kind: str | None = None, protect: Sequence[Path] = ()) -> Path:
    """The run folder, resolved against the repository root, if a run of ``kind`` may write there; raises
    ``ValueError`` otherwise, writing nothing: for a folder that is (or is inside) one of ``protect`` (the run's
    model folders: the workbench never writes into a model), a folder holding a model (``model.pt`` or
    ``configuration.json``: its config.yaml would be overwritten), and a folder another ``kind`` of run wrote
    (an infer run into a fine-tune's folder would overwrite the config.yaml and metrics.json evaluation reads)."""
    out = paths.resolve(output_dir)
    real = out.resolve()
    for model in protect:
        model = model.resolve()
        if real == model or model in real.parents:
            raise ValueError(f"output_dir {out} is the model folder {model} or inside it: the workbench never writes "
                             "into a model folder; choose a run folder (e.g. outputs/<name>)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder: choose a run folder (e.g. outputs/<name>)")
    if out.is_dir():
        held = [n for n in ("model.pt", "configuration.json") if (out / n).exists()]
        if held:
            raise ValueError(f"output_dir {out} holds a model ({', '.join(held)}): a run would overwrite its "
                             "config.yaml; choose an empty or run folder")
        marker = out / _KIND_FILE
        previous = marker.read_text(encoding="utf-8").strip() if kind and marker.is_file() else None
        if previous and previous != kind:
            raise ValueError(f"output_dir {out} holds a {previous} run: a {kind} run would overwrite its config.yaml "
                             "and metrics.json; choose another folder")
        holder = folder_in_use(out)
        if holder and not _ours(holder, out):
            raise ValueError(f"output_dir {out} is in use by another run ({holder}); wait for it, or choose another "
                             "output_dir")
    return out


def prepare_output_dir(output_dir: str | Path, kind: str | None = None, protect: Sequence[Path] = ()) -> Path:
    """The run folder, checked (:func:`check_output_dir`), created and marked with ``kind``."""
    out = check_output_dir(output_dir, kind, protect)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if kind:
            atomic_write_text(out / _KIND_FILE, kind + "\n")
    except OSError as e:  # a file on the way, a read-only disk, no permission
        raise ValueError(f"output_dir {out} cannot be written: {e.strerror or e}"
                         f"{f' ({e.filename})' if e.filename and str(e.filename) != str(out) else ''}; "
                         "choose a run folder you can write (e.g. outputs/<name>)") from e
    return out


_SHA256_SEEN: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime) -> hash, for this process


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes; a file already hashed by this process, unchanged since (same inode, size and
    modification time), is not read again (an evaluation hashes its base for each set and for its checks)."""
    st = os.stat(path)
    seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if seen in _SHA256_SEEN:
        return _SHA256_SEEN[seen]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA256_SEEN[seen] = h.hexdigest()
    return _SHA256_SEEN[seen]


def sha256_in_background(path: Path | None) -> Callable[[], str | None]:
    """Start hashing ``path`` (model weights: 0.9 GB for Paraformer-large, about a second) on a thread, beside the
    run's own work; the returned function waits for the hash (None without a file)."""
    if path is None or not path.is_file():
        return lambda: None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    future = pool.submit(file_sha256, path)
    pool.shutdown(wait=False)
    return future.result


def inputs_sha256(files: list[Path]) -> str:
    """One hash over the input lists (wav.scp, text, jsonl) that exist."""
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """The workbench checkout's commit (``+dirty`` when it has uncommitted changes), or None."""
    root = paths.repo_root()
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(model_weights: Path | Callable[[], str | None] | None = None,
               input_files: list[Path] | None = None) -> dict[str, Any]:
    """What produced a result: versions, commit, model weights hash (of a file, or from
    :func:`sha256_in_background`), input lists hash, time."""
    if callable(model_weights):
        weights_sha = model_weights()
    else:
        weights_sha = file_sha256(model_weights) if model_weights and model_weights.is_file() else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "model_sha256": weights_sha,
        "inputs_sha256": inputs_sha256(input_files) if input_files else None,
    }


def write_config(output_dir: Path, config: dict[str, Any]) -> Path:
    """``config.yaml``: the resolved settings of the run."""
    path = output_dir / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path


def read_config(path: Path) -> dict[str, Any]:
    """A run's (or funasr's training) ``config.yaml``: ``path`` is the file or its folder; {} when there is none
    or it is no mapping."""
    path = path / "config.yaml" if path.is_dir() else path
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    return data if isinstance(data, dict) else {}


def write_metrics(output_dir: Path, metrics: dict[str, Any]) -> Path:
    """``metrics.json``, written atomically (other tools read it while runs go on)."""
    path = output_dir / "metrics.json"
    atomic_write_json(path, metrics)
    return path


def append_to_index(entry: dict[str, Any], index: Path | None = None) -> None:
    """Append one run's line to the run index under an exclusive lock (parallel runs never interleave)."""
    index = index or paths.outputs_root() / INDEX
    index.parent.mkdir(parents=True, exist_ok=True)
    line = jsonl_line(entry).encode("utf-8")
    with open(index, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # a line cut off by a crash mid-write would swallow this one: end it first
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_index(index: str | Path | None = None) -> list[dict[str, Any]]:
    """The run index: ``outputs/runs.jsonl``, or ``index`` (relative to the working directory, else to the
    repository; a given index that does not exist is an error, not an empty board). A line cut off by a crash
    mid-write is skipped, and said."""
    if index:
        here = Path(index).expanduser().absolute()
        path = here if here.is_file() else paths.resolve(index)
        if not path.is_file():
            raise FileNotFoundError(f"{index}: no such run index (looked for {here}"
                                    + (f" and {path})" if path != here else ")"))
    else:
        path = paths.outputs_root() / INDEX
        if not path.is_file():
            return []
    out, bad = [], []
    for n, entry in read_jsonl(path):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):  # cut off, edited, another tool's
            bad.append(n)
            continue
        for key in ("primary_cer", "rtf"):
            if not isinstance(entry.get(key), (int, float, type(None))) or isinstance(entry.get(key), bool):
                entry[key] = None
        entry["parameters"] = entry["parameters"] if isinstance(entry.get("parameters"), dict) else {}
        for key in ("status", "notebook"):
            entry[key] = str(entry.get(key) or "")
        for key in ("html", "output_dir", "started", "normaliser"):  # shown and linked as text
            entry[key] = entry[key] if isinstance(entry.get(key), str) else None
        sets = entry.get("per_set_cer")
        entry["per_set_cer"] = {str(k): v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                                for k, v in sets.items()} if isinstance(sets, dict) else {}
        folders = entry.get("per_set_data")
        entry["per_set_data"] = {str(k): v for k, v in folders.items() if isinstance(v, str) and v} \
            if isinstance(folders, dict) else {}
        out.append(entry)
    if bad:
        warnings.warn(f"{path}: {len(bad)} line(s) are not run records (cut off by a crash? edited?), e.g. line "
                      f"{bad[0]}; those runs are not shown", stacklevel=2)
    return out


def lock_folder(out: Path) -> Any:
    """An exclusive lock on a run folder for one run (the open file; closing it, or the process ending, releases it):
    two commands given the same fixed output_dir mixed their partial files and reports. ValueError when held."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise ValueError(f"output_dir {out} is in use by another run ({holder or 'another process'}), or an "
                         "evaluation is reading it; wait for it, or choose another output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    return f


@contextlib.contextmanager
def read_folder(folder: Path) -> Iterator[None]:
    """A shared lock on another run's folder while a run reads it (an evaluation its fine-tune): a run that would
    write there (:func:`lock_folder`) is refused meanwhile. Taken only where no run writes there now, and where
    locks work; readers do not exclude each other."""
    f = None
    try:
        f = open(folder / LOCK_FILE, "a+", encoding="utf-8")
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # a writer holds it (the caller said so), no permission, no locks here: read as before
        if f is not None:
            f.close()
        f = None
    try:
        yield
    finally:
        if f is not None:
            f.close()


def folder_in_use(out: Path) -> str | None:
    """Who holds ``out``'s run lock (:func:`lock_folder`: "pid 123 on host"), or None when no run writes it."""
    lock = out / LOCK_FILE
    if not lock.is_file():
        return None
    try:
        with open(lock, encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:  # a file system without locks, a lock file another user made: nothing to tell
        return None
    return None


HELD_FOR_KERNEL = "ASR_WORKBENCH_HELD_FOLDER"  # set by the batch runner for the kernel it starts: the folder it holds


def _ours(holder: str, out: Path) -> bool:
    """Whether ``out``'s lock holder ("pid 123 on host") holds it for this process: this process, its parent, or the
    batch runner that started this notebook's kernel (it names the folder in :data:`HELD_FOR_KERNEL`, also when a
    kernelspec's wrapper stands between them)."""
    if os.environ.get(HELD_FOR_KERNEL) == str(out.resolve()):
        return True
    m = re.fullmatch(r"pid (\d+) on (.*)", holder)
    return bool(m) and m.group(2) == os.uname().nodename and int(m.group(1)) in (os.getpid(), os.getppid())


@contextlib.contextmanager
def hold_folder(out: Path) -> Iterator[None]:
    """Hold ``out``'s run lock while a library call writes it (a notebook run in JupyterLab or with papermill
    itself); under ``asr-workbench run``, which holds it already for this kernel, nothing more. ValueError when
    another run holds it."""
    holder = folder_in_use(out)
    if holder and _ours(holder, out):
        yield
        return
    try:
        lock = lock_folder(out)
    except OSError:  # a file system without locks (some NFS mounts): the run goes on unguarded, as it did before
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()
