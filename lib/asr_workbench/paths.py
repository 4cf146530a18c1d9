"""Where the repository is, and how relative parameter paths resolve.

JupyterLab starts a kernel in ``notebooks/``, papermill in the caller's folder:
relative paths in parameters therefore resolve against the repository root,
never against the kernel's working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "resolve", "outputs_root"]


def repo_root() -> Path:
    """The workbench checkout: ``$ASR_WORKBENCH_ROOT``, else the folder above ``lib/`` holding
    ``pyproject.toml`` (editable install), else the current directory."""
    env = os.environ.get("ASR_WORKBENCH_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "lib" / "asr_workbench").is_dir():
            return parent
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute: ``~`` expanded, relative paths taken from the repository root."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else (repo_root() / p)


def outputs_root() -> Path:
    """Where fresh run folders and the run index go: ``$ASR_WORKBENCH_OUTPUTS`` (a relative one from the repository
    root, like every path here, whichever folder a kernel starts in; the run command makes it absolute where it is
    typed), else ``<repo>/outputs``."""
    env = os.environ.get("ASR_WORKBENCH_OUTPUTS")
    return resolve(env).resolve() if env else repo_root() / "outputs"
