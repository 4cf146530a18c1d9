"""Decode utterances with a funasr model: length-sorted batches, shards, results streamed to disk.

The model is loaded once per process. Utterances are sorted by duration and
cut into batches of ``batch_size`` utterances (or a ``batch_seconds`` budget of
padded audio), so padding stays small; results come back in input order.
Each finished batch is appended to a partial file, so an interrupted run keeps
what it finished and a rerun with the same model and settings resumes.
Within a process, several batches decode at once on worker threads (see ``plan_workers``), and
funasr's SANM attention layers run torch's fused attention kernel (see ``attention``).
Several processes (``njob`` per device) each decode one shard with one torch
thread (CPU) or their own GPU, merged in input order.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import glob
import json
import logging
import multiprocessing as mp
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from asr_workbench import attention
from asr_workbench import audio as audio_mod
from asr_workbench.fileio import jsonl_line, read_jsonl
from asr_workbench.processes import die_with, thread_budget

log = logging.getLogger(__name__)

__all__ = ["import_funasr", "check_device", "DecodeOptions", "Hypothesis", "DecodeResult", "resolve_device", "load_model", "trained_dither", "dither", "option_notes",
           "length_sorted_batches", "plan_workers", "weight_notes", "transcribe", "decode"]


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
    workers: int = 0  # batches decoded at once by threads; 0: automatic (see plan_workers)
    features_on: str = "model"  # where Paraformer features are computed: "model" (its device) or "cpu"
    attention: str = "fused"  # "fused": torch's fused attention kernel in funasr's SANM layers; "funasr": its own
    extra: dict[str, Any] = field(default_factory=dict)  # other generate() keywords (decoding overrides)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if isinstance(self.njob, bool) or not isinstance(self.njob, int) or self.njob < 1:
            raise ValueError(f"njob must be an integer >= 1, got {self.njob!r}")
        for d in (self.device, *self.devices):
            check_device(d)
        if self.features_on not in ("model", "cpu"):
            raise ValueError(f"features_on must be 'model' or 'cpu', got {self.features_on!r}")
        if self.attention not in attention.MODES:
            raise ValueError(f"attention must be one of {', '.join(attention.MODES)}, got {self.attention!r}")


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance."""

    key: str
    text: str
    duration_s: float
    error: str = ""  # why the audio could not be decoded (then ``text`` is empty): see audio.AudioError
    warning: str = ""  # what decoding found wrong with the audio's level (audio.level_warning), or no speech found
    warning_code: str = "audio_level"  # the data report's code for ``warning``


@dataclass
class DecodeResult:
    """Hypotheses in input order, with timing."""

    hypotheses: list[Hypothesis]
    wall_s: float
    audio_s: float
    device: str
    n_processes: int
    resumed: int = 0  # hypotheses taken from an earlier interrupted run
    load_s: float = 0.0  # loading the model (not in wall_s; shard processes load theirs inside wall_s)
    notes: list[str] = field(default_factory=list)  # what went wrong loading the weights (see weight_notes)

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


def check_device(device: str) -> None:
    """Fail at once for a device this machine does not have: funasr would quietly run on the CPU and the run would
    record (and time) it as a GPU run."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|(cuda|npu|xpu|hpu)(:\d+)?", device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<n> (or mps, npu, xpu, hpu), got {device!r}")
    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA GPU(s) visible to torch"
                             + (" (CUDA_VISIBLE_DEVICES={})".format(os.environ["CUDA_VISIBLE_DEVICES"])
                                if "CUDA_VISIBLE_DEVICES" in os.environ else "")
                             + "; use device: auto (a GPU when there is one) or cpu")


def import_funasr() -> None:
    """Import funasr once, its import-time notice kept out of the run's output and report ("ffmpeg is not installed
    ... please install it": it does not apply, the workbench reads audio with libsndfile)."""
    import io
    import sys

    if "funasr" not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()):
            import funasr  # noqa: F401


def load_model(model_dir: str, device: str = "cpu", ncpu: int | None = None, **kwargs: Any) -> Any:
    """A ``funasr.AutoModel`` on ``device``, updates disabled, no output files written by funasr; ``ncpu``: the
    torch threads funasr sets (at loading and at every ``generate()``), by default this process's thread budget
    (funasr's own default is 4, whatever the machine)."""
    import io

    extra = {"ncpu": ncpu or thread_budget()}
    chatter = io.StringIO()  # funasr prints banners and INFO/WARNING lines while loading; errors still raise
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter):
            from funasr import AutoModel

            # built without the frontend's random dither: funasr keeps a copy of the frontend as built and restores
            # it before every generate(), so switching it off afterwards would not last (decoding adds it seeded)
            conf = {**kwargs.pop("frontend_conf", {}), "dither": 0.0}
            folder = Path(model_dir)
            if not (folder / "configuration.json").is_file() and (folder / "model.pt").is_file():
                # the folder's weights: funasr would take an existing init_param its config.yaml names (a trainer's
                # config copied beside a checkpoint names the base model's) over the model.pt beside it
                kwargs.setdefault("init_param", str(folder / "model.pt"))
            if kwargs.get("vad_model"):  # its frontend too: it hears the waveform with the seeded dither added
                vad = dict(kwargs.pop("vad_kwargs", None) or {})
                kwargs["vad_kwargs"] = {**vad, "frontend_conf": {**(vad.get("frontend_conf") or {}), "dither": 0.0}}
            try:
                model = AutoModel(model=model_dir, device=resolve_device(device), disable_update=True,
                                  disable_pbar=True, log_level="ERROR", frontend_conf=conf, **extra, **kwargs)
            except Exception as e:  # e.g. a truncated model.pt: torch's message names no file
                raise RuntimeError(f"funasr could not load the model in {model_dir}"
                                   + (f" or its vad_model {kwargs['vad_model']}" if kwargs.get("vad_model") else "")
                                   + f": {_load_error(e)}") from e
    finally:
        logging.disable(previous)
    trained_dither(model)
    return model


_DITHER_NOISE_S = 30  # seconds of seeded noise, repeated over longer audio
_trained_dithers: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def trained_dither(model: Any) -> float:
    """The dither ``model``'s frontend applies (``frontend_conf.dither``; funasr's WavFrontend default 1.0), in
    sample units of a float waveform; the frontend's own dither is switched off on first call.

    funasr's frontend adds fresh random noise of that size at inference too, so the same audio decodes
    differently call to call; decoding without it feeds exact digital silence (zero padding, a gated telephone
    line) to a model that never heard it, and it answers with characters (on the demo model: CER 60 % on
    utterances padded with 1 s of zeros, against 5 % dithered). The workbench adds the same noise, seeded: see
    :func:`dither`.
    """
    if model not in _trained_dithers:
        frontend = model.kwargs.get("frontend")
        amount = _configured_dither(model)
        if getattr(frontend, "dither", 0.0):  # a model not built by load_model: its random dither off (until funasr
            frontend.dither = 0.0              # restores its build-time frontend in a generate() call)
        # WavFrontend scales waveforms by 2**15 before its dither (upsacle_samples, sic) unless told not to
        _trained_dithers[model] = amount / 32768 if getattr(frontend, "upsacle_samples", True) else amount
    return _trained_dithers[model]


def _configured_dither(model: Any) -> float:
    """``frontend_conf.dither`` of the config.yaml funasr built ``model`` from, else its frontend class's default."""
    import inspect

    import yaml

    frontend = model.kwargs.get("frontend")
    if frontend is None or not hasattr(frontend, "dither"):
        return 0.0
    # config is set when configuration.json names it; without one funasr reads model_path/config.yaml
    path = model.kwargs.get("config") or (Path(model.kwargs["model_path"]) / "config.yaml"
                                          if model.kwargs.get("model_path") else None)
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, yaml.YAMLError):
        config = None
    conf = (config or {}).get("frontend_conf") if isinstance(config, dict) else None
    if isinstance(conf, dict) and "dither" in conf:
        return float(conf["dither"] or 0.0)
    default = inspect.signature(type(frontend)).parameters.get("dither")
    return float(default.default) if default is not None and isinstance(default.default, (int, float)) else 0.0


@functools.lru_cache(maxsize=4)
def _noise(scale: float) -> Any:
    import numpy as np

    return np.random.default_rng(0).standard_normal(16000 * _DITHER_NOISE_S, dtype=np.float32) * np.float32(scale)


def dither(wave: Any, scale: float) -> Any:
    """``wave`` (float32 samples, changed in place) plus Gaussian noise of standard deviation ``scale``: the same
    noise for every file (seeded, repeated every 30 s), so the same audio decodes the same in any batch and run."""
    if scale:
        noise = _noise(scale)
        for start in range(0, len(wave), len(noise)):
            part = wave[start:start + len(noise)]
            part += noise[:len(part)]
    return wave


def _load_error(e: Exception) -> str:
    """funasr's loading error, with what it means where its message does not say (its 'not registered' error
    lists 50 classes and every optional import that failed)."""
    text = str(e)
    unregistered = re.search(r"model '?([\w.-]+)'? is not registered", text)
    if unregistered:
        from importlib import metadata

        return (f"config.yaml names model {unregistered.group(1)!r}, a class funasr {metadata.version('funasr')} does "
                "not have (a FunASR 0.x class? a model for another toolkit?); its model classes include "
                "Paraformer, BiCifParaformer, SeacoParaformer, ContextualParaformer, SenseVoiceSmall")
    if "PytorchStreamReader" in text or "failed finding central directory" in text or "unpickling" in text.lower() \
            or isinstance(e, EOFError):
        return f"the weights file is damaged or incomplete ({text.splitlines()[0][:200]}); download or copy it again"
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:500]}" + (" ..." if len(text) > len(first) or len(first) > 500 else "")


def weight_notes(model: Any) -> list[str]:
    """What funasr's loader only prints (and the workbench's quiet loading hides): model weights its checkpoint
    lacks (left random) and weights of another shape (skipped: a tokens file that does not match the
    checkpoint's vocabulary, for one). Empty when every weight loaded."""
    notes = _unloaded_weights(model.model, model.kwargs.get("init_param"))
    if getattr(model, "vad_model", None) is not None:  # the vad_model's too: random weights segment at random
        notes += [f"vad_model: {n}" for n in _unloaded_weights(model.vad_model, (model.vad_kwargs or {}).get("init_param"))]
    return notes


def _unloaded_weights(net: Any, path: Any) -> list[str]:
    from asr_workbench.modelhub import load_weights

    if not path or not Path(str(path)).is_file():
        return []
    state = load_weights(path, mmap=True)
    missing, other = [], []
    for key, want in net.state_dict().items():
        got = state.get(key, state.get(f"module.{key}"))
        if got is None:
            missing.append(key)
        elif tuple(got.shape) != tuple(want.shape):
            other.append(f"{key}: {tuple(got.shape)} in the file, {tuple(want.shape)} in the model")
    notes = []
    if missing:
        notes.append(f"{path}: {len(missing)} of the model's weights are not in it and keep random values "
                     f"(e.g. {', '.join(missing[:3])}): transcripts will be wrong")
    if other:
        notes.append(f"{path}: {len(other)} weights have another shape than the model built from config.yaml and "
                     f"the tokens file, and were not loaded (e.g. {other[0]}): transcripts will be wrong")
    return notes


# the decoding keywords funasr 1.4.16's Paraformer family (paraformer, bicif, contextual, seaco), SenseVoice and
# AutoModel.generate read; others are passed on but said (see option_notes)
_FUNASR_DECODING_KEYS = frozenset({
    "decoding_ctc_weight", "beam_size", "maxlenratio", "minlenratio", "nbest", "penalty", "lm_file", "lm_weight",
    "ngram_weight", "hotword", "output_timestamp", "sentence_timestamp", "return_raw_text", "en_post_proc",
    "batch_size_s", "batch_size_threshold_s", "merge_length_s", "vad_kwargs", "punc_kwargs", "spk_kwargs",
    "data_type", "fs", "begin_time", "cache", "language", "use_itn", "ban_emo_unk", "text_norm",
    "is_final", "chunk_size", "encoder_chunk_look_back", "decoder_chunk_look_back"})  # the streaming Paraformer's
_WORKBENCH_KEYS = frozenset({"batch_size", "batch_seconds", "ctc_weight", "attention"})


def _unbatched(model_class: Any) -> tuple[str, dict[str, Any]] | None:
    """Why funasr's ``model_class`` must decode one utterance per call, and the keywords that call needs; None
    for the classes that decode batches. Its streaming Paraformer takes one utterance and decodes the last chunk
    only when told the input is final (without it every transcript lost its end); its attention models
    (Conformer, Transformer...) decode a batch of several by CTC greedy search instead of their attention
    decoder's beam search, so the batch size would choose the algorithm."""
    if model_class is None:
        return None
    if model_class.__name__ == "ParaformerStreaming":
        return f"{model_class.__name__} decodes one whole utterance per call", {"is_final": True}
    if hasattr(model_class, "inference_batch_ctc"):
        return (f"{model_class.__name__} decodes batches of several by CTC greedy search instead of its attention "
                "decoder's beam search"), {}
    return None


def _model_class(model_config: dict[str, Any]) -> Any:
    from funasr.register import tables

    return tables.model_classes.get(str(model_config.get("model")))


def option_notes(model_config: dict[str, Any], opts: DecodeOptions) -> list[str]:
    """Plain-language notes on options the model ignores (said, never silently dropped).

    A funasr Paraformer builds its CTC branch only when ``model_conf.ctc_weight > 0``.
    """
    has_ctc = float((model_config.get("model_conf") or {}).get("ctc_weight", 0.0) or 0.0) > 0
    cls = _model_class(model_config)
    notes = []
    alone = _unbatched(cls)
    if alone and (opts.batch_size > 1 or opts.batch_seconds):
        notes.append(f"decoded one utterance at a time, whatever batch_size says: {alone[0]}")
    if opts.vad_model and opts.batch_size > 1:
        notes.append("with vad_model each file is decoded on its own, its speech segments batched up to "
                     "batch_seconds of audio (300 s by default): batch_size is not used")
    if opts.extra.get("hotword") and cls is not None and cls.__name__ not in ("SeacoParaformer", "ContextualParaformer"):
        notes.append(f"hotword is ignored: {cls.__name__} has no hotword biasing (SeacoParaformer and "
                     "ContextualParaformer have)")
    for key in sorted(set(opts.extra) - _FUNASR_DECODING_KEYS):  # funasr's inference takes **kwargs: a typo is silent
        near = difflib.get_close_matches(key, sorted(_FUNASR_DECODING_KEYS | _WORKBENCH_KEYS), n=1)
        notes.append(f"decoding option {key!r} is not one the workbench or funasr's Paraformer models read"
                     + (f" (did you mean {near[0]!r}?)" if near else "") + "; passed to funasr as is")
    if opts.ctc_weight and not has_ctc:
        notes.append(f"ctc_weight={opts.ctc_weight} is ignored: this model has no CTC branch "
                     "(model_conf.ctc_weight is 0), so it decodes without CTC scoring")
    non_autoregressive = cls is None or "Paraformer" in cls.__name__  # an attention decoder searches beams itself
    if opts.beam_size and opts.beam_size > 1 and not (has_ctc and opts.ctc_weight) and non_autoregressive:
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
                  sink: Callable[[list[Hypothesis]], None], note: Callable[[str], None] | None = None) -> None:
    """Decode ``(key, path, duration)`` items batch by batch; ``sink`` gets each finished batch, ``note`` each
    batch funasr could not decode whole (see :func:`_infer_batch`)."""
    _decode_loop(model, items, opts, _generate_kwargs(opts), [d for _, _, d in items], sink, note)


def _autocast(model: Any, precision: str) -> Any:
    """bf16 / fp16 autocast on a CUDA model (``precision`` as DecodeOptions checked it); fp32 (and any CPU model)
    decodes as is."""
    import torch

    device = next(model.model.parameters()).device
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _decode_loop(model: Any, items: Sequence[tuple[str, str, float]], opts: DecodeOptions, kw: dict[str, Any],
                 durations: list[float], sink: Callable[[list[Hypothesis]], None],
                 note: Callable[[str], None] | None = None) -> None:
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))  # funasr's beam search logs lines per utterance at INFO
    try:
        with attention.fused(model.model, enabled=opts.attention == "fused"):
            _decode_batches(model, items, opts, kw, durations, sink, note)
    finally:
        logging.disable(previous)


def _decode_batches(model: Any, items: Sequence[tuple[str, str, float]], opts: DecodeOptions, kw: dict[str, Any],
                    durations: list[float], sink: Callable[[list[Hypothesis]], None],
                    note: Callable[[str], None] | None = None) -> None:
    scale = trained_dither(model)
    # audio at the model's rate (an 8 kHz model's frontend takes 8 kHz samples), and funasr told so: it resamples
    # arrays it is handed from kwargs["fs"] (16 kHz by default) to its frontend's rate
    fs = _model_rate(model)
    kw = {**kw, "fs": fs}
    alone = _unbatched(type(model.model))
    if alone:  # see option_notes: the run's notes say so
        opts, kw = replace(opts, batch_size=1, batch_seconds=None), {**kw, **alone[1]}
    if opts.vad_model:  # long audio: funasr segments each file itself
        kw = {k: v for k, v in kw.items() if k != "batch_size_s"}
        with _autocast(model, opts.precision):
            for key, path, dur in items:
                wave, problem = _read(path, scale, fs)
                if wave is None:
                    sink([Hypothesis(key, "", dur, error=problem)])
                    continue
                try:
                    res = model.generate(input=wave, batch_size_s=opts.batch_seconds or 300, **kw)
                except Exception as e:
                    raise RuntimeError(f"funasr could not decode {key} ({path}) with its vad_model: {e!r}") from e
                text = " ".join(r.get("text", "") for r in res).strip()
                if not text:  # funasr returns nothing for a file without a speech segment
                    sink([Hypothesis(key, "", dur, warning="empty transcript: the vad_model found no speech in it, "
                                     "or the model recognised none in what it found"
                                     + (f" ({problem})" if problem else ""), warning_code="no_speech")])
                else:
                    sink([Hypothesis(key, text, dur, warning=problem)])
        return
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    import torch

    batches = list(length_sorted_batches(durations, opts.batch_size, opts.batch_seconds))
    workers, threads = plan_workers(model, opts, kw)
    device = next(model.model.parameters()).device
    feature_device = (device if opts.features_on == "model" else torch.device("cpu")) if _takes_features(model) else None
    kw = {k: v for k, v in kw.items() if k not in ("data_type", "batch_size", "input_len")}

    local = threading.local()

    def load(batch: list[int]) -> list[tuple[Any, str]]:
        return [_read(items[i][1], scale, fs) for i in batch]

    def work(batch: list[int], loaded: Future[list[tuple[Any, str]]]) -> list[Hypothesis]:
        # each worker thread takes its batch's audio (read ahead on the loader thread while earlier batches
        # decode: on a GPU, one batch at a time, reading 64 files would otherwise stall it), computes features on
        # the model's device and decodes; with several GPU workers each has its own CUDA stream
        if device.type == "cuda" and workers > 1 and not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(device)
        stream = getattr(local, "stream", None)
        got = loaded.result()
        ok = [j for j, (wave, _) in enumerate(got) if wave is not None]
        res: list[dict[str, Any]] = []
        if ok:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(), \
                    _autocast(model, opts.precision):
                res = _infer_batch(model, [got[j][0] for j in ok], feature_device, kw,
                                   [f"{items[batch[j]][0]} ({items[batch[j]][1]})" for j in ok], note)
        text = {j: str(r.get("text", "") or "") for j, r in zip(ok, res)}
        return [Hypothesis(items[i][0], text.get(j, ""), items[i][2],
                           **({"warning": got[j][1]} if j in text else {"error": got[j][1]}))
                for j, i in enumerate(batch)]

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    # soundfile reads (and torchaudio resamples) without the GIL: as many readers as decoding workers
    loader = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audio")
    try:
        pending, todo = set(), iter(batches)
        while True:  # at most 2 batches per worker queued (their audio read ahead): memory stays bounded
            for batch in todo:
                pending.add(pool.submit(work, batch, loader.submit(load, batch)))
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                sink(fut.result())
    finally:  # an interrupt or a failed batch: queued reads and batches are dropped, running ones finish
        loader.shutdown(wait=False, cancel_futures=True)
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            loader.shutdown(wait=True)
            torch.set_num_threads(previous)


def _model_rate(model: Any) -> int:
    """The sample rate ``model``'s frontend takes (``frontend_conf.fs``; 16 kHz for Paraformer)."""
    return int(getattr(model.kwargs.get("frontend"), "fs", None) or audio_mod.SAMPLE_RATE)


def _read(path: str, dither_scale: float, fs: int = 16000) -> tuple[Any, str]:
    """An utterance's samples (:func:`dither`-ed) and level warning ("" for none), or (None, why it cannot be
    decoded): found only now, reading the whole file, so that one utterance is skipped, not the run."""
    try:
        wave, warning = audio_mod.load_checked(path, target_sr=fs)
        return dither(wave, dither_scale), warning or ""
    except audio_mod.AudioError as e:
        return None, str(e)


def _takes_features(model: Any) -> bool:
    """funasr's Paraformer accepts ready features (data_type="fbank"); other model classes get waveforms."""
    return model.kwargs.get("frontend") is not None and type(model.model).__name__ == "Paraformer"


def plan_workers(model: Any, opts: DecodeOptions, kw: dict[str, Any]) -> tuple[int, int]:
    """How many batches decode at once (threads) and how many torch threads each op uses (0: leave as is).

    On a CPU, several single-threaded batches at once use the cores better than one batch over all cores;
    the budget is ``OMP_NUM_THREADS`` (1 in shard processes and parallel batch runs) or the usable cores.
    On a GPU one batch at a time, features computed on the GPU, was fastest (H100, Paraformer-large: 3,140x
    real time vs 2,609x with 4 threads and 1,683x with 8; bench/RESULTS.md). Beam search (CTC or LM scoring)
    and other model classes keep one batch at a time: their decoders hold state.
    """
    if opts.workers < 0:
        raise ValueError(f"workers must be >= 0 (0: automatic), got {opts.workers}")
    if not _takes_features(model) or float(kw.get("decoding_ctc_weight") or 0) > 1e-5 or kw.get("lm_file"):
        return 1, 0
    device = next(model.model.parameters()).device
    if device.type == "cuda":
        return opts.workers or 1, 0
    budget = thread_budget()
    workers = opts.workers or max(1, min(budget, 4))
    return workers, max(1, budget // workers)


def _infer_batch(model: Any, waves: list[Any], feature_device: Any, kw: dict[str, Any],
                 names: Sequence[str] = (), note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """funasr's results for one batch of waveforms, one per waveform.

    With ``feature_device`` the features are computed there (in full precision, outside any autocast) by the
    model's own frontend and handed to the model as ``data_type="fbank"``. A batch funasr cannot decode whole is
    decoded one utterance at a time: its Paraformer returns no result for a batch in which no utterance yields a
    token (all silence), and its ``cif_v1`` raises an IndexError for a batch that ends in such utterances (a
    short quiet clip sorted last); ``note`` gets the name of the first utterance that yields no token alone (the
    likely cause), else the batch's first. An utterance that fails on its own raises,
    named by ``names`` ("key (path)").
    """
    import torch

    try:
        if feature_device is not None and len(waves) > 1:  # funasr squeezes the lengths of a 1-utterance fbank batch
            from funasr.utils.load_utils import extract_fbank

            with torch.autocast(feature_device.type, enabled=False):
                feats, lens = extract_fbank([torch.from_numpy(w).to(feature_device) for w in waves],
                                            data_type="sound", frontend=model.kwargs["frontend"])
            res = _inference(model, feats, lens, len(waves), data_type="fbank", **kw)
        else:
            res = _inference(model, waves, None, len(waves), **kw)
        if len(res) == len(waves):
            return res
    except Exception as e:
        if len(waves) == 1:
            raise RuntimeError(f"funasr could not decode {_name(names, 0)}: {e!r}") from e
        log.warning("a batch of %d (first %s) could not be decoded whole (%r): decoding it one utterance at a time",
                    len(waves), _name(names, 0), e)
    out = []
    for i, w in enumerate(waves):
        try:
            out.append((_inference(model, [w], None, 1, **kw) or [{}])[0])
        except Exception as e:
            raise RuntimeError(f"funasr could not decode {_name(names, i)}: {e!r}") from e
    if note and len(waves) > 1:  # the likely cause: an utterance that yields no token on its own
        note(next((_name(names, i) for i, r in enumerate(out) if not str(r.get("text", "") or "").strip()),
                  _name(names, 0)))
    return out


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if i < len(names) else f"utterance {i + 1} of its batch"


def _inference(model: Any, data: Any, lengths: Any, n: int, **cfg: Any) -> list[dict[str, Any]]:
    """One batch through the funasr model's own ``inference``, as ``AutoModel.inference`` calls it, with this
    call's copy of the model's settings (``generate()`` resets shared ones that concurrent batches would race
    on) and without the ``torch.cuda.empty_cache()`` funasr runs after every call (it stalls the GPU)."""
    import copy

    import torch
    from funasr.auto import auto_model
    from funasr.utils.misc import deep_update

    own = {k: (v if k in auto_model.AutoModel._IMMUTABLE_KWARGS_KEYS or not isinstance(v, (dict, list))
               else copy.deepcopy(v)) for k, v in model.kwargs.items()}
    own.pop("cache", None)
    deep_update(own, cfg)
    own["batch_size"] = n
    with torch.no_grad():
        res = model.model.inference(data_in=data, data_lengths=lengths, key=[str(i) for i in range(n)], **own)
    results = res[0] if isinstance(res, (list, tuple)) and res else []
    return auto_model.apply_postprocess_hotwords_to_results(results, cfg)


def transcribe(model: Any, items: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Hypothesis]:
    """Decode ``(key, audio_path)`` pairs in this process; results in input order."""
    triples = [(k, p, audio_mod.probe(p).duration_s) for k, p in items]
    got: dict[str, Hypothesis] = {}
    _decode_items(model, triples, DecodeOptions(batch_size=batch_size), lambda hs: got.update((h.key, h) for h in hs))
    failed = [f"{k} ({p}): {got[k].error}" for k, p in items if got[k].error]
    if failed:  # no data report here to carry them: an empty transcript would be scored as deletions
        raise audio_mod.AudioError(f"{len(failed)} file(s) could not be decoded: " + "; ".join(failed[:5]))
    return [got[k] for k, _ in items]


def _read_partial(path: Path, fingerprint: str) -> dict[str, Hypothesis]:
    """Hypotheses of an earlier run with the same fingerprint; a line cut off by an interruption ends it."""
    if not path.is_file():
        return {}
    records = read_jsonl(path)
    first = next(records, (0, None))[1]
    if not isinstance(first, dict) or first.get("fingerprint") != fingerprint:
        return {}
    out = {}
    for _, h in records:
        if not isinstance(h, dict) or not isinstance(h.get("key"), str):
            break
        out[h["key"]] = Hypothesis(h["key"], h["text"], h["duration_s"], h.get("error", ""), h.get("warning", ""),
                                   h.get("warning_code") or "audio_level")
    return out


def _rewrite_partial(path: Path, fingerprint: str, done: dict[str, Hypothesis]) -> None:
    """Start the partial file anew with what parsed, so appended lines never join a cut-off one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_line({"fingerprint": fingerprint})
                    + "".join(jsonl_line(asdict(h)) for h in done.values()), encoding="utf-8")


def _take_parts(partial_file: Path, fingerprint: str) -> dict[str, Hypothesis]:
    """The hypotheses in the shard files of ``partial_file`` (``<name>.part<i>``) written for ``fingerprint`` (another
    run's are dropped), which are removed: those of a run killed before it merged them are resumed, not redone."""
    got: dict[str, Hypothesis] = {}
    for part in sorted(partial_file.parent.glob(glob.escape(partial_file.name) + ".part*")):
        got.update(_read_partial(part, fingerprint))
        part.unlink()
    return got


def _shard_worker(model_dir: str, device: str, items_file: str, opts: DecodeOptions, part: str, fingerprint: str,
                  parent: int, progress: Any) -> None:
    import torch


    tie = die_with(parent)  # a killed kernel or job must not leave shards decoding (and holding GPUs) for hours
    if tie:
        tie()

    # the items come in a file, not as a pickled argument: the parent writes a process's arguments into a pipe
    # and waits until they are read, so a large list to a child that dies first (a script without a
    # ``__main__`` guard) would hang the parent instead of failing the shard
    items = [tuple(x) for x in json.loads(Path(items_file).read_text(encoding="utf-8"))]
    torch.set_num_threads(1)
    model = load_model(model_dir, device=device, ncpu=1,
                       **({"vad_model": opts.vad_model} if opts.vad_model else {}))
    for text in weight_notes(model):
        progress.put(("weights", text))
    with open(part, "a", encoding="utf-8") as f:
        f.write(jsonl_line({"fingerprint": fingerprint}))  # a rerun keeps this shard's lines only for the same run
        def sink(hs: list[Hypothesis]) -> None:
            f.writelines(jsonl_line(asdict(h)) for h in hs)
            f.flush()
            progress.put(sum(h.duration_s for h in hs))

        _decode_items(model, items, opts, sink, lambda name: progress.put(("one_by_one", name)))


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
    done = {**_read_partial(partial_file, fingerprint), **_take_parts(partial_file, fingerprint)}
    _rewrite_partial(partial_file, fingerprint, done)
    for leftover in partial_file.parent.glob(glob.escape(partial_file.name) + ".items*"):  # a killed run's shard lists
        leftover.unlink()
    todo = [it for it in items if it[0] not in done]
    audio_total = sum(d for _, _, d in items)
    resumed_s = round(sum(h.duration_s for h in done.values()), 1)

    def progress_bar() -> Any:  # made once decoding starts: its rate counts neither model loading nor resumed audio
        return tqdm(total=round(audio_total, 1), initial=resumed_s, unit="s audio", desc="decoding", disable=not progress,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")

    t0 = time.perf_counter()
    load_s = 0.0
    notes: list[str] = []
    one_by_one: list[str] = []  # per batch funasr could not decode whole: an utterance without a token, or its first
    if n_proc == 1 or len(todo) < 2:
        if model is None:
            # funasr sets torch's threads to ncpu at every generate() (the vad_model path): the budget, not every core
            model = load_model(model_dir, device=device, ncpu=thread_budget(),
                               **({"vad_model": opts.vad_model} if opts.vad_model else {}))
        notes = weight_notes(model)
        for note in notes:
            log.warning(note)
        load_s = time.perf_counter() - t0
        t0 += load_s
        bar = progress_bar()
        with open(partial_file, "a", encoding="utf-8") as f:
            def sink(hs: list[Hypothesis]) -> None:
                f.writelines(jsonl_line(asdict(h)) for h in hs)
                f.flush()
                bar.update(round(sum(h.duration_s for h in hs), 1))

            _decode_items(model, todo, opts, sink, one_by_one.append)
        n_used = 1
    else:
        n_used = min(n_proc, len(todo))
        by_length = sorted(todo, key=lambda it: -it[2])  # dealt round-robin, longest first: shards of equal audio
        shards = [by_length[i::n_used] for i in range(n_used)]
        # <partial>.part<i> / .items<i>: names that extend the partial file's, so no pattern can match it
        parts = [partial_file.with_name(f"{partial_file.name}.part{i}") for i in range(n_used)]
        lists = [partial_file.with_name(f"{partial_file.name}.items{i}") for i in range(n_used)]
        for items_file, shard in zip(lists, shards):
            items_file.write_text(json.dumps(shard, ensure_ascii=False), encoding="utf-8")
        bar = progress_bar()  # the shards load their models inside it
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_shard_worker, args=(model_dir, devices[i % len(devices)], str(lists[i]), opts,
                                                          str(parts[i]), fingerprint, os.getpid(), queue))
                 for i in range(n_used)]
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
                    msg = queue.get(timeout=0.2)
                except Exception:  # queue.Empty
                    continue
                if isinstance(msg, tuple):  # ("weights", note) from every shard (the same model), ("one_by_one", name)
                    if msg[0] == "one_by_one":
                        one_by_one.append(msg[1])
                    elif msg[1] not in notes:
                        notes.append(msg[1])
                        log.warning(msg[1])
                else:
                    bar.update(round(msg, 1))
        finally:  # an interrupted kernel must not leave shard processes holding CPUs or GPUs
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
            for items_file in lists:
                items_file.unlink(missing_ok=True)
        failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
        with open(partial_file, "a", encoding="utf-8") as f:  # keep what the shards finished (whole lines only)
            f.writelines(jsonl_line(asdict(h)) for h in _take_parts(partial_file, fingerprint).values())
        if failed:
            raise RuntimeError(f"decoding shard(s) {failed} failed (exit codes "
                               f"{[procs[i].exitcode for i in failed]}); finished results kept in {partial_file}. "
                               "Their error is printed above; from a script, njob > 1 needs the call under "
                               "if __name__ == '__main__': (each shard process imports the script)")
    wall = time.perf_counter() - t0
    bar.update(bar.total - bar.n)  # per-batch rounding must not end the bar at 99 %
    bar.close()
    if one_by_one:
        notes.append(f"{len(one_by_one)} batch(es) could not be decoded whole by funasr and were decoded one utterance "
                     "at a time (slower; without padding a transcript can differ a little from its batched one). "
                     "funasr fails a whole batch when an utterance in it yields no token (silence, a very short "
                     f"clip); in the first such batch: {one_by_one[0]}")
    got = _read_partial(partial_file, fingerprint)
    missing = [k for k, _, _ in items if k not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) were not decoded, e.g. {missing[:3]}")
    return DecodeResult([got[k] for k, _, _ in items], wall, sum(d for _, _, d in todo) or audio_total,
                        ",".join(devices), n_used, resumed=len(done), load_s=load_s, notes=notes)
