"""The post-fine-tune evaluation notebook: base vs fine-tuned, per set, with a paired-bootstrap interval."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from asr_workbench import datadir, evaluate, infer, modelhub, runs, scoring
from asr_workbench.finetune import export
from asr_workbench.modelhub import check_folder
from conftest import DEMO_DATA, DEMO_MODEL, REPO, subset


@pytest.fixture(scope="session")
def evaluation(tmp_path_factory, notebook_finetune):
    """papermill runs notebooks/infer_after_finetune.ipynb on the shared short fine-tune."""
    ft_out, _ = notebook_finetune
    work = tmp_path_factory.mktemp("evaluate")
    sets = {"target": str(subset(DEMO_DATA / "target/test", work / "target", 16)),
            "base": str(subset(DEMO_DATA / "base/test", work / "base", 16))}
    out = work / "run"
    params = work / "infer_after_finetune.yaml"
    params.write_text(json.dumps({"finetune_dir": str(ft_out), "test_sets": sets, "modelscope_model_name": str(DEMO_MODEL),
                                  "compare_checkpoints": ["model.pt.best", "model.pt.ep1"], "n_bootstrap": 300,
                                  "output_dir": str(out), "device": "cpu"}))
    proc = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks/infer_after_finetune.ipynb"),
                           str(work / "out.ipynb"), "-f", str(params), "--no-progress-bar"],
                          capture_output=True, text=True, timeout=900, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, work


def _rows(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r["scored"]}


def test_every_model_and_set_gets_the_inference_files(evaluation):
    out, _ = evaluation
    for name in ("target", "base"):
        for model in ("finetuned", "base"):
            for f in ("results.jsonl", "metrics.json", "1best_recog/text.cer", "errors.txt", "data_report.jsonl"):
                assert (out / name / model / f).is_file(), (name, model, f)
            rows = _rows(out / name / model / "results.jsonl")
            text_cer = (out / name / model / "1best_recog/text.cer").read_text(encoding="utf-8")
            wrong = sum(r["errors"] for r in rows.values())
            assert f"[ {wrong} / {sum(r['ref_tokens'] for r in rows.values())}," in text_cer.splitlines()[-3]
            errors = (out / name / model / "errors.txt").read_text(encoding="utf-8")
            assert errors.count("errors=") == sum(bool(r["errors"]) for r in rows.values())
    md = (out / "comparison.md").read_text()
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert md.startswith("# Base vs fine-tuned") and [s["name"] for s in comparison["sets"]] == ["target", "base"]
    for s in comparison["sets"]:  # each set's row shows both CERs
        assert any(line.startswith(f"| {s['name']} ") and f"{s['finetuned']['cer'] * 100:.2f}" in line
                   and f"{s['base']['cer'] * 100:.2f}" in line for line in md.splitlines()), md


def test_comparison_matches_a_recomputation_from_the_results(evaluation):
    out, _ = evaluation
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert len(comparison["sets"]) == 2
    for s in comparison["sets"]:
        ft, base = _rows(out / s["name"] / "finetuned/results.jsonl"), _rows(out / s["name"] / "base/results.jsonl")
        keys = [k for k in ft if k in base]
        n = sum(ft[k]["ref_tokens"] for k in keys)
        delta = (sum(ft[k]["errors"] for k in keys) - sum(base[k]["errors"] for k in keys)) / n
        d = s["delta_cer"]
        assert d["delta"] == pytest.approx(delta, abs=1e-9)
        assert d["low"] <= d["delta"] <= d["high"]
        assert s["improved"] == sum(ft[k]["errors"] < base[k]["errors"] for k in keys)
        assert s["regressed"] == sum(ft[k]["errors"] > base[k]["errors"] for k in keys)
        assert s["improved"] + s["regressed"] + s["unchanged"] == len(keys)
        assert s["finetuned"]["cer"] == json.loads((out / s["name"] / "finetuned/metrics.json").read_text())["cer"]
        assert s["worse"] == (d["low"] > 0)


def test_interval_narrows_with_more_utterances(evaluation):
    out, _ = evaluation
    ft, base = _rows(out / "target/finetuned/results.jsonl"), _rows(out / "target/base/results.jsonl")
    keys = [k for k in ft if k in base]
    a, b, n = ([base[k]["errors"] for k in keys], [ft[k]["errors"] for k in keys], [ft[k]["ref_tokens"] for k in keys])
    small = scoring.paired_bootstrap(a, b, n, 500, seed=1)
    big = scoring.paired_bootstrap(a * 4, b * 4, n * 4, 500, seed=1)  # four times the utterances, same distribution
    assert big.delta == pytest.approx(small.delta)
    assert (big.high - big.low) < 0.75 * (small.high - small.low)


def test_checkpoint_comparison_and_notebook_output(evaluation):
    out, work = evaluation
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in comparison["checkpoints"]] == ["model.pt.best", "model.pt.ep1"]
    for c in comparison["checkpoints"]:  # each checkpoint's figure is its own inference run's CER
        assert c["cer"] == json.loads((Path(c["output_dir"]) / "metrics.json").read_text())["cer"]
    nb = json.loads((work / "out.ipynb").read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "95% interval" in html and "dev CER" in html
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2


def test_figures_name_the_normaliser_and_a_set_without_text_has_no_bar():
    """A set with nothing scored is no 0 % bar (and costs the other sets no whiskers); the axes name the
    normaliser; the table says why a set has no counts."""
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    def res(errors: list[int], scored: bool = True) -> infer.InferResult:
        rows = [{"key": f"u{i}", "scored": scored, "errors": e, "ref_tokens": 10, "cer": e / 10, "audio": "",
                 "ref_norm": "", "hyp_norm": ""} for i, e in enumerate(errors)]
        return infer.InferResult(Path("."), {"cer": sum(errors) / (10 * len(errors)) if scored else None}, rows,
                                 None, {})  # type: ignore[arg-type]

    sets = [evaluate.compare_results("target", "x", res([1, 2] * 15), res([3, 2, 4] * 10), n_bootstrap=200),
            evaluate.compare_results("notext", "y", res([0] * 5, False), res([0] * 5, False), n_bootstrap=200)]
    ax = report.cer_bars(sets).axes[0]
    name = scoring.NORMALISER.split(":")[0]
    assert name in ax.get_ylabel() and "nothing scored" in [t.get_text() for t in ax.texts]
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == pytest.approx(30) and heights[1] != heights[1]  # base bars: 30 %, then NaN (no bar)
    from matplotlib.container import ErrorbarContainer

    bars = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))  # the target set keeps its interval
    low, high = bars.lines[2][0].get_segments()[0][:, 1]
    assert high - low > 0
    assert name in report.utterance_scatter(sets).axes[0].get_xlabel()
    table = str(report.comparison_table(sets))
    assert f"fine-tuned CER ({name})" in table and "- (nothing scored)" in table


def test_forgetting_is_flagged():
    def res(errors: list[int]) -> infer.InferResult:
        rows = [{"key": f"u{i}", "scored": True, "errors": e, "ref_tokens": 10, "cer": e / 10, "audio": "",
                 "ref_norm": "", "hyp_norm": ""} for i, e in enumerate(errors)]
        return infer.InferResult(Path("."), {"cer": sum(errors) / (10 * len(errors))}, rows, None, {})  # type: ignore[arg-type]

    worse = evaluate.compare_results("general", "x", res([3] * 30), res([0] * 30), n_bootstrap=200)
    assert worse.worse and worse.regressed == 30 and worse.delta.low > 0
    same = evaluate.compare_results("general", "x", res([1, 0] * 15), res([0, 1] * 15), n_bootstrap=200)
    assert not same.worse and same.delta.low <= 0 <= same.delta.high


def test_assemble_checkpoint_copies_only_missing_required_files(tmp_path, notebook_finetune):
    ft_out, _ = notebook_finetune
    base = check_folder(DEMO_MODEL)
    folder = export.assemble_model(ft_out, "model.pt.ep1", base, ["am.mvn", "tokens.json", "decoding.yaml"],
                                   tmp_path / "ep1")
    assert (folder / "tokens.json").read_bytes() == (DEMO_MODEL / "tokens.json").read_bytes()
    want = modelhub.load_weights(ft_out / "train" / "model.pt.ep1")  # the epoch-1 weights, not the exported average
    got = modelhub.load_weights(folder / "model.pt")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # "model" lacking a required file: a completed copy, the fine-tune's own folder untouched
    partial = tmp_path / "partial-finetune"
    shutil.copytree(ft_out / "model", partial / "model")
    (partial / "model" / "am.mvn").unlink()
    (partial / "model" / "decoding.yaml").write_text("batch_size: 3\n")
    folder = export.assemble_model(partial, "model", base, ["am.mvn", "decoding.yaml"], tmp_path / "completed")
    assert folder == tmp_path / "completed" and not (partial / "model" / "am.mvn").exists()
    assert (folder / "am.mvn").read_bytes() == (DEMO_MODEL / "am.mvn").read_bytes()
    assert (folder / "decoding.yaml").read_text() == "batch_size: 3\n"  # never over the fine-tune's own
    # a plain funasr output folder (no model/): config and tokens must come from the base model
    bare = tmp_path / "bare"
    shutil.copytree(ft_out / "train", bare)
    (tmp_path / "b").mkdir()
    folder = export.assemble_model(bare, "model.pt.best", base, ["am.mvn", "tokens.json"], tmp_path / "b" / "m")
    assert (folder / "am.mvn").read_bytes() == (DEMO_MODEL / "am.mvn").read_bytes()
    with pytest.raises(FileNotFoundError, match="give modelscope_model_name"):
        export.assemble_model(bare, "model.pt.best", None, ["am.mvn"], tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no checkpoint model.pt.ep99"):
        export.assemble_model(ft_out, "model.pt.ep99", base, [], tmp_path / "d")
    # a model whose vocabulary is tokens.txt: the default required tokens.json is served by it, not demanded
    txt = tmp_path / "txt-finetune"
    shutil.copytree(ft_out / "model", txt / "model")
    (txt / "model" / "tokens.txt").write_text(
        "".join(t + "\n" for t in json.loads((txt / "model" / "tokens.json").read_text(encoding="utf-8"))),
        encoding="utf-8")
    (txt / "model" / "tokens.json").unlink()
    conf = json.loads((txt / "model" / "configuration.json").read_text())
    conf["file_path_metas"]["tokenizer_conf"]["token_list"] = "tokens.txt"
    (txt / "model" / "configuration.json").write_text(json.dumps(conf))
    assert export.assemble_model(txt, "model", None, evaluate.REQUIRED_FILES, tmp_path / "e") == txt / "model"
    # a base that names its files otherwise (configuration.json: weights.pt, model_config.yaml, vocab.json,
    # cmvn.ark) assembles a checkpoint of a plain funasr output: the default required names are served by their
    # roles, and the base's own config does not stay beside the assembled config.yaml
    named = tmp_path / "named-base"
    shutil.copytree(DEMO_MODEL, named)
    for old_name, new_name in (("model.pt", "weights.pt"), ("config.yaml", "model_config.yaml"),
                               ("tokens.json", "vocab.json"), ("am.mvn", "cmvn.ark")):
        (named / old_name).rename(named / new_name)
    conf = json.loads((named / "configuration.json").read_text())
    conf["file_path_metas"] = {"init_param": "weights.pt", "config": "model_config.yaml",
                               "tokenizer_conf": {"token_list": "vocab.json"}, "frontend_conf": {"cmvn_file": "cmvn.ark"}}
    (named / "configuration.json").write_text(json.dumps(conf))
    folder = export.assemble_model(bare, "model.pt.best", check_folder(named), evaluate.REQUIRED_FILES, tmp_path / "f")
    assert check_folder(folder).tokens == check_folder(DEMO_MODEL).tokens and not (folder / "model_config.yaml").exists()


def test_settings_that_would_fail_late_fail_before_decoding(tmp_path, notebook_finetune):
    """A missing compare checkpoint, a path for a checkpoint name, too few bootstrap resamples and a base model
    with another vocabulary fail before any set is decoded (they failed after hours of decoding, or not at all)."""
    ft_out, _ = notebook_finetune
    data = str(subset(DEMO_DATA / "target/test", tmp_path / "data", 2))
    run = lambda out, **kw: evaluate.run(output_dir=str(tmp_path / out), finetune_dir=str(ft_out),  # noqa: E731
                                         device="cpu", progress=False,
                                         **{"modelscope_model_name": str(DEMO_MODEL), "test_sets": {"t": data}, **kw})
    with pytest.raises(FileNotFoundError, match="no checkpoint model.pt.avg9"):
        run("a", compare_checkpoints=["model.pt.best", "model.pt.avg9"])
    assert not (tmp_path / "a" / "t").exists()  # nothing was decoded first
    with pytest.raises(ValueError, match="not a path"):
        run("b", decoding_model_name=str(ft_out / "train" / "model.pt.ep1"))
    with pytest.raises(ValueError, match="n_bootstrap must be an integer >= 100"):
        run("c", n_bootstrap=1)
    # a set whose folder is missing is named by its key before any set is decoded
    with pytest.raises(datadir.DataError, match=rf"test_sets\[gone\]: {tmp_path / 'nosuch'}: no such data folder"):
        run("c2", test_sets={"t": data, "gone": str(tmp_path / "nosuch")})
    assert not (tmp_path / "c2" / "t").exists()
    other = tmp_path / "other-base"
    shutil.copytree(DEMO_MODEL, other)
    tokens = json.loads((other / "tokens.json").read_text(encoding="utf-8"))
    (other / "tokens.json").write_text(json.dumps(tokens[:3] + tokens[4:] + tokens[3:4], ensure_ascii=False),
                                       encoding="utf-8")
    with pytest.raises(ValueError, match="has another vocabulary"):
        run("d", modelscope_model_name=str(other), decoding_model_name="model.pt.ep1")
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()  # refused before the run folder is made
    with pytest.raises(ValueError, match="never writes into a model folder"):  # the fine-tune's own model
        evaluate.run(output_dir=str(ft_out / "model" / "eval"), finetune_dir=str(ft_out), test_sets={"t": data},
                     device="cpu", progress=False)
    assert not (ft_out / "model" / "eval").exists()
    # test sets as a list of folders: each named by its folder
    r = run("e", test_sets=[data], compare_with_base=False, n_bootstrap=100)
    assert [s.name for s in r.sets] == ["data"]
    assert not any("both given" in w for w in r.warnings)
    # the base the fine-tune recorded is gone (deleted by the fixture): not needed without a comparison
    r = evaluate.run(output_dir=str(tmp_path / "f"), finetune_dir=str(ft_out), test_sets={"t": data},
                     compare_with_base=False, n_bootstrap=100, device="cpu", progress=False)
    assert r.sets[0].finetuned["cer"] is not None and any("is not found" in w for w in r.warnings)
    with pytest.raises(modelhub.ModelError, match="no such folder"):  # needed for a comparison: an error
        evaluate.run(output_dir=str(tmp_path / "g"), finetune_dir=str(ft_out), test_sets={"t": data},
                     device="cpu", progress=False)
    # a fine-tune of a ModelScope id found in another cache_dir: the evaluation looks in that cache (it looked in
    # ~/.cache/modelscope and failed), and the same base named by its cache folder is no "other base"
    cache = tmp_path / "cache"
    shutil.copytree(DEMO_MODEL, cache / "models" / "myorg--tiny" / "snapshots" / "master")
    ft = tmp_path / "ft-of-id"
    shutil.copytree(ft_out, ft, ignore=shutil.ignore_patterns("model.pt.*"))
    config = yaml.safe_load((ft / "config.yaml").read_text(encoding="utf-8"))
    config["workbench"].update(model="myorg/tiny", cache_dir=str(cache), model_dir=None)
    (ft / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    r = evaluate.run(output_dir=str(tmp_path / "h"), finetune_dir=str(ft), test_sets={"t": data}, n_bootstrap=100,
                     device="cpu", progress=False)
    assert r.base_dir == cache / "models" / "myorg--tiny" / "snapshots" / "master" and r.sets[0].base["cer"] is not None


def test_checkpoints_that_do_not_fit_the_model_are_refused(tmp_path, notebook_finetune):
    """funasr loads the weights that fit and leaves the rest random: a checkpoint of another architecture, or a
    dictionary funasr does not unwrap, decoded as noise (CER 200 %) without a word."""
    ft_out, _ = notebook_finetune
    ft = tmp_path / "ft"
    shutil.copytree(ft_out / "train", ft / "train")
    state = modelhub.load_weights(ft_out / "train" / "model.pt.best")
    torch.save({"model_state": state, "optimizer": {}}, ft / "train" / "model.pt.ep7")
    torch.save({k: (torch.zeros(3, *v.shape[1:]) if k.startswith("decoder.") and v.dim() else v)
                for k, v in state.items()}, ft / "train" / "model.pt.ep9")
    base = check_folder(DEMO_MODEL)
    with pytest.raises(ValueError, match=r"model.pt.ep7 does not fit the model of .*holds 0 of the model's"):
        export.assemble_model(ft, "model.pt.ep7", base, [], tmp_path / "a")
    with pytest.raises(ValueError, match=r"model.pt.ep9 does not fit .*weights have another shape \(e.g. decoder\."):
        export.assemble_model(ft, "model.pt.ep9", base, [], tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # nothing written, not even a .partial folder


def test_what_the_fine_tune_recorded_finds_its_base_checkpoint_and_dev_list(tmp_path, notebook_finetune, monkeypatch):
    """The recorded base folder is used under any cache; a base replaced since the fine-tune is said; "auto" is the
    checkpoint the fine-tune exported; a moved fine-tune finds its own dev list; one without model/ lists its
    checkpoints; a cut checkpoint is named."""
    ft_out, _ = notebook_finetune
    ft = tmp_path / "moved-ft"
    shutil.copytree(ft_out, ft)
    config = yaml.safe_load((ft / "config.yaml").read_text(encoding="utf-8"))
    assert config["workbench"]["model_sha256"] == runs.file_sha256(DEMO_MODEL / "model.pt")  # its base copy's
    old_dev = config["valid_data_set_list"]
    config["valid_data_set_list"] = str(tmp_path / "gone" / "lists" / Path(old_dev).name)
    config["workbench"].update(model="someorg/somemodel", model_dir=str(DEMO_MODEL), cache_dir=None)
    (ft / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty-cache"))
    base, notes = evaluate._open_base(ft, None, None, needed=True)  # no cache holds someorg/somemodel
    assert base is not None and base.path == DEMO_MODEL and not notes
    assert evaluate._dev_set(ft) == str(ft / "lists" / Path(old_dev).name)
    changed = tmp_path / "changed-base"
    shutil.copytree(DEMO_MODEL, changed)
    state = modelhub.load_weights(changed / "model.pt")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, changed / "model.pt")
    warnings = evaluate._provenance_warnings(ft, "model", "someorg/somemodel", None, check_folder(changed))
    assert any("not the ones this fine-tune started from" in w for w in warnings)
    assert not any("started from" in w for w in
                   evaluate._provenance_warnings(ft, "model", "someorg/somemodel", None, check_folder(DEMO_MODEL)))
    metrics = json.loads((ft / "metrics.json").read_text(encoding="utf-8"))
    assert evaluate._own_checkpoint(ft, ft / "train", "auto") == metrics["checkpoint"] == "model.pt.avg2"
    (ft / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": "model.pt.ep1"}))  # what the export took
    assert evaluate._own_checkpoint(ft, ft / "train", "auto") == "model.pt.ep1"
    shutil.rmtree(ft / "model")
    with pytest.raises(FileNotFoundError, match=r"no model/ folder .*: model.pt.best, model.pt.avg2, .*model.pt.ep1"):
        export.find_checkpoint(ft, "model")
    (ft / "train" / "model.pt.ep3").write_bytes((ft / "train" / "model.pt.ep1").read_bytes()[:50000])
    with pytest.raises(modelhub.ModelError, match=r"model.pt.ep3: not a readable PyTorch checkpoint"):
        export.assemble_model(ft, "model.pt.ep3", check_folder(DEMO_MODEL), [], tmp_path / "cut")


def test_required_files_and_the_evaluation_folder(tmp_path, notebook_finetune):
    """A base without decoding.yaml costs no copy of the fine-tuned model; a required file in a sub-folder is
    copied with it; a name outside the folder is refused; the evaluation never writes into the base model; a
    fine-tune still running is said."""
    ft_out, _ = notebook_finetune
    own = tmp_path / "ft"
    shutil.copytree(ft_out / "model", own / "model")
    (own / "model" / "decoding.yaml").unlink()
    base_dir = tmp_path / "base"
    shutil.copytree(DEMO_MODEL, base_dir)
    (base_dir / "decoding.yaml").unlink()
    (base_dir / "lm").mkdir()
    (base_dir / "lm" / "lm.yaml").write_text("lm: tiny\n")
    base = check_folder(base_dir)
    assert export.assemble_model(own, "model", base, evaluate.REQUIRED_FILES, tmp_path / "a") == own / "model"
    assert not (tmp_path / "a").exists()
    folder = export.assemble_model(own, "model", base, ["lm/lm.yaml"], tmp_path / "b")
    assert folder == tmp_path / "b" and (folder / "lm" / "lm.yaml").read_text() == "lm: tiny\n"
    assert (folder / "model.pt").stat().st_ino == (own / "model" / "model.pt").stat().st_ino  # linked, not copied
    assert not (own / "model" / "lm").exists()
    with pytest.raises(ValueError, match=r"'\.\./x' is not a file name inside a model folder"):
        export.assemble_model(own, "model", base, ["../x"], tmp_path / "c")
    data = str(subset(DEMO_DATA / "target/test", tmp_path / "data", 2))
    with pytest.raises(ValueError, match="never writes into a model folder"):
        evaluate.run(output_dir=str(base_dir / "eval"), finetune_dir=str(ft_out), test_sets={"t": data},
                     modelscope_model_name=str(base_dir), compare_with_base=False, device="cpu", progress=False)
    assert not (base_dir / "eval").exists()
    lock = runs.lock_folder(own)  # as a batch run holds its folder while the fine-tune trains
    try:
        assert runs.folder_in_use(own).startswith("pid ")
        r = evaluate.run(output_dir=str(tmp_path / "e"), finetune_dir=str(own), test_sets={"t": data},
                         compare_with_base=False, n_bootstrap=100, device="cpu", progress=False)
        assert any("is still running (pid" in w for w in r.warnings)
    finally:
        lock.close()
    assert runs.folder_in_use(own) is None
    # while an evaluation reads a fine-tune, a run that would write there (a fresh fine-tune into that folder:
    # it deletes train/ and model/) is refused; readers do not exclude each other
    import threading

    refused: list[str] = []

    def evaluation() -> None:
        evaluate.run(output_dir=str(tmp_path / "e2"), finetune_dir=str(own), test_sets={"t": data},
                     compare_with_base=False, n_bootstrap=100, device="cpu", progress=False)

    worker = threading.Thread(target=evaluation)
    worker.start()
    while worker.is_alive():
        try:
            runs.lock_folder(own).close()
        except ValueError as e:
            refused.append(str(e))
        time.sleep(0.02)
    assert any("or an evaluation is reading it" in r for r in refused)
    with runs.read_folder(own), runs.read_folder(own):
        assert runs.folder_in_use(own) is None


def test_a_rerun_that_fails_leaves_the_finished_evaluation_whole(tmp_path, notebook_finetune):
    """A rerun into a finished evaluation's folder sets it aside and puts it back when it fails: no comparison
    beside sets of another run; the failed rerun's decoding is kept (``.unfinished/``) and resumed; a rerun that
    succeeds leaves no set of the earlier one."""
    ft_out, _ = notebook_finetune
    a = str(subset(DEMO_DATA / "target/test", tmp_path / "a", 2))
    b = str(subset(DEMO_DATA / "base/test", tmp_path / "b", 2))
    bad = subset(DEMO_DATA / "target/test", tmp_path / "bad", 2)
    with open(bad / "wav.scp", "a", encoding="utf-8") as f:
        f.write(f"gone {tmp_path / 'gone.wav'}\n")
    out = tmp_path / "eval"
    kw = dict(output_dir=str(out), finetune_dir=str(ft_out), compare_with_base=False, n_bootstrap=100, device="cpu",
              progress=False, on_bad_input="fail")
    evaluate.run(test_sets={"a": a, "b": b}, **kw)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in
              [out / "metrics.json", out / "comparison.json", out / "a/finetuned/results.jsonl"]}
    with pytest.raises(datadir.DataError, match="gone"):
        evaluate.run(test_sets={"a": a, "c": str(bad)}, **kw)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert (out / "b/finetuned/results.jsonl").is_file() and not (out / "c").exists()
    assert (out / evaluate.UNFINISHED / "a/finetuned/results.jsonl").is_file()
    assert not (out / evaluate.PREVIOUS).exists()
    # a rerun whose kernel died after setting the finished sets aside: its comparison and metrics never moved (the
    # batch runner names such an attempt .failed), and the next run (or the runner) puts the sets back first
    evaluate._set_aside(out)
    assert (out / "metrics.json").is_file() and not (out / "b").exists() and (out / evaluate.PREVIOUS / "b").is_dir()
    r = evaluate.run(test_sets={"a": a, "d": b}, **kw)
    assert [s.name for s in r.sets] == ["a", "d"] and (out / "d/finetuned/results.jsonl").is_file()
    assert not any((out / n).exists() for n in ("b", evaluate.PREVIOUS, evaluate.UNFINISHED))
    assert json.loads((out / "metrics.json").read_text())["per_set_cer"].keys() == {"a", "d"}
    # a test set with broken lines says how many were not decoded (the comparison alone did not)
    r = evaluate.run(**{**kw, "output_dir": str(tmp_path / "skips"), "on_bad_input": "skip"}, test_sets={"bad": str(bad)})
    assert any(w.startswith("bad: 1 of 3 input lines were not decoded") and "data_report.jsonl" in w for w in r.warnings)
