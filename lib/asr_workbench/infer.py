"""The inference notebook's one call: data in -> transcripts, CER and run files out.

:func:`run` validates the data, resolves the model and the decoding settings,
decodes (sorted batches, optional shards), scores, and writes into
``output_dir``:

- ``config.yaml``: the resolved settings;
- ``data_report.jsonl``: one line per input problem (key, file:line, severity, reason);
- ``1best_recog/text`` (and, with references, ``ref.proc``, ``text.proc``, ``text.cer``
  in FunASR's format, written by funasr's own scorer);
- ``results.jsonl``: one line per decoded utterance (ref, hyp, normalised forms, errors);
- ``errors.txt``: aligned REF/HYP/OPS for every utterance with errors;
- ``metrics.json``: CER, S/D/I, counts, timing, normaliser, provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr_workbench import attention, datadir, decode, modelhub, paths, runs, scoring
from asr_workbench.fileio import atomic_write_text, jsonl_line

__all__ = ["InferResult", "resolve_decoding", "run", "score_run"]

# what a finished run derives from its hypotheses: a run into a used folder removes an earlier run's once it has
# decoded (a run without ``text`` must not leave another run's scores beside its own config; a failed one keeps them)
_DERIVED = ("metrics.json", "results.jsonl", "errors.txt", "1best_recog")

# decoding settings the workbench itself interprets; any other key goes to funasr's generate()
_OWN_KEYS = {"batch_size", "batch_seconds", "beam_size", "ctc_weight", "attention"}


@dataclass
class InferResult:
    """What an inference run produced (everything is also on disk in ``output_dir``)."""

    output_dir: Path
    metrics: dict[str, Any]
    results: list[dict[str, Any]]
    report: datadir.DataReport
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def cer(self) -> float | None:
        return self.metrics.get("cer")


def _check_decoding(settings: dict[str, Any], origin: dict[str, str]) -> None:
    """Types and ranges of the workbench's own decoding keys, each error naming where the value came from."""
    def bad(key: str, want: str) -> ValueError:
        return ValueError(f"{origin.get(key, 'default')}: decoding option {key} must be {want}, got {settings[key]!r}")

    def number(key: str, integer: bool = False) -> bool:
        v = settings.get(key)
        return not isinstance(v, bool) and isinstance(v, int if integer else (int, float))

    if not number("batch_size", integer=True) or settings["batch_size"] < 1:
        raise bad("batch_size", "an integer >= 1")
    if settings.get("batch_seconds") is not None and (not number("batch_seconds") or settings["batch_seconds"] < 0):
        raise bad("batch_seconds", "a number of seconds > 0 (or 0 / null: off)")
    if settings.get("beam_size") is not None and (not number("beam_size", integer=True) or settings["beam_size"] < 1):
        raise bad("beam_size", "an integer >= 1 (or null)")
    if settings.get("ctc_weight") is not None and (not number("ctc_weight") or not 0 <= settings["ctc_weight"] <= 1):
        raise bad("ctc_weight", "a number from 0 to 1 (or null)")
    if settings.get("attention") is not None and settings["attention"] not in attention.MODES:
        raise bad("attention", f"one of {', '.join(attention.MODES)} (or null)")


_ALIASES = {"decoding_ctc_weight": "ctc_weight"}  # funasr 1.x's generate() keyword for the workbench's own key


def _own_names(layer: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """``layer`` with funasr's names of the workbench's keys replaced (so they are range-checked and conflicts are
    found); both names with different values is an error."""
    if not layer:
        return layer
    out = dict(layer)
    for alias, own in _ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            if own in out and out[own] != value:
                raise ValueError(f"{source}: {alias}={value!r} and {own}={out[own]!r} are one option; keep one")
            out[own] = value
    return out


def resolve_decoding(model_defaults: dict[str, Any], params: dict[str, Any],
                     overrides: dict[str, Any] | None, defaults_source: str = "decoding.yaml") -> dict[str, Any]:
    """``decoding.yaml`` <- notebook parameters (those not None) <- ``decoding_overrides``.

    A key set both as a parameter and in ``decoding_overrides`` with different values is
    a conflict and fails at once, naming the key. A value of the wrong type or range fails naming
    where it came from (``defaults_source``: the model's decoding.yaml path, a parameter, the overrides).
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"decoding_overrides must be a mapping of decoding options (e.g. {{batch_seconds: 120}}), "
                         f"got {type(overrides).__name__} {overrides!r}")
    model_defaults, overrides = _own_names(model_defaults, defaults_source), _own_names(overrides, "decoding_overrides")
    settings: dict[str, Any] = {"batch_size": 16, **(model_defaults or {})}
    origin = {k: defaults_source for k in (model_defaults or {})}
    given = {k: v for k, v in params.items() if v is not None}
    for k, v in (overrides or {}).items():
        if k in given and given[k] != v:
            raise ValueError(f"decoding option {k!r} is set twice: parameter {k}={given[k]!r} and "
                             f"decoding_overrides[{k!r}]={v!r}; keep one")
    settings.update(given)
    origin.update({k: f"parameter {k}" for k in given})
    settings.update(overrides or {})
    origin.update({k: "decoding_overrides" for k in overrides or {}})
    _check_decoding(settings, origin)
    return settings


def _device_list(devices: list[str | int] | str | int | None) -> list[str]:
    """``devices`` as given in a notebook or on the command line (``0,1``, ``[0, 1]``, ``1``, ``cuda:1``, ``cpu``)
    as device names; GPU numbers become ``cuda:<n>``."""
    if devices is None or devices == "" or devices == []:
        return []
    if isinstance(devices, str):
        items: list[Any] = [d.strip() for d in devices.split(",") if d.strip()]
    elif isinstance(devices, int) and not isinstance(devices, bool):
        items = [devices]
    elif isinstance(devices, (list, tuple)):
        items = list(devices)
    else:
        raise ValueError(f"devices must be a list like [0, 1] or 'cuda:0,cuda:1', got {devices!r}")
    out = []
    for d in items:
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise ValueError(f"devices: {d!r} is not a device (a GPU number, cuda:<n> or cpu)")
        out.append(f"cuda:{d}" if isinstance(d, int) or d.isdigit() else d)
    return out


def _fingerprint(model: modelhub.ModelFolder, settings: dict[str, Any], items: list[tuple[str, str, float]]) -> str:
    h = hashlib.sha256()
    h.update(str(model.path).encode())
    weights = model.weights
    if weights and weights.is_file():
        st = weights.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for key, path, _ in items:  # size and mtime: audio replaced under the same name must not resume old results
        try:
            st = os.stat(path)
            h.update(f"{key}\0{path}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{key}\0{path}\n".encode())
    return h.hexdigest()


def _audio_issues(ds: datadir.DataSet, hyps: list[decode.Hypothesis]) -> list[decode.Hypothesis]:
    """The hypotheses of audio that decoded; what decoding found wrong with the audio (a file that stops part-way,
    NaN samples, an odd level) goes into the data report, at the utterance's wav.scp line."""
    where = {u.key: u.where for u in ds.utterances}
    audio = {u.key: u.audio for u in ds.utterances}
    for h in hyps:
        if h.error:
            ds.report.add(h.key, where[h.key], "error", "undecodable_audio", f"{h.error}: not decoded ({audio[h.key]})")
        elif h.warning:
            ds.report.add(h.key, where[h.key], "warning", h.warning_code, h.warning)
    return [h for h in hyps if not h.error]


def score_run(ds: datadir.DataSet, hyps: list[decode.Hypothesis], out: Path) -> tuple[list[dict[str, Any]], scoring.CerResult | None]:
    """Per-utterance rows (``results.jsonl``), aligned errors, FunASR files; returns the corpus CER."""
    by_key = {u.key: u for u in ds.utterances}
    rows, keys, scores, err_blocks = [], [], [], []
    for h in hyps:
        u = by_key[h.key]
        row: dict[str, Any] = {"key": h.key, "audio": u.audio, "duration_s": round(u.duration_s, 3),
                               "hyp": h.text, "hyp_norm": scoring.normalise(h.text), "scored": u.text is not None}
        if u.text is not None:
            s = scoring.score_utterance(u.text, h.text)
            row.update(ref=u.text, ref_norm=s.ref, sub=s.substitutions, dels=s.deletions, ins=s.insertions,
                       hits=s.hits, ref_tokens=s.ref_tokens, errors=s.errors, cer=round(s.cer, 4), oov=list(u.oov))
            keys.append(h.key)
            scores.append(s)
            if s.errors:
                err_blocks.append(f"{h.key}  errors={s.errors} (S={s.substitutions} D={s.deletions} "
                                  f"I={s.insertions}) / {s.ref_tokens}\n{scoring.alignment_text(s)}")
        rows.append(row)
    recog = out / "1best_recog"
    recog.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recog / "text", "".join(f"{h.key} {h.text}\n".replace(" \n", "\n") for h in hyps))
    atomic_write_text(out / "results.jsonl", "".join(map(jsonl_line, rows)))
    header = f"# aligned errors; normaliser: {scoring.NORMALISER}\n# S substitution, D deletion, I insertion, * gap\n\n"
    atomic_write_text(out / "errors.txt", header + "\n".join(err_blocks))
    if not scores:
        return rows, None
    scoring.write_funasr_text_cer(keys, scores, recog)
    return rows, scoring.aggregate(scores)


def run(
    model: str,
    data_dir: str,
    output_dir: str,
    batch_size: int | None = None,
    ctc_weight: float | None = None,
    beam_size: int | None = None,
    device: str = "auto",
    devices: list[str] | str | None = None,
    njob: int = 1,
    decoding_overrides: dict[str, Any] | None = None,
    on_bad_input: str = "skip",
    cache_dir: str | None = None,
    vad_model: str | None = None,
    progress: bool = True,
    loaded_model: Any = None,
    precision: str = "fp32",
    model_revision: str | None = None,
) -> InferResult:
    """Transcribe ``data_dir`` with ``model`` and score it when ``text`` exists.

    Args:
        model: a model folder or a ModelScope id (cached ids never touch the network).
        data_dir: a folder with ``wav.scp`` (+ ``text``) or a FunASR ``.jsonl``.
        output_dir: the run folder (relative paths resolve against the repository root).
        batch_size / ctc_weight / beam_size: decoding settings; None keeps ``decoding.yaml``'s.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        devices / njob: shard the data over these devices, ``njob`` processes each.
        decoding_overrides: more decoding settings (win over ``decoding.yaml``).
        on_bad_input: ``skip`` (report bad utterances and go on) or ``fail``.
        cache_dir: ModelScope cache (default ``$MODELSCOPE_CACHE`` or ``~/.cache/modelscope``).
        vad_model: a funasr VAD model (e.g. ``fsmn-vad``) for audio longer than ~30 s.
        loaded_model: an AutoModel already loaded from ``model`` (reused, single process only).
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast when decoding on a GPU (ignored on CPU).
        model_revision: the ModelScope revision of an id (``v2.0.4``); None: ``master``, or the one cached.
    """
    mf = modelhub.open_model(model, cache_dir=cache_dir, revision=model_revision)
    out = runs.check_output_dir(output_dir, "infer", protect=[mf.path])  # made once the data is read
    vad = modelhub.resolve_helper_model(vad_model, cache_dir) if vad_model else None
    vad_dir = str(vad.path) if vad else None
    settings = resolve_decoding(mf.decoding, {"batch_size": batch_size, "ctc_weight": ctc_weight,
                                              "beam_size": beam_size}, decoding_overrides, str(mf.path / "decoding.yaml"))
    devices = _device_list(devices)
    opts = decode.DecodeOptions(
        batch_size=int(settings["batch_size"]),
        batch_seconds=settings.get("batch_seconds") or None,  # 0: off, as null
        beam_size=settings.get("beam_size"),
        ctc_weight=settings.get("ctc_weight"),
        attention=settings.get("attention") or "fused",
        device=device, devices=tuple(devices), njob=int(njob), vad_model=vad_dir, precision=precision,
        extra={k: v for k, v in settings.items() if k not in _OWN_KEYS},
    )
    data_path = paths.resolve(data_dir)
    ds = datadir.load_dataset(data_path, vocab=mf.tokens, on_bad_input=on_bad_input, vad_model=vad_model,
                              sample_rate=mf.sample_rate)
    decode.import_funasr()  # its import-time notice kept out of the report (bad input fails above without it)
    runs.prepare_output_dir(out, "infer", protect=[mf.path])
    with runs.hold_folder(out):  # no other run writes here meanwhile
        # a folder holding a finished run keeps its files (metrics, results, config, data report) until this run has
        # its own: a run that fails leaves them as they were, with its data report beside them as *.failed.jsonl
        finished = (out / "metrics.json").is_file()
        failed_report = out / ("data_report.failed.jsonl" if finished else "data_report.jsonl")
        (out / "data_report.failed.jsonl").unlink(missing_ok=True)  # an earlier attempt's, perhaps of other data
        if not ds.utterances:
            ds.report.write_jsonl(failed_report)
            raise datadir.DataError(f"{data_path}: nothing to decode: {ds.report.n_input} input line(s), each with an error "
                                    f"(see {failed_report})" if ds.report.n_input else
                                    f"{data_path}: nothing to decode: the audio list is empty")
        notes = list(mf.warnings) + [f"vad_model: {w}" for w in (vad.warnings if vad else ())] \
            + decode.option_notes(mf.config, opts)
        if precision != "fp32" and not decode.resolve_device(devices[0] if devices else device).startswith("cuda"):
            notes.append(f"precision {precision} is ignored: autocast is used on a GPU only; this run decodes in fp32")
        config = {
            "model": model, "model_dir": str(mf.path), "model_source": mf.source,
            "data_dir": str(data_path), "output_dir": str(out),
            "decoding": settings, "device": decode.resolve_device(device), "devices": devices, "njob": njob,
            "on_bad_input": on_bad_input, "vad_model": vad_model, "vad_model_dir": vad_dir, "cache_dir": cache_dir,
                "model_revision": model_revision,
            "precision": precision, "attention": opts.attention, "normaliser": scoring.NORMALISER, "notes": notes,
        }
        if not finished:  # a fresh folder: this run's settings and data report can be read while it decodes
            ds.report.write_jsonl(out / "data_report.jsonl")
            runs.write_config(out, config)

        items = [(u.key, u.audio, u.duration_s) for u in ds.utterances]
        weights_sha256 = runs.sha256_in_background(mf.weights)  # read beside the decoding, not after it
        partial = out / ".hyps.partial.jsonl"
        try:
            dec = decode.decode(str(mf.path), items, opts, partial,
                                _fingerprint(mf, {**settings, "vad_model": vad_model, "devices": devices,
                                                  "precision": precision, "attention": opts.attention,
                                                  # what the features are made from: results decoded before the
                                                  # seeded dither, or with another frontend, are not resumed
                                                  "frontend_conf": mf.config.get("frontend_conf"),
                                                  # the VAD's weights: a rebuilt VAD folder segments anew
                                                  "vad_weights": runs.file_sha256(vad.weights)
                                                  if vad and vad.weights and vad.weights.is_file() else None,
                                                  "dither": "seeded"}, items),
                                model=loaded_model, progress=progress)
        except BaseException:  # a model that fails to load, a shard, an interrupt: this attempt's report, beside
            ds.report.write_jsonl(failed_report)
            raise
        notes.extend(dec.notes)  # weights the checkpoint lacked: known only once the model is loaded
        hyps = _audio_issues(ds, dec.hypotheses)
        if not hyps or (on_bad_input == "fail" and len(hyps) < len(dec.hypotheses)):
            ds.report.write_jsonl(failed_report)
            bad = [str(i) for i in ds.report.errors if i.code == "undecodable_audio"]
            raise datadir.DataError(f"{data_path}: {len(bad)} audio file(s) could not be decoded"
                                    f"{'' if hyps else ', and nothing else was left to decode'} (see {failed_report})"
                                    + (f"; the {len(hyps)} decoded are kept in {partial}: a rerun with on_bad_input: skip "
                                       "takes them up" if hyps else "") + ":\n" + "\n".join(bad))
        for name in (*_DERIVED, "data_report.failed.jsonl"):  # only now: a failed run must not cost the earlier its results
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
        ds.report.write_jsonl(out / "data_report.jsonl")
        runs.write_config(out, config)
        rows, cer = score_run(ds, hyps, out)
        if ds.has_text and cer is None:
            notes.append("the data has a transcript file, but none of its ids has a usable transcript for a decoded "
                         "utterance: nothing was scored (see data_report.jsonl: ids in text without audio, empty "
                         "transcripts)")
        input_files = [data_path] if data_path.is_file() else [data_path / "wav.scp", data_path / "text"]
        decoded = {h.key for h in hyps}
        wav_list = str(data_path if data_path.is_file() else data_path / "wav.scp")
        # input lines not decoded: n_input - n_decoded (lines without an id count, unnamed); their ids where they have
        # one (an error only in text, a duplicate transcript, is not a skipped input)
        skipped = sorted({i.key for i in ds.report.errors if i.key and i.key not in decoded
                          and i.where.rsplit(":", 1)[0] == wav_list})
        # references that are empty once normalised (silence, noise, tags only): not in the CER (no token to divide by),
        # but what the model said on them is counted (Kaldi's compute-wer counts it as insertions)
        empty_refs = {i.key for i in ds.report.issues if i.code == "empty_transcript"}
        on_empty = [r for r in rows if r["key"] in empty_refs]
        said = sum(len(r["hyp_norm"].split()) for r in on_empty)
        if said:
            notes.append(f"{len(on_empty)} utterance(s) have an empty reference (silence, "
                         f"noise, tags only) and are not in the CER; the model said {said} token(s) on them (Kaldi's "
                         "compute-wer would count these as insertions): see empty_reference in metrics.json")
        metrics: dict[str, Any] = {
            "cer": round(cer.cer, 6) if cer else None,
            "empty_reference": {"utterances": len(on_empty), "hyp_tokens": said},
            "sub": cer.substitutions if cer else None, "del": cer.deletions if cer else None,
            "ins": cer.insertions if cer else None, "ref_tokens": cer.ref_tokens if cer else None,
            "normaliser": scoring.NORMALISER, "has_text": ds.has_text,
            "n_input": ds.report.n_input, "n_decoded": len(hyps), "n_scored": cer.n_utts if cer else 0,
            "n_skipped": ds.report.n_input - len(hyps), "skipped_keys": skipped,
            "audio_seconds": round(sum(h.duration_s for h in hyps), 3),
            "wall_seconds": round(dec.wall_s, 3), "rtf": round(dec.rtf, 5), "model_load_seconds": round(dec.load_s, 3),
            "resumed": dec.resumed,
            "model": model, "model_dir": str(mf.path), "device": dec.device, "n_processes": dec.n_processes,
            "precision": precision,
            "data_dir": str(data_path), "parameters": {**settings, "on_bad_input": on_bad_input, "vad_model": vad_model},
            "data_issues": ds.report.counts(), "notes": notes,
            "provenance": runs.provenance(weights_sha256, input_files),
        }
        runs.write_config(out, config)  # with every note (scoring adds some), as the report shows it
        runs.write_metrics(out, metrics)
        partial.unlink(missing_ok=True)
        return InferResult(out, metrics, rows, ds.report, config, notes)

