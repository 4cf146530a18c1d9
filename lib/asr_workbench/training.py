"""Run funasr's own trainer (``funasr.bin.train_ds``) on CPU or GPU, one code path for both.

funasr 1.4.16's ``train_ds.main`` hard-codes the trainer device to the CUDA
local rank, so it fails on a CPU-only machine ("Found no NVIDIA driver"); with
several processes it also calls ``torch.cuda.set_device`` and ``model.cuda``.
:func:`_make_trainer_class` (a ``DeviceFallbackTrainer``) keeps funasr's trainer and only maps a CUDA device
to the CPU when CUDA is absent; :func:`launch` writes a resolved config and
starts training in a subprocess (``torchrun`` for several processes), so
the demo builder and the fine-tuning notebook train the same way.

Run directly: ``python -m asr_workbench.training CONFIG.yaml`` (one process) or
``torchrun --nproc_per_node N -m asr_workbench.training CONFIG.yaml``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asr_workbench.processes import die_with

__all__ = ["TrainResult", "launch", "popen_tied", "train_in_process", "main"]

log = logging.getLogger(__name__)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _make_trainer_class() -> type:
    """Subclass funasr's Trainer (imported lazily: funasr is heavy)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from funasr.train_utils.trainer_ds import Trainer

    class DeviceFallbackTrainer(Trainer):  # type: ignore[misc, valid-type]
        """funasr's Trainer whose device falls back to the CPU when CUDA is absent."""

        @property
        def device(self) -> Any:
            return self._device

        @device.setter
        def device(self, value: Any) -> None:
            cuda_asked = isinstance(value, int) or str(value).startswith("cuda")
            # train_ds.main assigns the CUDA local rank after construction: keep a configured "cpu",
            # and fall back to the CPU when there is no CUDA at all
            if cuda_asked and (not torch.cuda.is_available() or getattr(self, "_device", None) == "cpu"):
                value = "cpu"
            self._device = value

        def warp_model(self, model: Any, **kwargs: Any) -> Any:
            if self.use_ddp and not torch.cuda.is_available():
                # funasr moves the model to cuda(local_rank) before DDP; on CPU use gloo DDP as is
                return DDP(
                    model.to("cpu"),
                    find_unused_parameters=kwargs.get("train_conf", {}).get("find_unused_parameters", False),
                )
            if not torch.cuda.is_available():
                kwargs = {**kwargs, "device": "cpu"}
            return super().warp_model(model, **kwargs)

    return DeviceFallbackTrainer


@dataclass
class TrainResult:
    """Where a training run left its files."""

    output_dir: Path
    config_path: Path
    log_path: Path
    returncode: int


def train_in_process(config: Mapping[str, Any]) -> None:
    """Train with ``funasr.bin.train_ds.main`` in this process (CPU fallback applied).

    ``config`` is a fully resolved funasr training config (model, model_conf,
    frontend_conf, tokenizer_conf, dataset_conf, train_conf, train_data_set_list,
    valid_data_set_list, output_dir, ...).
    """
    import torch
    import funasr.bin.train_ds as train_ds

    kwargs = dict(config)
    cuda = torch.cuda.is_available()
    if not cuda:
        kwargs["device"] = "cpu"
        kwargs.setdefault("backend", "gloo")
        # train_ds.main calls torch.cuda.set_device(local_rank) after init_process_group
        torch.cuda.set_device = lambda *_a, **_k: None  # type: ignore[assignment]
    threads = kwargs.pop("torch_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
        kwargs["ncpu"] = int(threads)
    train_ds.Trainer = _make_trainer_class()
    train_ds.main(**kwargs)


def launch(
    config: Mapping[str, Any],
    output_dir: str | Path,
    nproc: int = 1,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    torchrun: bool | None = None,
) -> TrainResult:
    """Write ``output_dir/train_config.yaml`` and train in a subprocess; stream its log.

    Args:
        config: the resolved funasr training config (``output_dir`` is set here).
        output_dir: where funasr writes checkpoints; the log goes to ``train.log``.
        nproc: processes; more than one runs ``torchrun --nproc_per_node``.
        torchrun: force (True) or avoid (False) torchrun; default: only for ``nproc > 1``.
        on_line: called with every log line (progress display).
        env: extra environment variables for the child.
    Returns:
        A :class:`TrainResult`; raises ``RuntimeError`` with the log's tail on failure.
    """
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**config, "output_dir": str(out)}
    cfg_path = out / "train_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if nproc > 1 or torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "asr_workbench.training", str(cfg_path)]
    else:
        cmd = [sys.executable, "-m", "asr_workbench.training", str(cfg_path)]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path = out / "train.log"
    tail: list[str] = []
    with open(log_path, "a" if cfg.get("train_conf", {}).get("resume") else "w", encoding="utf-8") as logf:
        # its own process group: an interrupted kernel stops the whole tree (torchrun and its workers)
        proc = popen_tied(cmd, env=child_env, cwd=str(out))
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                logf.write(line)
                logf.flush()
                tail = (tail + [line])[-40:]
                if on_line:
                    on_line(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:  # KeyboardInterrupt from the notebook, or a failing callback
            _stop_group(proc)
            raise
    if rc != 0:
        raise RuntimeError(f"training failed (exit {rc}){_diagnosis(log_path)}; log: {log_path}\n" + "".join(tail))
    return TrainResult(out, cfg_path, log_path, rc)


_NON_FINITE_LOSS = re.compile(r"loss[\w_]*\)?:? \(?-?(nan|inf)\b", re.IGNORECASE)
# where funasr's Paraformer fails once its weights are non-finite: the CIF predictor's firing positions
# a traceback frame there (not the model registry table), then the errors non-finite firing weights give
_CIF_CRASH = re.compile(r'cif_predictor\.py", line \d+, in .*?\n(IndexError|RuntimeError: .*non-negative)', re.DOTALL)


def _diagnosis(log_path: Path) -> str:
    """What a failed training's log suggests, where funasr's own error does not say it: a loss that went non-finite,
    or a crash inside the CIF predictor, which is how a diverged Paraformer fails (an IndexError, a negative size)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if "out of memory" in text[-5000:].lower():
        return ""
    if _NON_FINITE_LOSS.search(text) or _CIF_CRASH.search(text[-20000:]):
        return (": training diverged (the loss or the weights went non-finite; funasr then fails inside the model): "
                "start afresh (resume would continue from the diverged weights and optimizer) with a lower lr, a "
                "longer warm-up (scheduler_conf warmup_steps) or clipped gradients (finetune_overrides train_conf "
                "grad_clip)")
    return ""


def popen_tied(cmd: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen[str]:
    """Start ``cmd`` (output piped as text) in its own process group, so an interrupt stops the whole tree
    (torchrun and its workers), and tied to this process: a killed kernel or a cancelled job (SIGKILL, or SIGTERM
    without cleanup) ends the trainer too, instead of leaving it holding the CPUs or the GPU unsupervised."""
    tie = die_with(os.getpid())
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=tie)


def _stop_group(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM the training process group, SIGKILL what is left after ``grace_s``."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m asr_workbench.training CONFIG.yaml``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m asr_workbench.training CONFIG.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args[0], encoding="utf-8") as f:
        config = yaml.safe_load(f)
    train_in_process(config)


if __name__ == "__main__":
    main()
