"""Batch runs: pipelines with references, sweeps, failure isolation, the run index and the leaderboard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from asr_workbench import batch, leaderboard, runs
from conftest import DEMO_DATA, DEMO_MODEL, REPO, subset


def _cli(args: list[str], outputs: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASR_WORKBENCH_OUTPUTS": str(outputs)}
    return subprocess.run([sys.executable, "-m", "asr_workbench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=env)


@pytest.fixture(scope="session")
def tiny_sets(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("tiny-sets")
    return {"target": str(subset(DEMO_DATA / "target/test", root / "target", 6)),
            "base": str(subset(DEMO_DATA / "base/test", root / "base", 6)), "finetune": str(tiny_data)}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, tiny_sets):
    work = tmp_path_factory.mktemp("pipeline")
    pipe = work / "tiny.pipeline.yaml"
    pipe.write_text(yaml.safe_dump({"description": "tiny demo pipeline", "steps": [
        {"name": "infer", "params": "params/demo/infer.yaml", "with": {"data_dir": tiny_sets["target"]}},
        {"name": "finetune", "params": "params/demo/finetune.yaml",
         "with": {"data_path": tiny_sets["finetune"], "max_epoch": 1, "keep_nbest_models": 1, "output_dir": None}},
        {"name": "evaluate", "params": "params/demo/infer_after_finetune.yaml",
         "with": {"finetune_dir": "${finetune.output_dir}", "test_sets": {"target": tiny_sets["target"], "base": tiny_sets["base"]},
                  "compare_checkpoints": [], "n_bootstrap": 100}},
    ]}))
    proc = _cli(["run", str(pipe), "-q"], work / "outputs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "outputs", proc.stdout


def test_pipeline_steps_feed_each_other_and_leave_run_folders(pipeline_run, tiny_sets):
    outputs, stdout = pipeline_run
    index = runs.read_index(outputs / "runs.jsonl")
    assert [e["name"] for e in index] == ["tiny.pipeline/infer", "tiny.pipeline/finetune", "tiny.pipeline/evaluate"]
    assert all(e["status"] == "ok" for e in index)
    ft, ev = index[1], index[2]
    assert ev["parameters"]["finetune_dir"] == ft["output_dir"]
    # the evaluation's row carries what its fine-tune trained with (a sweep's test CERs against finetune.lr)
    trained = yaml.safe_load((Path(ft["output_dir"]) / "config.yaml").read_text(encoding="utf-8"))
    assert ev["parameters"]["finetune.lr"] == trained["optim_conf"]["lr"] and ev["parameters"]["finetune.max_epoch"] == 1
    # in the notebook's terms: checkpoints averaged (funasr keeps the model finetune.yaml's 3), frames per batch
    assert ev["parameters"]["finetune.keep_nbest_models"] == 1 and trained["train_conf"]["keep_nbest_models"] == 3
    assert ev["parameters"]["finetune.batch_bins"] == ft["parameters"]["batch_bins"] == 4000
    # every CER the summary prints names its normaliser
    assert "CER after the normaliser zh-char-v4" in stdout and re.search(r"dev CER [\d.]+ % \(model\.pt\.\w+; base "
                                                                       r"[\d.]+ %; zh-char-v4\)", stdout)
    assert "finetune.lr" not in ft["parameters"] and "finetune.lr" not in index[0]["parameters"]
    for e in index:
        out = Path(e["output_dir"])
        assert out.parent == outputs  # fresh run folders go under the outputs root
        nb = json.loads((out / f"{e['notebook']}.ipynb").read_text(encoding="utf-8"))
        assert nb["metadata"]["papermill"]["parameters"]["output_dir"] == e["output_dir"]
        assert (out / "report.html").is_file() and (out / "command.txt").is_file()
    # one data set, one name on the leaderboard: the evaluation's sets are keyed by their folders, as infer's are
    inf = index[0]
    assert set(ev["per_set_cer"]) == {"/".join(Path(tiny_sets[k]).parts[-2:]) for k in ("target", "base")}
    assert set(inf["per_set_cer"]) <= set(ev["per_set_cer"]) and ev["primary_cer"] is not None
    assert list(ft["per_set_cer"]) == ["/".join(Path(tiny_sets["finetune"]).parts[-1:]) + "/validation"]
    assert "target: base" in stdout and "fine-tuned" in stdout  # the closing summary


def test_sweep_failure_isolation_and_parallel_index(tmp_path, tiny_sets):
    sweep = tmp_path / "bs.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "params/demo/infer.yaml", "grid": {"batch_size": [2, 4]},
                                     "with": {"data_dir": tiny_sets["target"]}}))
    broken = tmp_path / "broken" / "infer.yaml"
    broken.parent.mkdir()
    broken.write_text(yaml.safe_dump({"model": str(DEMO_MODEL), "data_dir": str(tmp_path / "no-such-data")}))
    board = tmp_path / "board" / "compare_runs.yaml"  # listed first, run last: it shows every run beside it
    board.parent.mkdir()
    board.write_text(yaml.safe_dump({"notebook_filter": "infer"}))
    proc = _cli(["run", str(board), str(sweep), str(broken), "--jobs", "2", "-q"], tmp_path / "outputs")
    assert proc.returncode == 1  # one run failed ...
    index = runs.read_index(tmp_path / "outputs" / "runs.jsonl")
    status = {e["name"]: e["status"] for e in index}
    assert status.pop("board/compare_runs") == "ok" and index[-1]["name"] == "board/compare_runs"
    assert status == {"bs.sweep/batch_size=2": "ok", "bs.sweep/batch_size=4": "ok", "broken/infer": "failed"}  # ... the others ran
    shown = (Path(index[-1]["output_dir"]) / "compare_runs.ipynb").read_text(encoding="utf-8")
    assert all(name.replace("/", "\\/") in shown or name in shown for name in status)
    failed = next(e for e in index if e["status"] == "failed")
    assert "DataError" in failed["error"] and "no-such-data" in failed["error"]
    assert (Path(failed["output_dir"]) / "report.html").is_file()  # the failed run is still a readable record
    ok = [e for e in index if e["status"] == "ok"]
    assert ok[0]["per_set_cer"] == ok[1]["per_set_cer"]  # batch size does not change the transcripts here
    assert "failed" in proc.stdout and "batch_size=2" in proc.stdout
    infer_board = leaderboard.load(str(tmp_path / "outputs" / "runs.jsonl"), notebook="infer")
    assert "batch_size" in infer_board.params and infer_board.rows[-1]["status"] == "failed"


def test_shipped_pipeline_and_sweep_expand():
    specs = batch.expand(["params/demo/demo.pipeline.yaml", "params/demo/lr.sweep.yaml"])
    names = [s.name for s in specs]
    assert names == ["demo.pipeline/infer", "demo.pipeline/finetune", "demo.pipeline/evaluate",
                     "demo.pipeline/leaderboard", "lr.sweep/lr=0.0005", "lr.sweep/lr=0.002"]
    assert specs[2].params["finetune_dir"] == specs[1].params["output_dir"]
    assert specs[4].params["lr"] == 0.0005 and specs[4].params["output_dir"] != specs[5].params["output_dir"]


@pytest.mark.parametrize("content, message", [
    ({"steps": [{"name": "a", "params": "params/demo/infer.yaml", "with": {"data_dir": "${b.output_dir}"}}]}, "names no earlier step"),
    ({"steps": [{"name": "a", "params": "params/demo/infer.yaml"}, {"name": "a", "params": "params/demo/infer.yaml"}]}, "duplicate step"),
    ({"stages": []}, "unknown key"),
    ({"steps": [{"name": "a", "params": "params/demo/infer.yaml", "with": {"modle": "x"}}]}, "modle not parameter"),
    # shapes that ended in a TypeError traceback
    ({"steps": [{"name": "a", "params": "params/demo/infer.yaml", "with": [1, 2]}]}, r"optional 'with' \(key: value\)"),
    ({"steps": [{"name": "a", "params": ["params/demo/infer.yaml"]}]}, r"'params' \(a file\)"),
])
def test_pipeline_schema_errors(tmp_path, content, message):
    f = tmp_path / "bad.pipeline.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=message):
        batch.expand([f])


def test_sweep_schema_errors(tmp_path):
    f = tmp_path / "bad.sweep.yaml"
    for content in ({"base": "params/demo/infer.yaml", "grid": {"batch_size": 4}},
                    {"base": "params/demo/infer.yaml", "grid": {"batch_size": [4]}, "with": [1]},
                    {"base": ["params/demo/infer.yaml"], "grid": {"batch_size": [4]}}):
        f.write_text(yaml.safe_dump(content))
        with pytest.raises(ValueError, match="a sweep has 'base' .* and 'grid'"):
            batch.expand([f])


def test_references_resolve_in_a_steps_params_file_and_nowhere_else(tmp_path):
    """${step.key} in a pipeline step's own params file was taken literally (no dependency, a folder named
    "${finetune.output_dir}"), as in a sweep or -p, where no step exists: resolved, or refused; a null value inside
    a text became "None"."""
    step_params = tmp_path / "p" / "infer.yaml"
    step_params.parent.mkdir()
    step_params.write_text("data_dir: ${first.data_dir}\n")
    pipe = tmp_path / "refs.pipeline.yaml"
    pipe.write_text(yaml.safe_dump({"steps": [{"name": "first", "params": "params/demo/infer.yaml"},
                                              {"name": "second", "params": str(step_params)}]}))
    specs = batch.expand([pipe])
    assert specs[1].params["data_dir"] == specs[0].params["data_dir"]
    sweep = tmp_path / "refs.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "params/demo/infer.yaml", "grid": {"batch_size": [4]},
                                     "with": {"data_dir": "${first.data_dir}"}}))
    with pytest.raises(ValueError, match=r"data_dir: \$\{first.data_dir\} is resolved only in a pipeline step"):
        batch.expand([sweep])
    with pytest.raises(ValueError, match="is resolved only in a pipeline step"):
        batch.expand(["params/demo/infer.yaml"], {"data_dir": "${first.data_dir}"})
    pipe.write_text(yaml.safe_dump({"steps": [
        {"name": "first", "params": "params/demo/infer.yaml"},
        {"name": "second", "params": "params/demo/infer.yaml", "with": {"output_dir": "out/${first.cache_dir}"}}]}))
    with pytest.raises(ValueError, match=r"\$\{first.cache_dir\} is null, so it cannot be part of the text"):
        batch.expand([pipe])


def test_a_key_given_twice_or_a_file_not_in_utf8_is_named(tmp_path):
    """safe_load keeps the last of two equal keys silently (batch_size: 4 further down won unseen); a Latin-1 file
    failed with a codec error naming no file."""
    f = tmp_path / "infer.yaml"
    f.write_text("batch_size: 8\ndata_dir: demo/data/base/test\nbatch_size: 4\n")
    with pytest.raises(ValueError, match=r"infer.yaml: not valid YAML: key 'batch_size' is given twice \(first on line 1\)"):
        batch.expand([f])
    f.write_bytes("model: café\n".encode("latin-1"))
    with pytest.raises(ValueError, match="infer.yaml: not UTF-8 text"):
        batch.expand([f])
    # shared settings through an anchor and a merge key are no duplicates; a date as a key is no reference
    f.write_text("decoding_overrides:\n  <<: &common {maxlenratio: 0.5}\n  2024-01-01: x\nbatch_size: 4\n")
    assert batch.expand([f])[0].params["decoding_overrides"]["maxlenratio"] == 0.5


def test_a_folder_without_params_files_is_an_error_not_an_empty_run(tmp_path):
    """`run params` (the suites are its sub-folders) ran nothing and exited 0."""
    with pytest.raises(ValueError, match="no \\*.yaml params.* its sub-folders demo, paraformer-large have some"):
        batch.expand(["params"])
    (tmp_path / "infer.yml").write_text("batch_size: 2\n")
    with pytest.raises(ValueError, match="infer.yml: name them \\*.yaml"):
        batch.expand([tmp_path])


def test_long_sweep_point_names_make_short_distinct_folders(tmp_path):
    """A sweep over long values (paths) names each point after them: the folder name is cut with a hash of the
    whole name, not refused by the file system (ENAMETOOLONG) after the first point ran."""
    f = tmp_path / "long.sweep.yaml"
    long = [f"demo/data/target{'/../target' * 30}/{s}" for s in ("test", "dev")]
    f.write_text(yaml.safe_dump({"base": "params/demo/infer.yaml", "grid": {"data_dir": long},
                                 "with": {"output_dir": str(tmp_path / "out")}}))
    names = [Path(spec.params["output_dir"]).name for spec in batch.expand([f])]
    assert len(set(names)) == 2 and all(len(n) <= 100 for n in names)
    # names that differ only in characters a folder name cannot keep: two folders, not "give different output_dir"
    f.write_text(yaml.safe_dump({"base": "params/demo/infer.yaml", "grid": {"data_dir": ["a/b", "a_b", "a b"]},
                                 "with": {"output_dir": str(tmp_path / "out")}}))
    assert len({spec.params["output_dir"] for spec in batch.expand([f])}) == 3


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="not a parameter of any notebook"):
        batch.expand(["params/demo/infer.yaml"], {"bacth_size": 2})
    # a notebook where a params file belongs: the params file that runs it, and papermill for the notebook alone
    with pytest.raises(ValueError, match=r"notebooks/infer.ipynb: a notebook; run takes params files "
                                         r"\(params/<suite>/infer.yaml"):
        batch.expand(["notebooks/infer.ipynb"])


def test_failed_first_step_skips_the_rest_of_its_pipeline(tmp_path):
    pipe = tmp_path / "broken.pipeline.yaml"
    pipe.write_text(yaml.safe_dump({"steps": [
        {"name": "infer", "params": "params/demo/infer.yaml", "with": {"data_dir": str(tmp_path / "nothing")}},
        {"name": "again", "params": "params/demo/infer.yaml", "with": {"output_dir": None}}]}))
    proc = _cli(["run", str(pipe), "-q"], tmp_path / "outputs")
    assert proc.returncode == 1
    index = runs.read_index(tmp_path / "outputs" / "runs.jsonl")
    assert [(e["name"], e["status"]) for e in index] == [("broken.pipeline/infer", "failed"),
                                                         ("broken.pipeline/again", "skipped")]
    assert "skipped: broken.pipeline/infer failed" in index[1]["error"]
    assert not Path(index[1]["output_dir"]).exists()  # its reserved fresh folder, never written, is gone


def test_runs_may_not_share_an_output_dir_or_override_the_grid(tmp_path):
    a, b = tmp_path / "a" / "infer.yaml", tmp_path / "b" / "infer.yaml"
    for f in (a, b):
        f.parent.mkdir()
        f.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "same")}))
    with pytest.raises(ValueError, match="would both write to"):
        batch.expand([a, b])
    with pytest.raises(ValueError, match="replace the swept values"):
        batch.expand(["params/demo/lr.sweep.yaml"], {"lr": 0.1})
    with pytest.raises(ValueError, match="-p output_dir would send demo.pipeline/infer and demo.pipeline/finetune to one"):
        batch.expand(["params/demo/lr.sweep.yaml", "params/demo/demo.pipeline.yaml"], {"output_dir": "x"})
    # a sweep alone takes -p output_dir as its folder: one sub-folder per point (it was silently replaced)
    points = batch.expand(["params/demo/lr.sweep.yaml"], {"output_dir": str(tmp_path / "sw")})
    assert [Path(s.params["output_dir"]).parent for s in points] == [tmp_path / "sw"] * len(points)


def test_sweep_point_folders_are_safe_names(tmp_path):
    sweep = tmp_path / "odd.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "params/demo/infer.yaml", "grid": {"decoding_overrides": [{"a b": "c/d"}]},
                                     "with": {"output_dir": str(tmp_path / "fixed")}}))
    spec = batch.expand([sweep])[0]
    out = Path(spec.params["output_dir"])
    assert out.parent == tmp_path / "fixed" and "/" not in out.name and " " not in out.name


def test_numbers_written_the_yaml_1_1_way_reach_notebooks_as_numbers(tmp_path):
    f = tmp_path / "finetune.yaml"
    f.write_text("lr: 1e-4\nmax_epoch: 3\n")
    spec = batch.expand([f], {"batch_bins": "2000"})[0]
    assert spec.params["lr"] == 0.0001 and isinstance(spec.params["lr"], float)
    assert spec.params["batch_bins"] == 2000 and isinstance(spec.params["batch_bins"], int)


def test_command_line_values_take_their_parameters_types(tmp_path):
    """-p values are text until the notebook's parameter types read them: 1e3 is 1000 for an int, 0755 stays a
    name for a str (YAML 1.1 made it 493), null is None; a value that is not of its type is refused before any
    run, naming the key (lr=abc failed inside the notebook, not naming lr)."""
    from asr_workbench import cli

    args = dict(cli._parse_override(a) for a in ("n_bootstrap=1e3", "modelscope_model_name=null",
                                                 "compare_with_base=no", "test_sets={a: x}", "seed=7"))
    p = batch.expand(["params/demo/infer_after_finetune.yaml"], args)[0].params
    assert (p["n_bootstrap"], p["modelscope_model_name"], p["compare_with_base"], p["test_sets"], p["seed"]) == (
        1000, None, False, {"a": "x"}, 7) and isinstance(p["n_bootstrap"], int)
    assert batch.expand(["params/demo/infer.yaml"], {"model": "0755"})[0].params["model"] == "0755"
    # quoted, a value is the string inside the quotes; None is null for a str too; a number in a params file
    # for a str parameter is its text; a bool for an int is refused
    for arg, want in (('model="my model"', "my model"), ("model='0755'", "0755"), ("cache_dir=None", None)):
        key, value = cli._parse_override(arg)
        assert batch.expand(["params/demo/infer.yaml"], {key: value})[0].params[key] == want
    # a parameter the notebook needs a value for, or a value of another type, fails naming the key (it failed in a
    # cell with a TypeError); YAML's yes for a str is said as such
    f = tmp_path / "infer.yaml"
    for text, message in (("model: null", "model cannot be null: infer.ipynb needs a value"),
                          ("model: [demo/model]", r"model is a str parameter of infer.ipynb, got \['demo/model'\]"),
                          ("on_bad_input: yes", "on_bad_input is a str parameter .* got True .*quote the word"),
                          ("decoding_overrides: [1]", "decoding_overrides is a dict parameter")):
        f.write_text(text + "\n")
        with pytest.raises(ValueError, match=message):
            batch.expand([f])
    f.write_text("devices: [0, 1]\n")  # a text parameter the workbench also takes as a list
    assert batch.expand([f])[0].params["devices"] == [0, 1]
    f = tmp_path / "infer.yaml"
    f.write_text("model: 123\nbatch_size: 8.0\n")
    assert (batch.expand([f])[0].params["model"], batch.expand([f])[0].params["batch_size"]) == ("123", 8)
    f.write_text("batch_size: true\n")
    with pytest.raises(ValueError, match="batch_size is an int parameter of infer.ipynb, got True"):
        batch.expand([f])
    sweep = batch.expand(["params/demo/lr.sweep.yaml"], {"output_dir": "null"})  # -p output_dir=null: fresh folders
    assert all("/null/" not in s.params["output_dir"] for s in sweep)
    for key, value in (("max_epoch", "2.5"), ("lr", "abc"), ("specaug_conf", "3")):
        with pytest.raises(ValueError, match=rf"{key} is an? \w+ parameter of finetune.ipynb, got '{value}'"):
            batch.expand(["params/demo/finetune.yaml"], {key: value})


def test_params_paths_resolve_from_the_working_directory_first(tmp_path, monkeypatch):
    """`asr-workbench run p/infer.yaml` in the folder that holds p/: the user's path, not the repository's."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "infer.yaml").write_text("batch_size: 3\n")
    monkeypatch.chdir(tmp_path)
    assert batch.expand(["p/infer.yaml"])[0].params["batch_size"] == 3
    assert batch.expand(["params/demo/infer.yaml"])  # still found in the repository when not here
    with pytest.raises(FileNotFoundError, match=r"no such params file or folder \(looked for .*nothing.yaml and "):
        batch.expand(["nothing.yaml"])


def test_leaderboard_says_when_cers_come_from_different_normalisers(tmp_path):
    """A run index kept across workbench versions holds CERs of zh-char-v1 and zh-char-v2: not comparable, said."""
    from asr_workbench import report

    index = tmp_path / "runs.jsonl"
    for name, cer, norm in (("old", 0.05, "zh-char-v1: ..."), ("new run", 0.06, "zh-char-v2: ...")):
        rec = batch.RunRecord(name, Path("notebooks/infer.ipynb"), tmp_path / name, tmp_path / name / "x.ipynb",
                              tmp_path / name / "report.html", "ok", None, 1.0, 0.0, {"batch_size": 16},
                              {"cer": cer, "normaliser": norm, "data_dir": "demo/data/base/test"})
        batch.append_index(rec, index)
    board = leaderboard.load(str(index))
    assert board.normalisers == ["zh-char-v1", "zh-char-v2"] and "2 different text normalisers" in board.notes[0]
    assert "normaliser" in board.text().splitlines()[1] and "zh-char-v1" in board.text()
    assert "Note: these CERs were computed after 2 different text normalisers" in report.leaderboard_table(board)
    # links relative to the board's own report folder (they work in a copied outputs folder), encoded
    table = report.leaderboard_table(board, links_from=tmp_path / "board")
    assert "href='../new%20run/report.html'" in table and "href='../old/report.html'" in table
    assert f"href='{(tmp_path / 'old' / 'report.html').as_uri()}'" in report.leaderboard_table(board)
    same = leaderboard.load(str(index), notebook="nothing")
    assert same.notes == [] and same.rows == []


def test_index_line_after_a_cut_off_one_is_kept(tmp_path):
    """A crash mid-write leaves a line without its end: the next run's line is not glued onto it (and lost)."""
    index = tmp_path / "runs.jsonl"
    # the crash cut a CJK character in half (a notes field): one line lost, not the whole index unreadable
    index.write_bytes('{"name": "old", "status": "ok", "notebook": "infer", "html": 7}\n{"name": "crashed", "n": "今'
                      .encode()[:-1])
    rec = batch.RunRecord("new", Path("notebooks/infer.ipynb"), tmp_path / "new", tmp_path / "new" / "x.ipynb", None,
                          "ok", None, 1.0, 0.0, {}, {"cer": 0.1, "data_dir": "d/test"})
    batch.append_index(rec, index)
    with pytest.warns(UserWarning, match=r"1 line\(s\) are not run records .* line 2"):
        entries = runs.read_index(index)
    assert [e["name"] for e in entries] == ["old", "new"]
    assert entries[0]["html"] is None  # edited by hand to a number: not a link
    with pytest.raises(FileNotFoundError, match="no such run index"):
        runs.read_index(tmp_path / "mistyped.jsonl")


def test_fresh_run_folders_are_reserved(tmp_path, monkeypatch):
    """Two commands started in the same second took the same fresh folder and mixed their files: reserving it
    (creating it) makes the second one take the next name; a dry run reserves nothing."""
    monkeypatch.setenv("ASR_WORKBENCH_OUTPUTS", str(tmp_path))
    monkeypatch.setattr(batch, "_stamp", lambda: "20260101-000000")
    dry = batch.expand(["params/demo/infer.yaml"], {"output_dir": None})[0].params["output_dir"]
    assert not Path(dry).exists()
    a = batch.expand(["params/demo/infer.yaml"], {"output_dir": None}, reserve=True)[0].params["output_dir"]
    b = batch.expand(["params/demo/infer.yaml"], {"output_dir": None}, reserve=True)[0].params["output_dir"]
    assert a == dry and b == a + "-2" and Path(a).is_dir() and Path(b).is_dir()


def test_run_folders_are_compared_as_real_folders(tmp_path):
    for name, out in (("a", tmp_path / "same"), ("b", tmp_path / "x" / ".." / "same")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "infer.yaml").write_text(f"output_dir: {out}\n")
    with pytest.raises(ValueError, match="would both write to"):
        batch.expand([tmp_path / "a" / "infer.yaml", tmp_path / "b" / "infer.yaml"])


def test_a_run_folder_that_cannot_be_made_fails_that_run_only(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "infer.yaml").write_text(f"output_dir: {tmp_path / 'afile'}\n")
    spec = batch.expand([tmp_path / "p" / "infer.yaml"])[0]
    rec = batch.execute(spec, progress=False)
    assert rec.status == "failed" and "afile" in rec.error and rec.html is None


def test_command_lines_keep_overrides_and_list_params_take_one_string(tmp_path):
    specs = batch.expand(["params/demo/demo.pipeline.yaml"], {"batch_size": 2})
    assert all("-p batch_size=2" in s.command for s in specs)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "infer_after_finetune.yaml").write_text("required_files: am.mvn\ncompare_checkpoints: model.pt.best\n")
    p = batch.expand([tmp_path / "e" / "infer_after_finetune.yaml"])[0].params
    assert p["required_files"] == ["am.mvn"] and p["compare_checkpoints"] == ["model.pt.best"]


def test_cer_against_a_swept_setting_of_mappings_and_data_filter(tmp_path):
    """A sweep over dict-valued settings (scheduler_conf) plots without comparing dicts; --data test matches the
    infer runs' target/test and base/test."""
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    index = tmp_path / "runs.jsonl"
    for i, (conf, data) in enumerate((({"warmup_steps": 30}, "demo/data/target/test"),
                                      ({"warmup_steps": 10}, "demo/data/base/test"))):
        rec = batch.RunRecord(f"r{i}", Path("notebooks/infer.ipynb"), tmp_path / f"r{i}", tmp_path / "x.ipynb", None,
                              "ok", None, 1.0, 0.0, {"scheduler_conf": conf}, {"cer": 0.1 * (i + 1), "data_dir": data})
        batch.append_index(rec, index)
    board = leaderboard.load(str(index))
    ax = report.cer_vs_parameter(board, "scheduler_conf").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["{'warmup_steps': 10}", "{'warmup_steps': 30}"]
    assert {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines} == {
        "base/test": ([0], [20.0]), "target/test": ([1], [10.0])}  # one line per data set, at its setting's place
    assert [r["data"] for r in leaderboard.load(str(index), data="test").rows] == ["target/test", "base/test"]


def test_cer_figures_name_their_normaliser_and_sweeps_plot_in_value_order(tmp_path):
    """Every CER axis names the text normaliser; a swept value's position follows its value, not the order runs
    were listed in (batch_size 4 plotted before 1)."""
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report, scoring

    index = tmp_path / "runs.jsonl"
    for i, (bs, data) in enumerate(((4, "d/a"), (1, "d/a"), (2, "d/b"))):
        rec = batch.RunRecord(f"r{i}", Path("notebooks/infer.ipynb"), tmp_path / f"r{i}", tmp_path / "x.ipynb", None,
                              "ok", None, 1.0, 0.0, {"batch_size": bs},
                              {"cer": 0.1, "data_dir": data, "normaliser": scoring.NORMALISER})
        batch.append_index(rec, index)
    board = leaderboard.load(str(index))
    ax = report.cer_vs_parameter(board, "batch_size").axes[0]
    name = scoring.NORMALISER.split(":")[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"] and name in ax.get_ylabel()
    assert list(ax.lines[0].get_xdata()) == [0, 2]  # d/a: batch 1 at position 0, batch 4 at position 2
    assert f"CER({name})" in board.text().splitlines()[0] and "started" in board.text().splitlines()[0]
    rows = [{"scored": True, "duration_s": d, "cer": e / n, "ref_tokens": n, "errors": e}
            for d, n, e in ((1.0, 10, 1), (1.5, 2, 2), (3.0, 6, 3))]
    ax = report.cer_vs_duration(rows, bins=2).axes[0]
    assert name in ax.get_ylabel()
    # the points are the utterances' CERs, the line each bin's corpus CER at its mean duration
    assert [list(p) for p in ax.collections[0].get_offsets()] == [[1.0, 10.0], [1.5, 100.0], [3.0, 50.0]]
    assert list(ax.lines[0].get_xdata()) == [1.25, 3.0] and list(ax.lines[0].get_ydata()) == [25.0, 50.0]


def test_reserved_folders_go_again_when_nothing_runs_in_them(tmp_path, monkeypatch):
    """Fresh folders are created when runs are expanded for running: a typo that stops the expansion, or a step
    skipped after a failure, leaves no empty folder behind."""
    monkeypatch.setenv("ASR_WORKBENCH_OUTPUTS", str(tmp_path))
    with pytest.raises(ValueError, match="not a parameter of any notebook"):
        batch.expand(["params/demo"], {"typo": 1}, reserve=True)
    assert list(tmp_path.iterdir()) == []
    specs = batch.expand(["params/demo/demo.pipeline.yaml"], reserve=True)
    fresh = [Path(s.params["output_dir"]) for s in specs if str(s.params["output_dir"]).startswith(str(tmp_path))]
    assert fresh and all(f.is_dir() for f in fresh)  # reserved (the skipped-step case: the pipeline test below)


def test_a_folder_the_notebook_would_refuse_gets_nothing_written(tmp_path):
    """The batch runner checks the run folder as the notebook's library call will: a fine-tune's folder keeps its
    report and command when an inference run is pointed at it."""
    from asr_workbench import runs

    ft = runs.prepare_output_dir(tmp_path / "ft", "finetune")
    (ft / "report.html").write_text("the fine-tune's report")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "infer.yaml").write_text(f"output_dir: {ft}\n")
    rec = batch.execute(batch.expand([tmp_path / "p" / "infer.yaml"])[0], progress=False)
    assert rec.status == "failed" and "holds a finetune run" in rec.error
    assert sorted(p.name for p in ft.iterdir()) == [".asr_workbench_run", "report.html"]
    assert (ft / "report.html").read_text() == "the fine-tune's report"
    # the leaderboard notebook writes nothing itself, but its report would replace the run's (and the index line
    # would carry that run's CER): refused the same way
    (tmp_path / "p" / "compare_runs.yaml").write_text(f"output_dir: {ft}\n")
    rec = batch.execute(batch.expand([tmp_path / "p" / "compare_runs.yaml"])[0], progress=False)
    assert rec.status == "failed" and "holds a finetune run: a leaderboard run" in rec.error
    assert (ft / "report.html").read_text() == "the fine-tune's report"


def test_a_failed_rerun_keeps_the_finished_runs_notebook_and_report(tmp_path):
    """Run again into a fixed folder and fail before the results are touched (a bad parameter): the folder's
    notebook, report and command still belong to its metrics.json; the failure is kept beside them as *.failed.*."""
    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 2)
    (tmp_path / "p").mkdir()
    params = tmp_path / "p" / "infer.yaml"
    params.write_text(yaml.safe_dump({"data_dir": str(data), "output_dir": str(tmp_path / "run"), "device": "cpu"}))
    ok = batch.execute(batch.expand([params])[0], progress=False)
    assert ok.status == "ok" and ok.html == tmp_path / "run" / "report.html"
    report = ok.html.read_text(encoding="utf-8")
    failed = batch.execute(batch.expand([params], {"batch_size": 0})[0], progress=False)
    assert failed.status == "failed" and "batch_size must be an integer >= 1" in failed.error
    assert failed.html == tmp_path / "run" / "report.failed.html" and failed.html.is_file()
    assert (tmp_path / "run" / "report.html").read_text(encoding="utf-8") == report
    assert "batch_size=0" not in (tmp_path / "run" / "command.txt").read_text()
    assert "batch_size=0" in (tmp_path / "run" / "command.failed.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "run").glob("infer*.ipynb")) == ["infer.failed.ipynb", "infer.ipynb"]


def test_an_interrupted_rerun_that_replaced_the_results_takes_the_usual_names(tmp_path, monkeypatch):
    """Interrupted (Ctrl-C, SIGTERM) once its results were written: the folder's metrics.json is the new run's, so
    its notebook and command are too (the old ones described replaced results), and no *.attempt.* is left."""
    import papermill

    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 2)
    (tmp_path / "p").mkdir()
    params = tmp_path / "p" / "infer.yaml"
    params.write_text(yaml.safe_dump({"data_dir": str(data), "output_dir": str(tmp_path / "run"), "device": "cpu"}))
    assert batch.execute(batch.expand([params])[0], progress=False).status == "ok"
    real = papermill.execute_notebook

    def interrupted_at_the_end(*args, **kwargs):  # the real run, then the interrupt while its report renders
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        batch.execute(batch.expand([params], {"batch_size": 3})[0], progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["parameters"]["batch_size"] == 3
    assert "batch_size=3" in (run / "command.txt").read_text()
    nb = json.loads((run / "infer.ipynb").read_text(encoding="utf-8"))
    assert nb["metadata"]["papermill"]["parameters"]["batch_size"] == 3
    assert not list(run.glob("*.attempt.*")) and not list(run.glob("*.failed.*"))


def test_a_folder_another_run_is_writing_is_refused(tmp_path):
    """Two commands given the same fixed output_dir at once shared its partial file (one failed with "utterances
    were not decoded") and its report: the second is refused while the first holds the folder."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(out / '.asr_workbench_lock')!r}, 'a+'); f.write('pid 4242'); f.flush()\n"
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = batch.expand(["params/demo/infer.yaml"], {"output_dir": str(out), "data_dir": "demo/data/base/test"})[0]
        rec = batch.execute(spec, progress=False)
        assert rec.status == "failed" and "is in use by another run (pid 4242)" in rec.error
        assert not (out / "infer.ipynb").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_that_reads_another_runs_folder_waits_for_it(monkeypatch, tmp_path):
    """A folder of params files holds a fine-tune and the evaluation that reads its output_dir: the evaluation's
    group starts after the fine-tune's (with --jobs it started before there was a model to read) and is skipped
    when the fine-tune fails; an unrelated failure (a pipeline's first step) skips nothing of other groups, and
    leaderboards run last."""
    spec = lambda name, group, **params: batch.RunSpec(  # noqa: E731
        name, Path("notebooks/compare_runs.ipynb" if "board" in name else "notebooks/x.ipynb"), params, "src", group)
    o = tmp_path
    ev = spec("s/eval", "eval.yaml", output_dir=str(o / "eval"), finetune_dir=str(o / "ft"))
    p1 = spec("p/infer", "p", output_dir=str(o / "p1"))
    p2 = spec("p/eval", "p", output_dir=str(o / "p2"), model=str(o / "ft" / "model"))
    board = spec("s/board", "board.yaml", output_dir=str(o / "b"))
    ft = spec("s/ft", "ft.yaml", output_dir=str(o / "ft"))
    other = spec("s/infer", "infer.yaml", output_dir=str(o / "infer"), model="demo/model")
    # a pipeline that ends in a leaderboard (the demo's): its board showed half of what ran beside it
    q1, q_board = spec("q/infer", "q", output_dir=str(o / "q1")), spec("q/board", "q", output_dir=str(o / "qb"))
    specs = batch._with_dependencies([q1, q_board, ev, p1, p2, board, ft, other])
    assert [s.after for s in specs] == [[], [], ["s/ft"], [], ["s/ft"], [], [], []]
    assert [s.group for s in specs] == ["q", "q", "eval.yaml", "p", "p", "board.yaml", "ft.yaml", "infer.yaml"]

    def run(fail: set[str]) -> list[tuple[str, str]]:
        order = []

        def execute(spec, hide_code=False, progress=True):
            order.append(spec.name)
            return batch.RunRecord(spec.name, spec.notebook, Path(spec.params["output_dir"]), o / "x.ipynb", None,
                                   "failed" if spec.name in fail else "ok", None, 0.0, 0.0, spec.params)

        monkeypatch.setattr(batch, "execute", execute)
        records = batch.run_all(specs, index=o / "runs.jsonl", progress=False)
        return order, {r.name: r.status for r in records}

    order, status = run(set())
    assert order.index("s/ft") < order.index("s/eval") and order.index("s/ft") < order.index("p/eval")
    assert order[-1] == "s/board" and set(status.values()) == {"ok"}
    assert order.index("q/board") == len(order) - 2 and order.index("q/infer") > order.index("s/infer")
    order, status = run({"p/infer"})  # the pipeline's own later step is skipped; the fine-tune is not
    assert status["s/ft"] == "ok" and status["s/eval"] == "ok" and status["p/eval"] == "skipped"
    order, status = run({"s/ft"})  # what reads the failed fine-tune is skipped, the rest runs
    assert status["s/eval"] == "skipped" and status["p/eval"] == "skipped" and status["s/infer"] == "ok"
    assert status["p/infer"] == "ok"
    demo = {s.name: s for s in batch.expand(["params/demo"])}  # the shipped folder: evaluation after its fine-tune
    assert demo["demo/infer_after_finetune"].after == ["demo/finetune"]


def test_broken_files_and_index_lines_are_named_not_tracebacks(tmp_path):
    """A params file that is not YAML names its line; a sweep's missing base is named as such; index lines that
    are JSON but not run records (a list, no name, a CER as text) are skipped and said, like cut-off ones."""
    bad = tmp_path / "broken.pipeline.yaml"
    bad.write_text("steps:\n  - name: a\n    params: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken.pipeline.yaml: not valid YAML: .*line \d+"):
        batch.expand([bad])
    sweep = tmp_path / "x.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": str(tmp_path / "nosuch.yaml"), "grid": {"lr": [0.1]}}))
    with pytest.raises(FileNotFoundError, match="base .*nosuch.yaml: no such params file"):
        batch.expand([sweep])
    index = tmp_path / "runs.jsonl"
    good = {"name": "a", "status": "ok", "notebook": "infer", "primary_cer": 0.1, "per_set_cer": {"t": 0.1}}
    index.write_text("\n".join(json.dumps(x) for x in (good, [1, 2], {"status": "ok"},
                                                        {**good, "name": "b", "per_set_cer": {"t": "0.2"},
                                                         "per_set_data": ["edited"]})) + "\n")
    with pytest.warns(UserWarning, match=r"2 line\(s\) are not run records.*line 2"):
        entries = runs.read_index(index)
    assert [e["name"] for e in entries] == ["a", "b"] and entries[1]["per_set_cer"] == {"t": None}
    from asr_workbench import leaderboard

    with pytest.warns(UserWarning):
        assert [r["name"] for r in leaderboard.load(str(index)).rows] == ["a", "b"]


def test_an_interrupted_batch_says_how_to_go_on_and_leaves_no_empty_folders(tmp_path, tiny_data):
    """Ctrl-C during a pipeline: exit 130 with one line on how to go on, not a traceback; the folders reserved
    for the steps that never started are gone."""
    import signal

    pipe = tmp_path / "slow.pipeline.yaml"
    pipe.write_text(yaml.safe_dump({"steps": [
        {"name": "ft", "params": "params/demo/finetune.yaml",
         "with": {"data_path": str(tiny_data), "output_dir": None, "max_epoch": 20}},
        {"name": "after", "params": "params/demo/infer.yaml", "with": {"output_dir": None}}]}))
    outputs = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "asr_workbench", "run", str(pipe), "-q"], cwd=str(REPO),
                            env={**os.environ, "ASR_WORKBENCH_OUTPUTS": str(outputs)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(outputs.glob("slow.pipeline-ft-*/train")):
        time.sleep(0.5)  # the fine-tune is training
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: finished runs are in the index" in err and "Traceback" not in err.split("interrupted:")[-1]
    assert not list(outputs.glob("slow.pipeline-after-*"))  # reserved, never started: removed


def test_sigterm_stops_parallel_runs_with_their_workers(tmp_path, tiny_data):
    """A job scheduler's SIGTERM to the command (not its process group) with --jobs 2: exit 143 with the same line
    as Ctrl-C, and the worker processes end too (they went on training and indexed their runs afterwards)."""
    import signal

    sweep = tmp_path / "slow.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "params/demo/finetune.yaml", "grid": {"lr": [0.001, 0.002]},
                                     "with": {"data_path": str(tiny_data), "output_dir": None, "max_epoch": 20}}))
    outputs = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "asr_workbench", "run", str(sweep), "--jobs", "2", "-q"],
                            cwd=str(REPO), env={**os.environ, "ASR_WORKBENCH_OUTPUTS": str(outputs)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(outputs.glob("slow.sweep-*/train"))) < 2:
        time.sleep(0.5)  # both fine-tunes are training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted: finished runs are in the index" in err
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # a worker (or its trainer) of the command's session still alive
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("worker processes outlived the terminated command")
    assert not (outputs / "runs.jsonl").exists() or '"ok"' not in (outputs / "runs.jsonl").read_text()


def test_pipeline_references_to_defaults_resolve_and_malformed_ones_are_refused(tmp_path):
    """${infer.precision} names a parameter the step left at its notebook default: resolved to it; ${ infer.x }
    and ${infer.data-dir} are no references and would have run as literal text: refused."""
    ok = tmp_path / "ok.pipeline.yaml"
    ok.write_text(yaml.safe_dump({"steps": [
        {"name": "infer", "params": "params/demo/infer.yaml"},
        {"name": "again", "params": "params/demo/infer.yaml", "with": {"precision": "${infer.precision}"}}]}))
    assert batch.expand([ok])[1].params["precision"] == "fp32"
    for ref in ("${ infer.output_dir }/x", "${infer.data-dir}"):
        bad = tmp_path / "bad.pipeline.yaml"
        bad.write_text(yaml.safe_dump({"steps": [
            {"name": "infer", "params": "params/demo/infer.yaml"},
            {"name": "again", "params": "params/demo/infer.yaml", "with": {"output_dir": ref}}]}))
        with pytest.raises(ValueError, match=r"is not a reference; write \$\{step.parameter\}"):
            batch.expand([bad])


def test_leaderboard_table_shows_the_best_rows_and_says_how_many_more(tmp_path):
    """A 2000-run index made a 3 MB table of every run: the best max_rows are shown, the rest counted."""
    from asr_workbench import report

    index = tmp_path / "runs.jsonl"
    for i in range(5):
        rec = batch.RunRecord(f"r{i}", Path("notebooks/infer.ipynb"), tmp_path / f"r{i}", tmp_path / "x.ipynb", None,
                              "ok", None, 1.0, 0.0, {"batch_size": i + 1}, {"cer": 0.5 - 0.1 * i, "data_dir": "d/a"})
        batch.append_index(rec, index)
    html = str(report.leaderboard_table(leaderboard.load(str(index)), max_rows=2))
    assert html.count("<tr>") == 3 and ">r4<" in html and ">r3<" in html and ">r0<" not in html  # header + best 2
    assert "3 more row(s)" in html and html.count("text-align") == 1  # one style for the table, not one per cell


def test_cer_against_a_parameter_joins_the_best_run_of_each_value(tmp_path):
    """Runs sharing a learning rate but not their epochs made a sawtooth line: the line joins the best of each
    value, every run is a dot; 40 values label about 12 ticks."""
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    index = tmp_path / "runs.jsonl"
    for i, (lr, epochs, cer) in enumerate(((1e-4, 1, 0.5), (1e-4, 5, 0.3), (3e-4, 1, 0.4), (3e-4, 5, 0.45))):
        rec = batch.RunRecord(f"r{i}", Path("notebooks/infer.ipynb"), tmp_path / f"r{i}", tmp_path / "x.ipynb", None,
                              "ok", None, 1.0, 0.0, {"lr": lr, "max_epoch": epochs}, {"cer": cer, "data_dir": "d/a"})
        batch.append_index(rec, index)
    ax = report.cer_vs_parameter(leaderboard.load(str(index)), "lr").axes[0]
    assert list(ax.lines[0].get_xdata()) == [0, 1] and list(ax.lines[0].get_ydata()) == [30.0, 40.0]
    assert len(ax.collections[0].get_offsets()) == 4 and "best run per value" in ax.get_title()
    for i in range(40):
        batch.append_index(batch.RunRecord(f"s{i}", Path("notebooks/infer.ipynb"), tmp_path / f"s{i}",
                                           tmp_path / "x.ipynb", None, "ok", None, 1.0, 0.0, {"lr": 1e-5 * (i + 1)},
                                           {"cer": 0.2, "data_dir": "d/b"}), index)
    ax = report.cer_vs_parameter(leaderboard.load(str(index), data="b"), "lr").axes[0]
    assert len(ax.get_xticks()) == 40 and sum(bool(t.get_text()) for t in ax.get_xticklabels()) <= 14



def test_a_data_set_is_its_folder_not_the_end_of_its_path(tmp_path):
    """Two corpora's data/test (every Kaldi recipe's name) were one data set on the leaderboard, and a sweep's plot
    drew a line from one corpus to the other; the same folder through a symlink was another. Names grow until
    they tell folders apart."""
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    a, b = tmp_path / "corpA" / "data" / "test", tmp_path / "corpB" / "data" / "test"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (tmp_path / "link").symlink_to(a)
    index = tmp_path / "runs.jsonl"
    for name, folder, bs, cer in (("r1", a, 4, 0.39), ("r2", b, 8, 1.41), ("r3", tmp_path / "link", 8, 0.40)):
        batch.append_index(batch.RunRecord(name, Path("notebooks/infer.ipynb"), tmp_path / name, tmp_path / "x.ipynb",
                                           None, "ok", None, 1.0, 0.0, {"batch_size": bs},
                                           {"cer": cer, "data_dir": str(folder)}), index)
    board = leaderboard.load(str(index))
    assert {r["name"]: r["data"] for r in board.rows} == {"r1": "corpA/data/test", "r2": "corpB/data/test",
                                                          "r3": "corpA/data/test"}
    assert [r["name"] for r in leaderboard.load(str(index), data="corpB").rows] == ["r2"]
    lines = report.cer_vs_parameter(board, "batch_size").axes[0].lines
    assert sorted((ln.get_label(), list(ln.get_ydata())) for ln in lines) == [("corpA/data/test", [39.0, 40.0]),
                                                                             ("corpB/data/test", [141.0])]


def test_a_parameter_of_one_notebook_is_a_column_only_when_it_varies():
    """A board of every notebook showed each notebook's parameters as columns of 'None' for the others."""
    entries = [{"parameters": {"lr": 1e-4, "batch_size": 8}}, {"parameters": {"lr": 3e-4}},
               {"parameters": {"finetune.lr": 1e-4, "output_dir": "a"}}, {"parameters": {"finetune.lr": 1e-4}}]
    assert leaderboard.varying_parameters(entries) == ["lr"]
