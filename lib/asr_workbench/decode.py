"""Decode utterances with a funasr model: length-sorted batches, shards, results streamed to disk.

The model is loaded once per process. Utterances are sorted by duration and
cut into batches of ``batch_size`` utterances (or a ``batch_seconds`` budget of
padded audio), so padding stays small; results come back in input order.
Each finished batch is appended to a partial file, so an interrupted run keeps
what it finished and a rerun with the same model and settings resumes.
Several processes (``njob`` per device) each decode one shard with one torch
thread (CPU) or their own GPU, merged in input order.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DecodeOptions", "Hypothesis", "DecodeResult", "resolve_device", "load_model", "option_notes",
           "length_sorted_batches", "transcribe", "decode"]


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. ``None`` means the model folder's ``decoding.yaml`` / funasr's default."""

    batch_size: int = 16
    batch_seconds: float | None = None  # budget of padded audio seconds per batch, instead of batch_size
    beam_size: int | None = None
    ctc_weight: float | None = None
    device: str = "auto"
    devices: tuple[str, ...] = ()  # e.g. ("cuda:0", "cuda:1"); empty: [device]
    njob: int = 1  # processes per device
    vad_model: str | None = None
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast on CUDA
    extra: dict[str, Any] = field(default_factory=dict)  # other generate() keywords (decoding overrides)


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance."""

    key: str
    text: str
    duration_s: float


@dataclass
class DecodeResult:
    """Hypotheses in input order, with timing."""

    hypotheses: list[Hypothesis]
    wall_s: float
    audio_s: float
    device: str
    n_processes: int
    resumed: int = 0  # hypotheses taken from an earlier interrupted run

    @property
    def rtf(self) -> float:
        """Real-time factor: decoding seconds per audio second (lower is faster)."""
        return self.wall_s / self.audio_s if self.audio_s else 0.0


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_dir: str, device: str = "cpu", ncpu: int | None = None, **kwargs: Any) -> Any:
    """A ``funasr.AutoModel`` on ``device``, updates disabled, no output files written by funasr."""
    import contextlib
    import io
    import logging

    extra = {"ncpu": ncpu} if ncpu else {}
    chatter = io.StringIO()  # funasr prints banners and INFO/WARNING lines while loading; errors still raise
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter):
            from funasr import AutoModel

            # funasr's WavFrontend applies its training-time dither (random noise, default 1.0) at inference
            # too, so the same audio could decode differently call to call; built with dither 0 (funasr restores
            # its build-time frontend before every generate(), so setting it afterwards would not last)
            conf = {**kwargs.pop("frontend_conf", {}), "dither": 0.0}
            return AutoModel(model=model_dir, device=resolve_device(device), disable_update=True,
                             disable_pbar=True, log_level="ERROR", frontend_conf=conf, **extra, **kwargs)
    finally:
        logging.disable(previous)


def option_notes(model_config: dict[str, Any], opts: DecodeOptions) -> list[str]:
    """Plain-language notes on options the model ignores (said, never silently dropped).

    A funasr Paraformer builds its CTC branch only when ``model_conf.ctc_weight > 0``.
    """
    has_ctc = float((model_config.get("model_conf") or {}).get("ctc_weight", 0.0) or 0.0) > 0
    notes = []
    if opts.ctc_weight and not has_ctc:
        notes.append(f"ctc_weight={opts.ctc_weight} is ignored: this model has no CTC branch "
                     "(model_conf.ctc_weight is 0), so it decodes without CTC scoring")
    if opts.beam_size and opts.beam_size > 1 and not (has_ctc and opts.ctc_weight):
        notes.append(f"beam_size={opts.beam_size} is ignored: Paraformer decodes in one non-autoregressive "
                     "pass; beam search only runs with CTC scoring (ctc_weight > 0 on a model with CTC) or an LM")
    return notes


def _generate_kwargs(opts: DecodeOptions) -> dict[str, Any]:
    kw = dict(opts.extra)
    if opts.ctc_weight is not None:
        kw["decoding_ctc_weight"] = float(opts.ctc_weight)
    if opts.beam_size is not None:
        kw["beam_size"] = int(opts.beam_size)
    return kw


def length_sorted_batches(durations: Sequence[float], batch_size: int,
                          batch_seconds: float | None = None) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small.

    With ``batch_seconds``, a batch grows while ``longest * count <= batch_seconds``.
    """
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    if not batch_seconds:
        step = max(1, batch_size)
        for start in range(0, len(order), step):
            yield order[start : start + step]
        return
    batch: list[int] = []
    for i in order:
        longest = durations[batch[0]] if batch else durations[i]
        if batch and longest * (len(batch) + 1) > batch_seconds:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _decode_items(model: Any, items: Sequence[tuple[str, str, float]], opts: DecodeOptions,
                  sink: Callable[[list[Hypothesis]], None]) -> None:
    """Decode ``(key, path, duration)`` items batch by batch; ``sink`` gets each finished batch."""
    kw = _generate_kwargs(opts)
    durations = [d for _, _, d in items]
    with _autocast(model, opts.precision):
        _decode_loop(model, items, opts, kw, durations, sink)


def _autocast(model: Any, precision: str) -> Any:
    """bf16 / fp16 autocast on a CUDA model; fp32 (and any CPU model) decodes as is."""
    import contextlib

    import torch

    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    device = next(model.model.parameters()).device
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _decode_loop(model: Any, items: Sequence[tuple[str, str, float]], opts: DecodeOptions, kw: dict[str, Any],
                 durations: list[float], sink: Callable[[list[Hypothesis]], None]) -> None:
    from asr_workbench import audio

    if opts.vad_model:  # long audio: funasr segments each file itself
        kw = {k: v for k, v in kw.items() if k != "batch_size_s"}
        for key, path, dur in items:
            res = model.generate(input=audio.load(path), batch_size_s=opts.batch_seconds or 300, **kw)
            sink([Hypothesis(key, " ".join(r.get("text", "") for r in res).strip(), dur)])
        return
    from concurrent.futures import ThreadPoolExecutor

    batches = list(length_sorted_batches(durations, opts.batch_size, opts.batch_seconds))
    frontend = model.kwargs.get("frontend")
    # funasr's Paraformer takes ready features (data_type="fbank"): computing them here lets the next batch's
    # audio reading and fbank run while the model decodes this one. Other model classes get waveforms.
    features = frontend is not None and type(model.model).__name__ == "Paraformer"

    def load(batch: list[int]) -> tuple[list[Any], Any]:
        waves = [audio.load(items[i][1]) for i in batch]
        if not features or len(batch) < 2:  # funasr squeezes the lengths of a 1-utterance fbank batch to a scalar
            return waves, None
        import torch
        from funasr.utils.load_utils import extract_fbank

        return waves, extract_fbank([torch.from_numpy(w) for w in waves], data_type="sound", frontend=frontend)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for n, batch in enumerate(batches):
            waves, feats = pending.result() if pending is not None else ([], None)
            pending = pool.submit(load, batches[n + 1]) if n + 1 < len(batches) else None
            _decode_batch(model, items, batch, waves, feats, kw, sink)


def _decode_batch(model: Any, items: Sequence[tuple[str, str, float]], batch: list[int], waves: list[Any],
                  feats: Any, kw: dict[str, Any], sink: Callable[[list[Hypothesis]], None]) -> None:
    kw = {k: v for k, v in kw.items() if k not in ("data_type", "batch_size", "input_len")}
    if feats is not None:
        res = model.generate(input=feats[0], input_len=feats[1], data_type="fbank", batch_size=1, **kw)
    else:
        res = model.generate(input=waves, batch_size=len(batch), **kw)
    if len(res) != len(batch):
        # funasr's Paraformer returns one empty result for a batch in which no utterance yields a token
        # (all silence): decode one by one so every utterance gets its own (possibly empty) hypothesis
        res = [(model.generate(input=[w], batch_size=1, **kw) or [{}])[0] for w in waves]
    sink([Hypothesis(items[i][0], str(r.get("text", "") or ""), items[i][2]) for i, r in zip(batch, res)])


def transcribe(model: Any, items: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Hypothesis]:
    """Decode ``(key, audio_path)`` pairs in this process; results in input order."""
    from asr_workbench import audio

    triples = [(k, p, audio.probe(p).duration_s) for k, p in items]
    got: dict[str, Hypothesis] = {}
    _decode_items(model, triples, DecodeOptions(batch_size=batch_size), lambda hs: got.update((h.key, h) for h in hs))
    return [got[k] for k, _ in items]


def _read_partial(path: Path, fingerprint: str) -> dict[str, Hypothesis]:
    """Hypotheses of an earlier run with the same fingerprint; a line cut off by an interruption ends it."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or json.loads(lines[0]).get("fingerprint") != fingerprint:
            return {}
    except json.JSONDecodeError:
        return {}
    out = {}
    for line in lines[1:]:
        try:
            h = json.loads(line)
        except json.JSONDecodeError:
            break
        out[h["key"]] = Hypothesis(h["key"], h["text"], h["duration_s"])
    return out


def _rewrite_partial(path: Path, fingerprint: str, done: dict[str, Hypothesis]) -> None:
    """Start the partial file anew with what parsed, so appended lines never join a cut-off one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n"
                    + "".join(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in done.values()), encoding="utf-8")


def _shard_worker(model_dir: str, device: str, items: list[tuple[str, str, float]], opts: DecodeOptions,
                  part: str, progress: Any) -> None:
    import torch

    torch.set_num_threads(1)
    model = load_model(model_dir, device=device, ncpu=1,
                       **({"vad_model": opts.vad_model} if opts.vad_model else {}))
    with open(part, "a", encoding="utf-8") as f:
        def sink(hs: list[Hypothesis]) -> None:
            f.writelines(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in hs)
            f.flush()
            progress.put(sum(h.duration_s for h in hs))

        _decode_items(model, items, opts, sink)


def decode(model_dir: str, items: Sequence[tuple[str, str, float]], opts: DecodeOptions,
           partial_file: Path, fingerprint: str, model: Any = None, progress: bool = True) -> DecodeResult:
    """Decode ``(key, audio_path, duration_s)`` items; hypotheses stream to ``partial_file``.

    Args:
        model_dir: the model folder (loaded here, or in each shard process).
        items: what to decode, in input order.
        opts: batch, device and sharding settings.
        partial_file: where finished batches are appended; reused when ``fingerprint`` matches.
        fingerprint: identifies the model + settings + inputs (a changed run never resumes).
        model: an already loaded AutoModel for single-process decoding (skips loading).
        progress: show a tqdm bar (audio seconds).
    """
    from tqdm.auto import tqdm

    devices = list(opts.devices) or [resolve_device(opts.device)]
    device = devices[0]
    n_proc = max(1, opts.njob) * len(devices)
    done = _read_partial(partial_file, fingerprint)
    _rewrite_partial(partial_file, fingerprint, done)
    todo = [it for it in items if it[0] not in done]
    audio_total = sum(d for _, _, d in items)
    bar = tqdm(total=round(audio_total, 1), unit="s audio", desc="decoding", disable=not progress)
    bar.update(round(sum(h.duration_s for h in done.values()), 1))
    t0 = time.perf_counter()
    if n_proc == 1 or len(todo) < 2:
        if model is None:
            model = load_model(model_dir, device=device, ncpu=os.cpu_count() or 1,
                               **({"vad_model": opts.vad_model} if opts.vad_model else {}))
        with open(partial_file, "a", encoding="utf-8") as f:
            def sink(hs: list[Hypothesis]) -> None:
                f.writelines(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in hs)
                f.flush()
                bar.update(round(sum(h.duration_s for h in hs), 1))

            _decode_items(model, todo, opts, sink)
        n_used = 1
    else:
        n_used = min(n_proc, len(todo))
        shards = [todo[i::n_used] for i in range(n_used)]  # round-robin keeps shard lengths balanced
        parts = [partial_file.with_suffix(f".part{i}") for i in range(n_used)]
        for part in partial_file.parent.glob(partial_file.with_suffix(".part*").name):
            part.unlink()  # left by an interrupted run: another fingerprint's results must not be merged
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_shard_worker, args=(model_dir, devices[i % len(devices)], shards[i], opts,
                                                          str(parts[i]), queue)) for i in range(n_used)]
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            for p in procs:
                p.start()
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        try:
            while any(p.is_alive() for p in procs) or not queue.empty():
                try:
                    bar.update(round(queue.get(timeout=0.2), 1))
                except Exception:  # queue.Empty
                    pass
        finally:  # an interrupted kernel must not leave shard processes holding CPUs or GPUs
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
        failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
        with open(partial_file, "a", encoding="utf-8") as f:  # keep what the shards finished (whole lines only)
            for part in parts:
                if part.is_file():
                    for line in part.read_text(encoding="utf-8").splitlines():
                        try:
                            json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        f.write(line + "\n")
                    part.unlink()
        if failed:
            raise RuntimeError(f"decoding shard(s) {failed} failed (exit codes "
                               f"{[procs[i].exitcode for i in failed]}); finished results kept in {partial_file}")
    wall = time.perf_counter() - t0
    bar.close()
    got = _read_partial(partial_file, fingerprint)
    missing = [k for k, _, _ in items if k not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) were not decoded, e.g. {missing[:3]}")
    return DecodeResult([got[k] for k, _, _ in items], wall, sum(d for _, _, d in todo) or audio_total,
                        ",".join(devices), n_used, resumed=len(done))
