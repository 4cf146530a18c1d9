"""Fine-tuning settings for this machine: batch size from GPU memory, bf16 where it is faster, loader workers.

funasr's recipes ship one ``batch_size`` for every GPU (Paraformer-large: 6,000
frames, about 5 GiB of an 80 GiB card). :func:`recommend` measures the model on
the device instead: one training step (forward + backward) at two batch sizes
gives the memory per frame of padded audio, the batch is sized to a fraction
of the card's free memory (leaving room for gradients and Adam's two moments),
and the same step timed in fp32 and bf16 decides the precision.
On a CPU it keeps the model's ``finetune.yaml`` batch (nothing to size) and fp32, and loads data in the
training process itself on 2 cores (a loader worker only takes a core from training there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recommendation", "recommend"]

_FRAMES_PER_TOKEN = 25  # ~4 characters per second of Mandarin speech: synthetic transcripts of that length


@dataclass(frozen=True)
class Recommendation:
    """Settings for :func:`asr_workbench.finetune.plan` and why (``batch_frames`` counts 10 ms fbank frames)."""

    batch_frames: int
    num_workers: int
    precision: str
    device: str
    reasons: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def batch_bins(self, dataset_type: str = "small") -> int:
        """``batch_bins`` as the fine-tuning notebook counts it: frames (``small``) or milliseconds (``large``)."""
        return self.batch_frames if dataset_type == "small" else self.batch_frames * 10


def _step(model: Any, frames: int, utts: int, feat_dim: int, vocab: int, device: Any, dtype: Any) -> float:
    """One training step on random features of ``utts`` x ``frames / utts`` frames; returns its seconds."""
    import torch

    t_lfr = max(8, frames // utts // 6)
    speech = torch.randn(utts, t_lfr, feat_dim, device=device)
    lengths = torch.full((utts,), t_lfr, dtype=torch.int32, device=device)
    n_tok = max(2, frames // utts // _FRAMES_PER_TOKEN)
    text = torch.randint(3, vocab - 1, (utts, n_tok), device=device)
    text_lengths = torch.full((utts,), n_tok, dtype=torch.int32, device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not torch.float32):
        loss = model(speech, lengths, text, text_lengths)[0]
    loss.backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def recommend(model: str, device: str = "auto", memory_fraction: float = 0.6, cache_dir: str | None = None,
              nproc: int = 1, max_batch_frames: int = 60_000) -> Recommendation:
    """Measure ``model`` on ``device`` and recommend ``batch_bins``, loader workers and precision.

    Args:
        model: a model folder or ModelScope id (as for fine-tuning).
        device: ``auto``, ``cuda``, ``cuda:1``, ``cpu``.
        memory_fraction: the share of the card's total memory a training step may use at its longest batch.
        nproc: training processes on this machine (loader workers are shared out between them).
        max_batch_frames: upper bound: 10x the usual recipe (longer batches mean fewer updates per epoch).
    """
    from asr_workbench import decode, modelhub
    from asr_workbench.processes import usable_cores

    mf = modelhub.open_model(model, cache_dir=cache_dir)
    dev = decode.resolve_device(device)
    cores = usable_cores()
    workers = max(0, min(16, cores // max(1, nproc) - 1))
    recipe = int(((mf.finetune.get("dataset_conf") or {}).get("batch_size")) or 6000)
    if not dev.startswith("cuda"):
        # training's threads use every core; on 2 cores a loader process only takes one away (demo fine-tune,
        # 3 epochs: 90.7 audio-s/s with the loading in the training process, 74.1 with one loader worker)
        cpu_workers = 0 if cores // max(1, nproc) <= 2 else min(workers, 2)
        return Recommendation(recipe, cpu_workers, "fp32", dev,
                              [f"CPU: the model's finetune.yaml batch ({recipe} frames), fp32, "
                               f"{cpu_workers} loader worker(s) (the rest of the cores train)"])
    import torch

    m = decode.load_model(str(mf.path), device=dev)
    net = m.model.train()
    torch_dev = next(net.parameters()).device
    feat_dim = int(m.kwargs["frontend"].output_size())
    vocab = len(m.kwargs["token_list"]) if m.kwargs.get("token_list") else int(m.kwargs.get("vocab_size", 1000))
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    total = torch.cuda.get_device_properties(torch_dev).total_memory
    sizes = (8_000, 24_000)
    peaks = []
    # time steps under the backend settings funasr's train_ds applies (TF32 matmuls on, deterministic cuDNN by
    # default): torch's defaults (TF32 off) would make fp32 look slower than it trains, and bf16 look better
    conf = {**m.kwargs, **mf.finetune}
    flags = {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "deterministic": torch.backends.cudnn.deterministic,
             "benchmark": torch.backends.cudnn.benchmark}
    torch.backends.cuda.matmul.allow_tf32 = bool(conf.get("enable_tf32", True))
    torch.backends.cudnn.deterministic = bool(conf.get("cudnn_deterministic", True))
    torch.backends.cudnn.benchmark = bool(conf.get("cudnn_benchmark", flags["benchmark"]))
    try:
        _step(net, sizes[0], 8, feat_dim, vocab, torch_dev, torch.float32)  # warm-up: kernels, allocator
        for frames in sizes:
            torch.cuda.reset_peak_memory_stats(torch_dev)
            base = torch.cuda.memory_allocated(torch_dev)
            _step(net, frames, max(2, frames // 1000), feat_dim, vocab, torch_dev, torch.float32)
            peaks.append(torch.cuda.max_memory_allocated(torch_dev) - base)
        per_frame = max(1.0, (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]))
        fixed = max(0.0, peaks[0] - per_frame * sizes[0])
        # the trainer also keeps gradients and Adam's two moments: 3x the weights, beside the weights themselves
        room = memory_fraction * total - 4 * weights - fixed
        frames = int(max(recipe, min(max_batch_frames, room / per_frame)) // 1000 * 1000)
        probe = min(frames, 60_000)
        utts = max(2, probe // 1000)
        bf16_ok = torch.cuda.is_bf16_supported()
        fp32, bf16 = float("inf"), float("inf")
        for _ in range(3):  # interleaved, best of 3: one slow step (allocator, clocks) must not pick the precision
            fp32 = min(fp32, _step(net, probe, utts, feat_dim, vocab, torch_dev, torch.float32))
            if bf16_ok:
                bf16 = min(bf16, _step(net, probe, utts, feat_dim, vocab, torch_dev, torch.bfloat16))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
        torch.backends.cudnn.deterministic = flags["deterministic"]
        torch.backends.cudnn.benchmark = flags["benchmark"]
        del m, net
        torch.cuda.empty_cache()
    precision = "bf16" if bf16 < 0.9 * fp32 else "fp32"
    gib = 1 << 30
    reasons = [
        f"{frames} frames per batch: a training step takes {per_frame / (1 << 20):.2f} MiB per frame of padded audio "
        f"+ {fixed / gib:.1f} GiB; with the weights, gradients and Adam's moments ({4 * weights / gib:.1f} GiB) that "
        f"fills {memory_fraction:.0%} of {total / gib:.0f} GiB (the recipe: {recipe})",
        f"{precision}: a step of {probe} frames took {fp32 * 1000:.0f} ms in fp32 (TF32 matmuls "
        f"{'on' if conf.get('enable_tf32', True) else 'off'}, as the trainer will run)"
        + (f", {bf16 * 1000:.0f} ms with bf16 autocast" if bf16_ok else ", bf16 unsupported on this GPU")
        + (" (bf16 kept only when >= 10 % faster)" if bf16_ok else ""),
        f"{workers} loader workers per process ({cores} cores, {nproc} process(es))",
    ]
    return Recommendation(frames, workers, precision, dev, reasons,
                          {"mib_per_frame": round(per_frame / (1 << 20), 4), "fixed_gib": round(fixed / gib, 2),
                           "step_s_fp32": round(fp32, 4), "step_s_bf16": round(bf16, 4) if bf16_ok else -1.0,
                           "probe_frames": probe})
