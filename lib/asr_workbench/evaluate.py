"""The post-fine-tune evaluation notebook's one call: base versus fine-tuned, per test set, with confidence.

:func:`run` assembles a runnable model from a fine-tune output (``decoding_model_name``
+ ``required_files`` from the base model, as FunASR 0.x's ``infer_after_finetune.py``),
decodes every test set with the fine-tuned and the base model through the inference
pipeline (:func:`asr_workbench.infer.run`: the same files per model and set), and
compares them: CER change with a paired-bootstrap interval, improved / regressed /
unchanged utterances, and a warning for every set that got significantly worse
(the forgetting case). ``comparison.json`` and ``comparison.md`` go to ``output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from asr_workbench import datadir, decode, infer, modelhub, paths, runs, scoring
from asr_workbench.finetune import export
from asr_workbench.fileio import atomic_write_json, atomic_write_text

__all__ = ["SetComparison", "EvalResult", "compare_results", "run", "restore"]

REQUIRED_FILES = ["am.mvn", "tokens.json", "configuration.json", "decoding.yaml"]
MIN_PAIRS_FOR_WARNING = 10  # fewer paired utterances give an interval too wide (or too degenerate) to call forgetting


@dataclass
class SetComparison:
    """One test set: fine-tuned against base."""

    name: str
    data_dir: str
    finetuned: dict[str, Any]
    base: dict[str, Any] | None = None
    delta: scoring.Bootstrap | None = None
    improved: int = 0
    regressed: int = 0
    unchanged: int = 0
    most_improved: list[dict[str, Any]] = field(default_factory=list)
    most_regressed: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # per utterance: key, base/ft errors, ref tokens

    @property
    def worse(self) -> bool:
        """The fine-tuned model is worse beyond the interval (the whole interval above zero)."""
        return self.delta is not None and self.delta.low > 0


@dataclass
class EvalResult:
    """What an evaluation run produced."""

    output_dir: Path
    model_dir: Path
    base_dir: Path | None
    sets: list[SetComparison]
    checkpoints: list[dict[str, Any]]
    warnings: list[str]
    comparison: dict[str, Any]


_FOLDERS = ("models", "checkpoints")  # what an evaluation decodes into, beside its sets' folders
# a finished evaluation's folders set aside while a rerun decodes; the same once the rerun writes its own results;
# a failed rerun's partial work, for the next rerun to resume
PREVIOUS, DISCARD, UNFINISHED = ".previous", ".previous.discard", ".unfinished"


def _decoded(out: Path) -> list[str]:
    """The folders an evaluation decoded into in ``out``: models/, checkpoints/ and its sets' folders (its files,
    comparison.* and metrics.json, are written last, each whole)."""
    sets = [d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")
            and ((d / "finetuned").is_dir() or (d / "base").is_dir())]
    return [n for n in _FOLDERS if (out / n).exists()] + [n for n in sets if n not in _FOLDERS]


def _move(names: list[str], src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    for n in names:
        target = dst / n
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        (src / n).rename(target)


def _set_aside(out: Path) -> None:
    """Before a rerun into the folder of a finished evaluation (its metrics.json): its folders move to
    ``.previous/``, to come back if this run fails (its comparison.* and metrics.json stay until this run writes its
    own: they must not end up describing sets of another run), and a failed rerun's partial work
    (``.unfinished/``) comes back in place, so its decoding resumes."""
    if (out / "metrics.json").is_file():
        _move(_decoded(out), out, out / PREVIOUS)
        unfinished = out / UNFINISHED
        if unfinished.is_dir():
            _move([p.name for p in unfinished.iterdir()], unfinished, out)
            shutil.rmtree(unfinished)


def restore(out: Path) -> None:
    """After a rerun that failed (also one whose kernel died, which cleans up nothing): its partial work goes to
    ``.unfinished/`` and the finished evaluation's folders it set aside come back beside their comparison."""
    previous = out / PREVIOUS
    if not previous.is_dir():
        return  # the first run into out: its partial work stays in place, to resume
    _move(_decoded(out), out, out / UNFINISHED)
    _move([p.name for p in previous.iterdir()], previous, out)
    shutil.rmtree(previous)


@contextlib.contextmanager
def _rerun_guard(out: Path) -> Iterator[Callable[[], None]]:
    """Sets a finished evaluation's folders in ``out`` aside while this one runs, and puts them back if it fails.
    Yields ``finishing``, to call just before this run writes its own comparison and metrics."""
    shutil.rmtree(out / DISCARD, ignore_errors=True)  # a rerun that finished, stopped before it tidied up
    restore(out)  # a rerun that died before it could put things back
    _set_aside(out)

    def finishing() -> None:
        if (out / PREVIOUS).is_dir():
            (out / PREVIOUS).rename(out / DISCARD)

    try:
        yield finishing
    except BaseException:
        restore(out)
        raise
    for name in (DISCARD, UNFINISHED):
        shutil.rmtree(out / name, ignore_errors=True)


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("cer", "sub", "del", "ins", "ref_tokens", "n_input", "n_decoded", "n_scored",
                                  "n_skipped", "rtf", "wall_seconds", "audio_seconds", "output_dir")}


def compare_results(name: str, data_dir: str, ft: infer.InferResult, base: infer.InferResult | None,
                    n_bootstrap: int = 1000, seed: int = 0, top: int = 5) -> SetComparison:
    """Pair two runs' per-utterance results (scored in both) and compare them."""
    cmp = SetComparison(name, data_dir, {**_summary(ft.metrics), "output_dir": str(ft.output_dir)})
    if base is None:
        return cmp
    cmp.base = {**_summary(base.metrics), "output_dir": str(base.output_dir)}
    b = {r["key"]: r for r in base.results if r.get("scored")}
    pairs = []
    for r in ft.results:
        if r.get("scored") and r["key"] in b:
            o = b[r["key"]]
            pairs.append({"key": r["key"], "audio": r["audio"], "ref_norm": r["ref_norm"], "ref_tokens": r["ref_tokens"],
                          "base_errors": o["errors"], "ft_errors": r["errors"], "base_hyp_norm": o["hyp_norm"],
                          "ft_hyp_norm": r["hyp_norm"], "base_cer": o["cer"], "ft_cer": r["cer"]})
    cmp.pairs = pairs
    if not pairs:
        return cmp
    cmp.delta = scoring.paired_bootstrap([p["base_errors"] for p in pairs], [p["ft_errors"] for p in pairs],
                                         [p["ref_tokens"] for p in pairs], n_bootstrap, 0.95, seed)
    cmp.improved = sum(p["ft_errors"] < p["base_errors"] for p in pairs)
    cmp.regressed = sum(p["ft_errors"] > p["base_errors"] for p in pairs)
    cmp.unchanged = len(pairs) - cmp.improved - cmp.regressed
    gain = sorted(pairs, key=lambda p: p["ft_errors"] - p["base_errors"])
    cmp.most_improved = [p for p in gain[:top] if p["ft_errors"] < p["base_errors"]]
    cmp.most_regressed = [p for p in reversed(gain[-top:]) if p["ft_errors"] > p["base_errors"]]
    return cmp


def _recorded_base(finetune_dir: Path) -> dict[str, Any]:
    """What a workbench fine-tune recorded of its base: ``model`` (as given), ``model_dir``, ``cache_dir``."""
    rec = runs.read_config(finetune_dir / "config.yaml").get("workbench")
    return rec if isinstance(rec, dict) else {}


def _base_model_name(finetune_dir: Path, given: str | None) -> str | None:
    return given or _recorded_base(finetune_dir).get("model")


def _open_base(finetune_dir: Path, given: str | None, cache_dir: str | None, needed: bool,
               revision: str | None = None) -> tuple[modelhub.ModelFolder | None, list[str]]:
    """The base model (``given``, else the one the fine-tune recorded, in the cache it was found in) and a warning
    when the recorded one is gone but not ``needed`` (no comparison with it): the fine-tune's own model/ holds
    everything its evaluation reads."""
    name = _base_model_name(finetune_dir, given)
    if not name:
        return None, []
    recorded = _recorded_base(finetune_dir)
    where = recorded.get("model_dir")
    if not given and isinstance(where, str) and Path(where).is_dir():  # where it was: under any cache or none
        name = where
    try:
        return modelhub.open_model(name, cache_dir=cache_dir or (None if given else recorded.get("cache_dir")),
                                   revision=revision or (None if given else recorded.get("model_revision")),
                                   allow_download=bool(given) or needed), []  # not 0.9 GB that nothing reads
    except modelhub.ModelError as e:
        if given or needed:
            raise
        return None, [f"the base model this fine-tune started from is not found ({e}): evaluated without it"]


def _tokens_of_finetune(finetune_dir: Path) -> list[str] | None:
    """The vocabulary the fine-tune trained with: its exported model's, else the one its training config names."""
    own = finetune_dir / "model"
    if own.is_dir():
        return modelhub.check_folder(own).tokens
    for cfg in (finetune_dir / "train" / "config.yaml", finetune_dir / "config.yaml"):
        tokenizer_conf = runs.read_config(cfg).get("tokenizer_conf")
        token_list = tokenizer_conf.get("token_list") if isinstance(tokenizer_conf, dict) else None
        if isinstance(token_list, str) and Path(token_list).is_file():
            return modelhub.read_tokens(Path(token_list))
    return None


def _provenance_warnings(ft_dir: Path, decoding_model_name: str, base_name: str | None, given: str | None,
                         base: modelhub.ModelFolder | None, compared: bool = True) -> list[str]:
    """What does not fit together: a base model with another vocabulary than the fine-tune (fails: every
    transcript would be garbage), another base than the one recorded, the recorded base's weights replaced since
    (when it is ``compared``), a config.yaml rewritten after the model."""
    out = []
    recorded = _base_model_name(ft_dir, None)
    same = True  # the base evaluated is the one recorded
    if given and recorded and given != recorded and base is not None:
        try:  # the same model may be named by its id or by its folder in the cache
            where = _recorded_base(ft_dir).get("model_dir")
            found = Path(where) if where and Path(where).is_dir() else modelhub.resolve_model_dir(
                recorded, allow_download=False)[0]
            same = found.resolve() == base.path.resolve()
        except Exception:  # the recorded base is gone (a deleted copy, another machine's cache)
            same = False
        if not same:
            out.append(f"modelscope_model_name {given} is not the base this fine-tune started from ({recorded}, "
                       f"{ft_dir / 'config.yaml'})")
    trained = _tokens_of_finetune(ft_dir)
    if base is not None and trained is not None and base.tokens is not None and base.tokens != trained:
        raise ValueError(f"the base model {base.path} has another vocabulary ({len(base.tokens)} tokens) than the "
                         f"fine-tune in {ft_dir} ({len(trained)}): its config and tokens would turn every transcript "
                         "into garbage; give the base the fine-tune started from as modelscope_model_name")
    started = _recorded_base(ft_dir).get("model_sha256")
    if compared and same and base is not None and started and base.weights is not None and base.weights.is_file() \
            and runs.file_sha256(base.weights) != started:
        out.append(f"the base model's weights {base.weights} are not the ones this fine-tune started from (sha256 "
                   f"{started[:12]}... in {ft_dir / 'config.yaml'}): it was replaced since (a rerun of the fine-tune "
                   "it came from? an updated download?), and the base CERs are another model's")
    metrics, config = ft_dir / "metrics.json", ft_dir / "config.yaml"
    if decoding_model_name == "model" and metrics.is_file() and config.is_file() \
            and config.stat().st_mtime > metrics.stat().st_mtime + 1:
        out.append(f"{config} was rewritten after this fine-tune finished (a later plan?): model/ is the earlier run's")
    return out


def _training_settings(finetune_dir: Path) -> dict[str, Any]:
    """The settings the fine-tune trained with (its config.yaml, as funasr read it), for the run index: a sweep of
    fine-tunes is compared on test sets by its evaluations (``finetune.lr`` on the leaderboard)."""
    cfg = runs.read_config(finetune_dir / "config.yaml")
    section = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731
    train, optim, data = section("train_conf"), section("optim_conf"), section("dataset_conf")
    own = section("workbench")  # the notebook's own values where funasr's keys differ in meaning or unit
    found = {"lr": optim.get("lr"), "optim": cfg.get("optim"), "scheduler": cfg.get("scheduler"),
             "max_epoch": train.get("max_epoch"), "accum_grad": train.get("accum_grad"),
             # batch_bins in the notebook's units (milliseconds for dataset_type large, where funasr's batch_size
             # is a tenth of it); keep_nbest_models is how many checkpoints were averaged (funasr keeps more)
             "batch_bins": own.get("batch_bins") or data.get("batch_size"), "batch_type": data.get("batch_type"),
             "dataset_type": own.get("dataset_type"),
             "keep_nbest_models": train.get("avg_nbest_model") or train.get("keep_nbest_models"),
             "specaug": cfg.get("specaug"),
             "freeze_param": cfg.get("freeze_param"), "seed": cfg.get("seed")}
    return {k: v for k, v in found.items() if v is not None}


def _own_checkpoint(finetune_dir: Path, train_dir: Path, name: str) -> str:
    """``auto`` as the fine-tune notebook means it: the checkpoint its export took (``metrics.json``), else its
    n-best average when there is one, else ``model.pt.best``; other names as given."""
    if name != "auto":
        return name
    try:
        recorded = json.loads((finetune_dir / "metrics.json").read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and (train_dir / recorded).is_file():
        return recorded
    avg_n = (runs.read_config(finetune_dir / "config.yaml").get("train_conf") or {}).get("avg_nbest_model")
    return export.checkpoint_path(train_dir, "auto", avg_n if isinstance(avg_n, int) else None).name


def _dev_set(finetune_dir: Path) -> str | None:
    """The fine-tune's own dev list (the jsonl funasr validated on), for checkpoint comparisons."""
    dev = runs.read_config(finetune_dir / "config.yaml").get("valid_data_set_list")
    if not isinstance(dev, str):
        return None
    moved = finetune_dir / "lists" / Path(dev).name  # the folder was moved or copied: its own lists/
    return dev if Path(dev).is_file() else str(moved) if moved.is_file() else None


def _markdown(result_sets: list[SetComparison], checkpoints: list[dict[str, Any]]) -> str:
    lines = [f"# Base vs fine-tuned\n\nnormaliser: {scoring.NORMALISER}\n",
             "| test set | base CER | fine-tuned CER | change (points) | 95% interval | improved / regressed / unchanged | RTF base / ft |",
             "|---|---|---|---|---|---|---|"]
    for s in result_sets:
        b = s.base or {}
        pct = lambda v: f"{v * 100:.2f} %" if v is not None else "-"  # noqa: E731
        d = s.delta
        lines.append(f"| {s.name} | {pct(b.get('cer'))} | {pct(s.finetuned.get('cer'))} | "
                     f"{f'{d.delta * 100:+.2f}' if d else '-'}{' (worse)' if s.worse else ''} | "
                     f"{f'[{d.low * 100:+.2f}, {d.high * 100:+.2f}]' if d else '-'} | "
                     f"{s.improved} / {s.regressed} / {s.unchanged} | {b.get('rtf', '-')} / {s.finetuned.get('rtf')} |")
    if checkpoints:
        lines += ["", "| checkpoint | dev CER |", "|---|---|"]
        lines += [f"| {c['name']} | {c['cer'] * 100:.2f} % |" if c["cer"] is not None else f"| {c['name']} | - |"
                  for c in checkpoints]
    return "\n".join(lines) + "\n"


def run(
    output_dir: str,
    finetune_dir: str,
    data_dir: str | None = None,
    test_sets: dict[str, str] | None = None,
    decoding_model_name: str = "model",
    modelscope_model_name: str | None = None,
    required_files: list[str] | None = None,
    batch_size: int | None = None,
    ctc_weight: float | None = None,
    beam_size: int | None = None,
    decoding_overrides: dict[str, Any] | None = None,
    on_bad_input: str = "skip",
    cache_dir: str | None = None,
    model_revision: str | None = None,
    device: str = "auto",
    compare_with_base: bool = True,
    compare_checkpoints: list[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a fine-tune on every test set, against its base model.

    Args:
        output_dir: run folder; per model and set ``<set>/<finetuned|base>/`` with the inference files.
        finetune_dir: a fine-tune's ``output_dir`` (the workbench's, or funasr's own checkpoint folder).
        data_dir / test_sets: one data folder, or a mapping name -> folder (both given: all are decoded).
        decoding_model_name: ``model`` (the self-contained ``finetune_dir/model/``) or a funasr checkpoint.
        modelscope_model_name: the base model (default: the one the workbench fine-tune started from).
        model_revision: its ModelScope revision (default: the one the fine-tune recorded, else master or the cached).
        required_files: files copied from the base when the assembled folder lacks them.
        compare_checkpoints: checkpoints of the same fine-tune to evaluate on its dev set.
        n_bootstrap / seed: paired-bootstrap resamples for the CER-change interval.
    """
    decode.check_device(device)
    # one name where a list is expected is a list of one (list("am.mvn") would be its characters)
    required_files = [required_files] if isinstance(required_files, str) else required_files
    compare_checkpoints = [compare_checkpoints] if isinstance(compare_checkpoints, str) else compare_checkpoints
    ft_dir = paths.resolve(finetune_dir)
    if not ft_dir.is_dir():
        raise FileNotFoundError(f"finetune_dir {ft_dir} does not exist")
    runs.check_output_dir(output_dir, "evaluate", protect=[ft_dir / "model", ft_dir / "train"])
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise ValueError(f"n_bootstrap must be an integer >= 100 (resamples behind each 95% interval), got {n_bootstrap!r}")
    for name in [decoding_model_name, *(compare_checkpoints or [])]:
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"checkpoint name {name!r}: give a name in the fine-tune (model, model.pt.best, "
                             "model.pt.avg3, model.pt.ep2), not a path")
    if isinstance(test_sets, (str, list, tuple)):  # folders: each set is named by its folder
        folders = [test_sets] if isinstance(test_sets, str) else list(test_sets)
        test_sets = {Path(str(f)).name: str(f) for f in folders}
        if len(test_sets) != len(folders):
            raise ValueError(f"test_sets {folders}: two folders have the same name; give a mapping name -> folder")
    if data_dir and "data" in (test_sets or {}):
        raise ValueError("test_sets has a set named 'data', the name data_dir's set gets; rename it")
    sets = {**({"data": data_dir} if data_dir else {}), **(test_sets or {})}
    if not sets:
        raise ValueError("give data_dir or test_sets (name -> data folder)")
    bad = [n for n in sets if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", str(n))]
    if bad:
        raise ValueError(f"test set name(s) {bad}: use letters, digits and _.=+- (they name folders)")
    for name, folder in sets.items():  # all found before hours of decoding, not after
        try:
            datadir.check_source(paths.resolve(folder))
        except datadir.DataError as e:
            raise datadir.DataError(f"{'data_dir' if name == 'data' and data_dir else f'test_sets[{name}]'}: {e}") from e
    required = list(REQUIRED_FILES if required_files is None else required_files)
    base_name = _base_model_name(ft_dir, modelscope_model_name)
    base, base_notes = _open_base(ft_dir, modelscope_model_name, cache_dir, needed=compare_with_base,
                                  revision=model_revision)
    if compare_with_base and base is None:
        raise ValueError("compare_with_base needs modelscope_model_name (the base model): it is not recorded in "
                         f"{ft_dir / 'config.yaml'}")
    train_dir = ft_dir / "train" if (ft_dir / "train").is_dir() else ft_dir
    decoding_model_name = _own_checkpoint(ft_dir, train_dir, decoding_model_name)
    compare_checkpoints = [_own_checkpoint(ft_dir, train_dir, c) for c in compare_checkpoints or []]
    for ckpt in [decoding_model_name, *compare_checkpoints]:  # all found before hours of decoding, not after
        export.find_checkpoint(ft_dir, ckpt)
    warnings = base_notes + _provenance_warnings(ft_dir, decoding_model_name, base_name, modelscope_model_name, base,
                                                 compared=compare_with_base)
    # the run folder only now that everything is found: a typo leaves no empty folder; never inside the base
    out = runs.prepare_output_dir(output_dir, "evaluate",
                                  protect=[ft_dir / "model", ft_dir / "train", *([base.path] if base else [])])
    # the fine-tune is read while this runs (checkpoints, its dev list, its settings): no fresh fine-tune replaces it
    with runs.hold_folder(out), runs.read_folder(ft_dir), _rerun_guard(out) as finishing:
        holder = runs.folder_in_use(ft_dir)
        if holder:
            warnings.append(f"the fine-tune in {ft_dir} is still running ({holder}): its checkpoints and model/ may be "
                            "replaced after this evaluation read them")
        if data_dir and test_sets:
            warnings.append(f"data_dir and test_sets are both given: {len(sets)} sets are decoded ({', '.join(sets)}); "
                            "test_sets: {} decodes data_dir alone")
        model_dir = export.assemble_model(ft_dir, decoding_model_name, base, required, out / "models" / decoding_model_name)
        common = dict(batch_size=batch_size, ctc_weight=ctc_weight, beam_size=beam_size, device=device,
                      decoding_overrides=decoding_overrides, on_bad_input=on_bad_input, cache_dir=cache_dir,
                      progress=progress)
        dev_name = decode.resolve_device(device)
        ft_model = decode.load_model(str(model_dir), device=dev_name)
        unfit = decode.weight_notes(ft_model)
        if unfit:  # funasr left those weights random: every figure below would describe noise
            raise ValueError(f"the fine-tuned model {model_dir} does not load whole: {'; '.join(unfit)}")
        base_model = decode.load_model(str(base.path), device=dev_name) if compare_with_base and base else None
        if base_model is not None:
            warnings += [f"base model: {n}" for n in decode.weight_notes(base_model)]
        results: list[SetComparison] = []
        for name, folder in sets.items():
            ft_res = infer.run(str(model_dir), folder, str(out / name / "finetuned"), loaded_model=ft_model, **common)
            base_res = (infer.run(str(base.path), folder, str(out / name / "base"), loaded_model=base_model, **common)
                        if base_model is not None and base is not None else None)
            results.append(compare_results(name, str(paths.resolve(folder)), ft_res, base_res, n_bootstrap, seed))
        checkpoints = []
        dev = _dev_set(ft_dir)
        if compare_checkpoints and dev is None:
            dev = next(iter(sets.values()))
            warnings.append(f"the fine-tune's dev list is gone (valid_data_set_list of {ft_dir / 'config.yaml'}): "
                            f"checkpoints are compared on the test set {next(iter(sets))} instead, and a checkpoint "
                            "chosen on test data flatters it")
        for ckpt in compare_checkpoints or []:
            folder = export.assemble_model(ft_dir, ckpt, base, required, out / "models" / ckpt)
            res = infer.run(str(folder), dev, str(out / "checkpoints" / ckpt), **common)
            checkpoints.append({"name": ckpt, "cer": res.metrics["cer"], "data": dev, "output_dir": str(res.output_dir)})
        warnings += [f"{s.name}: the fine-tuned model is worse than the base beyond the 95% interval "
                    f"(CER {s.base['cer'] * 100:.2f} % -> {s.finetuned['cer'] * 100:.2f} %, change "
                    f"[{s.delta.low * 100:+.2f}, {s.delta.high * 100:+.2f}] points): it forgot this domain"
                    for s in results if s.worse and s.base and s.delta and len(s.pairs) >= MIN_PAIRS_FOR_WARNING]
        warnings += [f"{s.name}: only {len(s.pairs)} utterances scored by both models: too few to tell whether "
                     "fine-tuning made it worse" for s in results if s.base and 0 < len(s.pairs) < MIN_PAIRS_FOR_WARNING]
        warnings += [f"{s.name}: {s.finetuned['n_skipped']} of {s.finetuned['n_input']} input lines were not decoded "
                     f"(bad or missing audio, malformed lines: see {s.finetuned['output_dir']}/data_report.jsonl)"
                     for s in results if s.finetuned.get("n_skipped")]
        warnings += [f"{s.name}: nothing was scored (no transcripts in its text file, or none for these utterances): "
                     "decoded, not compared" for s in results if not s.pairs and s.finetuned.get("cer") is None]
        comparison = {
            "normaliser": scoring.NORMALISER, "finetune_dir": str(ft_dir), "decoding_model_name": decoding_model_name,
            "model_dir": str(model_dir), "base_model": base_name, "base_dir": str(base.path) if base else None,
            "n_bootstrap": n_bootstrap, "seed": seed, "warnings": warnings,
            "sets": [{"name": s.name, "data_dir": s.data_dir, "finetuned": s.finetuned, "base": s.base,
                      "delta_cer": asdict(s.delta) if s.delta else None, "worse": s.worse, "improved": s.improved,
                      "regressed": s.regressed, "unchanged": s.unchanged,
                      "most_improved": [p["key"] for p in s.most_improved],
                      "most_regressed": [p["key"] for p in s.most_regressed]} for s in results],
            "checkpoints": checkpoints,
        }
        finishing()  # from here on this run's results replace the earlier one's
        atomic_write_json(out / "comparison.json", comparison)
        atomic_write_text(out / "comparison.md", _markdown(results, checkpoints))
        runs.write_config(out, {"finetune_dir": str(ft_dir), "decoding_model_name": decoding_model_name,
                                "modelscope_model_name": base_name, "model_revision": model_revision,
                                "required_files": required, "test_sets": sets,
                                "compare_with_base": compare_with_base, "compare_checkpoints": compare_checkpoints or [],
                                "n_bootstrap": n_bootstrap, "seed": seed, **{k: v for k, v in common.items() if k != "progress"}})
        runs.write_metrics(out, {"cer": results[0].finetuned["cer"], "normaliser": scoring.NORMALISER,
                                 "finetune_settings": _training_settings(ft_dir),
                                 "per_set_cer": {s.name: s.finetuned["cer"] for s in results},
                                 "per_set_data_dir": {s.name: s.data_dir for s in results},
                                 "per_set_base_cer": {s.name: (s.base or {}).get("cer") for s in results},
                                 "warnings": warnings, "model_dir": str(model_dir),
                                 "provenance": runs.provenance(model_dir / "model.pt")})
    return EvalResult(out, model_dir, base.path if base else None, results, checkpoints, warnings, comparison)
