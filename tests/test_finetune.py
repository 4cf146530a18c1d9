"""The fine-tuning notebook and its parts: parameters reach funasr's trainer, the exported folder stands alone."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from asr_workbench import datadir, decode, finetune, training
from asr_workbench.finetune import config as fconfig
from asr_workbench.finetune import export
from conftest import DEMO_DATA, DEMO_MODEL, REPO, damaged_copies, subset


def test_notebook_writes_config_checkpoints_model_and_metrics(notebook_finetune):
    out, work = notebook_finetune
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    names = export.list_checkpoints(out / "train")
    assert {"model.pt.ep1", "model.pt.ep2", "model.pt.best", "model.pt.avg2"} <= set(names)
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == "model.pt.avg2" and set(m["dev_cer"]) >= {"base", "model.pt.avg2", "model.pt.ep1"}
    # the headline dev CERs, utterance by utterance: the exported model's and the base's, as inference runs write them
    for who, cer in (("finetuned", m["cer"]), ("base", m["dev_cer"]["base"])):
        run = json.loads((out / "dev" / who / "metrics.json").read_text())
        assert m["dev_runs"][who] == str(out / "dev" / who) and run["cer"] == pytest.approx(cer, abs=1e-6)
        rows = [json.loads(x) for x in (out / "dev" / who / "results.jsonl").read_text(encoding="utf-8").splitlines()]
        assert sum(r["errors"] for r in rows if r["scored"]) == run["sub"] + run["del"] + run["ins"]
        assert (out / "dev" / who / "1best_recog/text.cer").is_file() and (out / "dev" / who / "errors.txt").is_file()
    assert "model.pt.avg2" in (out / "model" / "README.md").read_text(encoding="utf-8")
    # hydra never wrote ./outputs/<date>: not where papermill ran, nor where the trainer ran, nor in the repository
    assert not list(work.rglob("outputs/20*")) and not list(REPO.glob("outputs/20*"))


def test_exported_model_loads_without_its_base(notebook_finetune):
    out, _ = notebook_finetune
    folder = out / "model"
    for name in ("config.yaml", "model.pt", "tokens.json", "am.mvn", "configuration.json", "decoding.yaml", "README.md"):
        assert (folder / name).is_file(), name
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    assert "/" not in "".join(v for v in yaml.safe_load(text).get("tokenizer_conf", {}).values() if isinstance(v, str))
    assert str(out.parent) not in text
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = decode.load_model(str(folder), device="cpu")
    wav = sorted((DEMO_DATA / "target/test/audio").iterdir())[0]
    hyp = decode.transcribe(model, [("u", str(wav))])
    assert hyp[0].text


def _export_from(base: Path, out: Path, tmp_path: Path) -> tuple[Path, dict]:
    """The fine-tune ``out``'s checkpoint exported with ``base`` as the base model: the folder and its metas."""
    from asr_workbench import modelhub

    ckpt = json.loads((out / "metrics.json").read_text())["checkpoint"]
    folder = export.export_model_folder(modelhub.open_model(str(base)), out / "train", ckpt, tmp_path / "exp",
                                        yaml.safe_load((out / "config.yaml").read_text()), "card\n")
    return folder, json.loads((folder / "configuration.json").read_text())["file_path_metas"]


def _decodes_like(folder: Path, out: Path) -> bool:
    """Whether ``folder`` decodes a test clip as the fine-tune's own exported model does."""
    wavs = [("u", str(sorted((DEMO_DATA / "target/test/audio").iterdir())[0]))]
    return (decode.transcribe(decode.load_model(str(folder), device="cpu"), wavs)
            == decode.transcribe(decode.load_model(str(out / "model"), device="cpu"), wavs))


def test_export_from_a_base_without_configuration_json_loads(notebook_finetune, tmp_path):
    """A base in funasr's fallback layout (no configuration.json: tokens.json and am.mvn found by name): the
    exported folder has a configuration.json, so it must list them there, or funasr loads it without its
    vocabulary and CMVN."""
    out, _ = notebook_finetune
    base = tmp_path / "base"
    shutil.copytree(DEMO_MODEL, base)
    (base / "configuration.json").unlink()
    folder, metas = _export_from(base, out, tmp_path)
    assert metas["tokenizer_conf"] == {"token_list": "tokens.json"} and metas["frontend_conf"] == {"cmvn_file": "am.mvn"}
    assert _decodes_like(folder, out)


@pytest.mark.parametrize("with_configuration_json", [True, False])
def test_export_copies_a_cmvn_file_the_base_keeps_elsewhere(notebook_finetune, tmp_path, with_configuration_json):
    """A base whose config.yaml names its am.mvn by an absolute path outside the folder (and whose
    configuration.json does not name it): the export drops absolute paths, so it copies the file in and names
    it, or the fine-tuned model would decode without feature normalisation, unsaid."""
    out, _ = notebook_finetune
    base, elsewhere = tmp_path / "base", tmp_path / "elsewhere"
    shutil.copytree(DEMO_MODEL, base)
    elsewhere.mkdir()
    (base / "am.mvn").rename(elsewhere / "am.mvn")
    config = yaml.safe_load((base / "config.yaml").read_text(encoding="utf-8"))
    config.setdefault("frontend_conf", {})["cmvn_file"] = str(elsewhere / "am.mvn")
    (base / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    if with_configuration_json:
        conf = json.loads((base / "configuration.json").read_text())
        conf["file_path_metas"].pop("frontend_conf", None)
        (base / "configuration.json").write_text(json.dumps(conf))
    else:
        (base / "configuration.json").unlink()
    for f in base.iterdir():  # a read-only base (a shared cache) gives no read-only copy
        f.chmod(0o444)
    folder, metas = _export_from(base, out, tmp_path)
    assert (folder / "am.mvn").read_bytes() == (elsewhere / "am.mvn").read_bytes()
    assert all(f.stat().st_mode & 0o200 for f in folder.iterdir())
    assert metas["frontend_conf"] == {"cmvn_file": "am.mvn"} and "token_list" in metas["tokenizer_conf"]
    shutil.rmtree(elsewhere)  # the copy stands alone, and decodes as the export from the intact base
    assert _decodes_like(folder, out)


def test_export_flattens_files_a_base_keeps_in_a_sub_folder(notebook_finetune, tmp_path):
    """A base whose configuration.json names its vocabulary and am.mvn in a sub-folder (assets/tokens.json): the
    export copied only the top level and funasr could not load it after training; a checkpoint assembled for
    evaluation from that base lacked them too."""
    from asr_workbench import modelhub

    out, _ = notebook_finetune
    base = tmp_path / "base"
    shutil.copytree(DEMO_MODEL, base)
    (base / "assets").mkdir()
    for name in ("tokens.json", "am.mvn"):
        (base / name).rename(base / "assets" / name)
    conf = json.loads((base / "configuration.json").read_text())
    conf["file_path_metas"].update(tokenizer_conf={"token_list": "assets/tokens.json"},
                                   frontend_conf={"cmvn_file": "assets/am.mvn"})
    (base / "configuration.json").write_text(json.dumps(conf))
    folder, metas = _export_from(base, out, tmp_path)
    assert metas["tokenizer_conf"] == {"token_list": "tokens.json"} and metas["frontend_conf"] == {"cmvn_file": "am.mvn"}
    assert _decodes_like(folder, out)
    ckpt = json.loads((out / "metrics.json").read_text())["checkpoint"]
    bare = tmp_path / "bare"  # a fine-tune without its model/ (failed at export): the base is the template
    bare.mkdir()
    (bare / "train").symlink_to(out / "train")
    assembled = export.assemble_model(bare, ckpt, modelhub.open_model(str(base)), ["am.mvn", "tokens.json"],
                                      tmp_path / "assembled")
    for name in ("am.mvn", "tokens.json"):  # the sub-folder's files, flattened beside the weights
        assert (assembled / name).read_bytes() == (base / "assets" / name).read_bytes() == (folder / name).read_bytes()


def test_executed_notebook_shows_schedule_curves_and_cer(notebook_finetune):
    _, work = notebook_finetune
    nb = json.loads((work / "out.ipynb").read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "dev CER" in html and "fine-tuned model folder" in html and "Warnings" in html
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # schedule + curves


ALL_PARAMS = dict(dataset_type="small", batch_bins=600, max_epoch=7, accum_grad=3, keep_nbest_models=4, optim="adamw",
                  lr=3e-4, scheduler="warmuplr", scheduler_conf={"warmup_steps": 11}, specaug="SpecAugLFR",
                  specaug_conf={"apply_time_warp": False, "num_freq_mask": 2, "freq_mask_width_range": [0, 10],
                                "lfr_rate": 6, "apply_freq_mask": True, "apply_time_mask": False},
                  precision="bf16", resume=True, early_stopping_patience=2, freeze_param="encoder", seed=7,
                  num_workers=0, max_duration_s=12.5)


def test_every_parameter_reaches_the_resolved_config(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), **ALL_PARAMS)
    c = p.config
    assert (c["dataset_conf"]["batch_type"], c["dataset_conf"]["batch_size"]) == ("token", 600)
    assert c["train_conf"]["max_epoch"] == 7 and c["train_conf"]["accum_grad"] == 3
    assert c["train_conf"]["avg_nbest_model"] == 4 and c["train_conf"]["keep_nbest_models"] >= 4
    assert (c["optim"], c["optim_conf"]["lr"], c["scheduler"], c["scheduler_conf"]) == ("adamw", 3e-4, "warmuplr", {"warmup_steps": 11})
    assert c["specaug"] == "SpecAugLFR" and c["specaug_conf"] == ALL_PARAMS["specaug_conf"]
    assert c["train_conf"]["use_bf16"] is True and c["train_conf"]["use_fp16"] is False
    assert any("precision bf16 has no effect on cpu" in w for w in p.warnings)
    assert c["train_conf"]["resume"] is True and c["train_conf"]["early_stopping_patience"] == 2
    assert (c["freeze_param"], c["seed"], c["dataset_conf"]["num_workers"]) == ("encoder", 7, 0)
    assert c["dataset_conf"]["max_source_length"] == 1250
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train_conf"] == c["train_conf"] and saved["optim_conf"] == c["optim_conf"]
    assert p.config["init_param"] == str(DEMO_MODEL / "model.pt")


def test_settings_funasr_would_ignore_or_crash_on_are_refused_at_plan_time(tmp_path, tiny_data):
    """Each of these passed the plan and then froze nothing, or died in the trainer subprocess."""
    plan = functools.partial(finetune.plan, str(DEMO_MODEL), str(tiny_data), max_epoch=1)
    # funasr splits freeze_param on commas only: " predictor" matched no weight
    assert plan(str(tmp_path / "a"), freeze_param="encoder, predictor").config["freeze_param"] == "encoder,predictor"
    with pytest.raises(ValueError, match=r"freeze_param 'encoders': 'encoders' name\(s\) no weight .* encoder"):
        plan(str(tmp_path / "b"), freeze_param="encoders")
    with pytest.raises(ValueError, match="specaug 'FooAug' is not a funasr SpecAugment class"):
        plan(str(tmp_path / "c"), specaug="FooAug")
    with pytest.raises(ValueError, match="specaug_conf .* does not build SpecAugLFR .* replaces the model's whole one"):
        plan(str(tmp_path / "d"), specaug_conf={"num_time_mask": 2})
    with pytest.raises(ValueError, match="optim 'lbfgs' cannot run under funasr's trainer: its step.. needs a closure"):
        plan(str(tmp_path / "e"), optim="lbfgs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # a refused plan leaves no run folder behind


def test_dev_audio_that_is_also_train_audio_is_warned(tmp_path, tiny_data):
    """Checkpoints are picked and averaged by dev accuracy: a dev set copied from train rewards memorising."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data / "train")
    shutil.copytree(tiny_data / "train", data / "dev")  # the same lists, the same audio files
    p = finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "run"), max_epoch=1)
    assert any(w.startswith("12 of 12 dev utterances are train audio too") for w in p.warnings)
    clean = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "clean"), max_epoch=1)
    assert not any("train audio too" in w for w in clean.warnings)


def test_resume_says_which_changed_settings_it_cannot_apply(tmp_path, tiny_data):
    """funasr restores the optimizer and scheduler state of train/model.pt on resume: a new lr was silently
    ignored while the config and model card claimed it."""
    first = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=1, lr=1e-3)
    (tmp_path / "train").mkdir()  # what funasr's trainer saves beside its checkpoints: the config it ran with
    (tmp_path / "train" / "config.yaml").write_text(yaml.safe_dump(first.config), encoding="utf-8")
    before = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=2, lr=1e-5, resume=True)
    assert not [w for w in before.warnings if "have no effect" in w]  # killed before its first checkpoint: applies
    assert any("holds no checkpoint to continue" in w for w in before.warnings)  # and said: from the base model
    shutil.copyfile(DEMO_MODEL / "model.pt", tmp_path / "train" / "model.pt")  # its last checkpoint
    same = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=2, lr=1e-3, resume=True)
    assert not [w for w in same.warnings if "have no effect" in w]
    changed = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=2, lr=1e-5, resume=True)
    assert [w for w in changed.warnings if "no effect: optim_conf {'lr': 0.001} -> {'lr': 1e-05}" in w]
    # other data: other training data is said; another dev set, which ranks the checkpoints, is refused
    other = tmp_path.parent / f"{tmp_path.name}-data"
    shutil.copytree(tiny_data, other)
    for name in ("wav.scp", "text"):
        lines = (other / "train" / name).read_text(encoding="utf-8").splitlines(True)
        (other / "train" / name).write_text("".join(lines[:-1]), encoding="utf-8")
    moved = finetune.plan(str(DEMO_MODEL), str(other), str(tmp_path), max_epoch=2, lr=1e-3, resume=True)
    assert any("the training data differs from the interrupted run's" in w for w in moved.warnings)
    shutil.copytree(tiny_data / "train", other / "train", dirs_exist_ok=True)
    for name in ("wav.scp", "text"):
        lines = (other / "validation" / name).read_text(encoding="utf-8").splitlines(True)
        (other / "validation" / name).write_text("".join(lines[:-1]), encoding="utf-8")
    listed = (tmp_path / "lists" / "dev.jsonl").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="resume: the dev set differs"):
        finetune.plan(str(DEMO_MODEL), str(other), str(tmp_path), max_epoch=2, lr=1e-3, resume=True)
    # the refusal leaves the interrupted run's lists as its config names them
    assert (tmp_path / "lists" / "dev.jsonl").read_text(encoding="utf-8") == listed
    assert not (tmp_path / "lists.before").exists()
    # a fresh plan refused after reading the data leaves the earlier run's lists as its config names them
    with pytest.raises(ValueError, match="never change the model"):
        finetune.plan(str(DEMO_MODEL), str(other), str(tmp_path), max_epoch=2, accum_grad=1000, resume=True)
    assert (tmp_path / "lists" / "dev.jsonl").read_text(encoding="utf-8") == listed
    # resume set through finetune_overrides is a resume too (the checks saw only the parameter)
    via = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=2, lr=1e-3,
                        finetune_overrides={"train_conf": {"resume": True}})
    assert via.config["train_conf"]["resume"] is True and not any("replaces it" in w for w in via.warnings)


def test_large_dataset_type_counts_milliseconds_and_shards(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), dataset_type="large", batch_bins=20000)
    assert p.config["dataset_conf"]["batch_size"] == 2000  # 20 000 ms = 2 000 frames of 10 ms
    assert p.config["dataset_conf"]["data_split_num"] >= 1
    listing = Path(p.config["train_data_set_list"])
    assert listing.suffix == ".list" and all(Path(x).is_file() for x in listing.read_text().split())


def test_recommended_settings_fill_what_is_left_open(tmp_path, tiny_data, demo_model, monkeypatch):
    """On a CPU the recommendation keeps the model's batch and fp32; values given explicitly win. The
    measuring step (forward + backward on random features, what sizes the batch on a GPU) runs on the model."""
    import torch

    from asr_workbench.finetune import sizing

    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "a"), recommended=True, device="cpu")
    rec = p.recommendation
    ft = yaml.safe_load((DEMO_MODEL / "finetune.yaml").read_text())
    assert rec is not None and rec.device == "cpu" and rec.precision == "fp32"
    assert p.config["dataset_conf"]["batch_size"] == rec.batch_frames == ft["dataset_conf"]["batch_size"]
    assert p.config["dataset_conf"]["num_workers"] == rec.num_workers
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["workbench"]["recommended"] == rec.reasons
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "b"), recommended=True, device="cpu",
                      dataset_type="large", batch_bins=30000, num_workers=0)
    assert p.config["dataset_conf"]["batch_size"] == 3000 and p.config["dataset_conf"]["num_workers"] == 0
    assert rec.batch_bins("large") == 10 * rec.batch_frames
    # loader workers on a CPU: none on 2 cores (they take a core from training), at most 2 on more
    from asr_workbench import processes

    for cores, want in ((2, 0), (3, 2), (8, 2)):
        monkeypatch.setattr(processes, "usable_cores", lambda cores=cores: cores)
        assert sizing.recommend(str(DEMO_MODEL), device="cpu").num_workers == want
    monkeypatch.undo()
    net = demo_model.model.train()
    try:
        seconds = sizing._step(net, 4000, 4, demo_model.kwargs["frontend"].output_size(),
                               len(demo_model.kwargs["token_list"]), torch.device("cpu"), torch.float32)
    finally:
        net.eval()
    assert seconds > 0 and all(q.grad is None for q in net.parameters())


def test_finetune_yaml_then_parameters_then_overrides(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), finetune_overrides={"train_conf": {"grad_clip": 1.5}})
    ft = yaml.safe_load((DEMO_MODEL / "finetune.yaml").read_text())
    assert p.config["optim_conf"]["lr"] == ft["optim_conf"]["lr"]  # finetune.yaml over config.yaml
    assert p.config["train_conf"]["grad_clip"] == 1.5
    with pytest.raises(ValueError, match="unknown option.*train_cfg"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), finetune_overrides={"train_cfg": {}})
    with pytest.raises(ValueError, match="train_conf.max_epoch is set twice"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3,
                      finetune_overrides={"train_conf": {"max_epoch": 5}})
    with pytest.raises(ValueError, match="optim 'adamx' is not a funasr optimizer"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), optim="adamx")
    # funasr's trainer takes any train_conf key and ignores those it does not read: a typo changed nothing
    with pytest.raises(ValueError, match=r"train_conf option\(s\) funasr's trainer does not read: max_epochs \(did "
                                         r"you mean max_epoch\?\)"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), finetune_overrides={"train_conf": {"max_epochs": 1}})
    # keep more checkpoints than are averaged: no conflict with keep_nbest_models; fewer: refused
    kept = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), keep_nbest_models=1,
                         finetune_overrides={"train_conf": {"keep_nbest_models": 5}})
    assert (kept.config["train_conf"]["keep_nbest_models"], kept.config["train_conf"]["avg_nbest_model"]) == (5, 1)
    with pytest.raises(ValueError, match=r"keep_nbest_models 1 is less than the 2 checkpoints averaged"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), keep_nbest_models=2,
                      finetune_overrides={"train_conf": {"keep_nbest_models": 1}})
    with pytest.raises(ValueError, match=r"max_epoch:0 hold a ':' - a YAML mapping needs a space"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path),
                      finetune_overrides=yaml.safe_load("{train_conf:{max_epoch:0}}"))
    # the model's own finetune.yaml is held to the same rules
    base = tmp_path / "base"
    shutil.copytree(DEMO_MODEL, base)
    for bad, match in (({"optimizer": "sgd"}, r"finetune\.yaml: unknown option\(s\) optimizer"),
                       ({"train_conf": {"accum_grad": 0}}, r"train_conf\.accum_grad must be a positive integer, got 0"),
                       ({"dataset_conf": {"batch_size": 0}}, r"dataset_conf\.batch_size must be a positive integer")):
        (base / "finetune.yaml").write_text(yaml.safe_dump({**ft, **bad}))
        with pytest.raises(ValueError, match=match):
            finetune.plan(str(base), str(tiny_data), str(tmp_path / "x"))


def test_long_warmup_is_warned_with_a_fix(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=2, scheduler_conf={"warmup_steps": 30000})
    assert any("warmup_steps=30000" in w and "scheduler_conf" in w for w in p.warnings)
    assert len(p.lr) == p.total_steps and max(p.lr) < 0.01 * (p.config["optim_conf"]["lr"])
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    title = report.lr_schedule_plot(p.lr, p.steps_per_epoch, p.warnings).axes[0].get_title()
    assert f"warm-up {len(p.lr)} of {len(p.lr)} steps, 100%" in title  # what the schedule shows, not a stock phrase
    # a scheduler named without its conf starts from an empty one: its own default warm-up (25000 steps) applies
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "noam"), max_epoch=2, scheduler="noamlr")
    assert any("warmup_steps=25000 (NoamLR's default)" in w for w in p.warnings)
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "one"), max_epoch=1,
                      scheduler_conf={"warmup_steps": 1})
    assert not any("warmup" in w or "peaks at" in w for w in p.warnings)  # one step is no long warm-up


def test_silent_drops_and_unknown_characters_reported(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_duration_s=2.3)
    assert p.train.dropped and all("max_source_length" in d["reason"] for d in p.train.dropped)
    assert any("silently skip" in w for w in p.warnings)
    # what trains (counts, hours, steps) leaves out what funasr skips
    assert p.train.n_utts == len(p.train.dataset.scored) - len(p.train.dropped) > 0
    assert all(u.duration_s <= 2.3 for u in p.train.trained) and max(p.train.frames()) <= 230
    # nothing left to train on: the plan fails, naming a file:line and the limit
    with pytest.raises(datadir.DataError, match=r"skip every utterance of the train split, e\.g\. .*wav\.scp:\d+: "
                                                 r".*max_source_length"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "none"), max_duration_s=1.5)


def test_punctuation_the_vocabulary_lacks_is_left_out_of_training_targets(tmp_path):
    """Transcripts with ，。! : funasr's char tokenizer would train each mark as <unk> (the scoring normaliser drops
    them, so they only teach the model to emit <unk>); they are left out of the jsonl targets and said, with counts."""
    data = tmp_path / "data"
    for split, n in (("train", 6), ("dev", 2)):
        subset(DEMO_DATA / f"target/{split}", data / split, n)
        text = data / split / "text"
        lines = [line.split(" ", 1) for line in text.read_text(encoding="utf-8").splitlines()]
        text.write_text("".join(f"{k} {t[:2]}，{t[2:]}。\n" for k, t in lines), encoding="utf-8")
    p = finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "ft"), max_epoch=1)
    assert p.train.marks == {"，": 6, "。": 6} and p.dev.marks == {"，": 2, "。": 2}
    assert any(w.startswith("16 tags (<NOISE>, [LAUGHTER]: not scored), punctuation marks") and "，(8) 。(8)" in w for w in p.warnings)
    targets = [json.loads(x)["target"] for x in p.train.jsonl.read_text(encoding="utf-8").splitlines()]
    refs = [u.text for u in p.train.dataset.scored]
    assert targets == [r.replace("，", "").replace("。", "") for r in refs] and all("，" in r for r in refs)
    # a mark the vocabulary has stays, and one inside a word that a token holds (a BPE piece 't: the tokenizer
    # takes it with the word); a space where a mark stood between words, or inside a word no token can spell (as
    # scoring reads don't and 3.5: don t, 3 5); spaces go between Chinese characters only (a seg_dict tokenizer
    # looks words up between spaces: 用iphone would be spelled letter by letter)
    assert datadir.training_target("ok,go 今天，好", {"今", "天", "好", ","}) == "ok,go 今天,好"  # ，is , (NFKC)
    assert datadir.training_target("don't stop，今 天。ok", {"今", "天", "don@@", "'t"}) == "don't stop 今天 ok"
    assert datadir.training_target("don't stop at 3.5，今 天", {"今", "天", *"adnopst"}) == "don t stop at 3 5 今天"
    assert datadir.untrainable_marks("don't 3.5", {*"dnot35"}) == ["'", "."]
    assert datadir.training_target("我 用 iphone", {"我", "用"}) == "我用 iphone"
    # corpus annotations are not speech: no <, N, O, I, S, E trained as <unk>
    assert datadir.training_target("<NOISE> 今天 [笑]好", {"今", "天", "好"}) == "今天好"
    # a tag the vocabulary holds (<unk> is in every funasr vocabulary) is not torn into letters; full-width too
    assert datadir.training_target("今天 <unk> ［笑］好", {"今", "天", "好", "<unk>"}) == "今天好"
    assert datadir.untrainable_marks("<NOISE> 今天，[LAUGHTER]", {"今", "天"}) == ["<NOISE>", "，", "[LAUGHTER]"]


def test_audio_the_trainer_would_stop_at_is_found_at_plan_time(tmp_path):
    """funasr's trainer reads each file itself and fails at a FLAC damaged in the middle, mid-epoch (its header
    and last second read well): the plan reads every file through, leaves such ones out of the training list and
    names their lines; on_bad_input=fail stops."""
    data = tmp_path / "data"
    subset(DEMO_DATA / "target/train", data / "train", 6)
    subset(DEMO_DATA / "target/dev", data / "dev", 2)
    wavs = datadir.read_table(data / "train" / "wav.scp")
    flac, nan, loud = damaged_copies(Path(next(iter(wavs.values()))), tmp_path / "bad")
    text = (data / "train" / "text").read_text(encoding="utf-8").splitlines()[0].split(" ", 1)[1]
    with open(data / "train" / "wav.scp", "a") as f:
        f.write(f"flac {flac}\nnan {nan}\nloud {loud}\n")
    with open(data / "train" / "text", "a", encoding="utf-8") as f:
        f.write(f"flac {text}\nnan {text}\nloud {text}\n")
    p = finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "ft"), max_epoch=1)
    listed = [json.loads(x)["key"] for x in p.train.jsonl.read_text(encoding="utf-8").splitlines()]
    assert listed == [*wavs, "loud"] and p.train.n_utts == 7
    issues = {i.key: i for i in p.train.dataset.report.issues}
    assert issues["flac"].code == "undecodable_audio" and issues["flac"].where.endswith("train/wav.scp:7")
    assert issues["nan"].code == "undecodable_audio" and issues["loud"].code == "audio_level"
    assert any(w.startswith("2 audio file(s) cannot be decoded to their end") for w in p.warnings)
    with pytest.raises(datadir.DataError, match=r"2 audio file\(s\) .* cannot be decoded to their end"):
        finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "ft2"), max_epoch=1, on_bad_input="fail")


def test_skips_are_judged_on_the_lengths_funasr_reads():
    """funasr filters on the jsonl's source_len (frames) and target_len (tokens: a Latin word is one): a 19.5 s
    clip with 21 English words (101 characters) fits max_token_length 2048; funasr's other limits apply too."""
    from asr_workbench.finetune.data import funasr_skips

    u = datadir.Utterance("e1", "/x.wav", " ".join(["hello"] * 20) + " a", 19.5, 16000, 1, "wav.scp:1")
    rec = datadir.training_record(u)
    assert (rec["source_len"], rec["target_len"]) == (1950, 21)
    assert funasr_skips(rec, {"max_token_length": 2048}) is None
    assert "max_token_length 1960" in funasr_skips(rec, {"max_token_length": 1960})
    assert "max_target_length" in funasr_skips(rec, {"max_target_length": 20})
    assert "min/max_source_length" in funasr_skips(rec, {"min_source_length": 2000})


def test_behaviour_accum_grad_keep_nbest_specaug_max_epoch(tmp_path, tiny_data):
    """One short real run: the trainer stepped its scheduler once per accum_grad batches, ran max_epoch
    epochs, averaged keep_nbest_models checkpoints, and built the model without SpecAugment."""
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3, accum_grad=2,
                      keep_nbest_models=2, specaug="none", batch_bins=1500, dev_cer="end")
    r = finetune.run(p, live=False)
    train = tmp_path / "train"
    log = (train / "train.log").read_text(encoding="utf-8")
    assert sorted(x.name for x in train.glob("model.pt.ep*")) == ["model.pt.ep1", "model.pt.ep2", "model.pt.ep3"]
    state = torch.load(train / "model.pt", map_location="cpu", weights_only=True)
    batches = int(log.split("batch_num: ")[1].split(",")[0])
    assert batches >= 2
    assert state["scheduler"]["last_epoch"] == 3 * (batches // 2)  # accum_grad=2: one optimizer step per 2 batches
    avg_line = next(x for x in log.splitlines() if x.startswith("average_checkpoints:"))
    assert avg_line.count("model.pt.ep") == 2 and (train / "model.pt.avg2").is_file()
    assert "SpecAugLFR(" not in log and "(specaug)" not in log
    assert r.checkpoint == "model.pt.avg2"


def test_resume_after_kill_finishes_planned_epochs(tmp_path, tiny_data):
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3, keep_nbest_models=2, batch_bins=1500)

    def kill_after_first_epoch(line: str) -> None:
        if "Checkpoint saved to" in line and line.rstrip().endswith("model.pt.ep1"):
            raise KeyboardInterrupt  # what interrupting the notebook kernel does

    with pytest.raises(KeyboardInterrupt):
        training.launch(p.config, tmp_path / "train", on_line=kill_after_first_epoch)
    assert not (tmp_path / "train" / "model.pt.ep3").exists()
    # a fresh run would delete the finished epoch: refused, saying how to continue it
    with pytest.raises(ValueError, match=r"holds an unfinished fine-tune \(1 epoch checkpoint\(s\), model.pt.ep1; .*"
                                         r"set resume: true to continue it"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3, keep_nbest_models=2, batch_bins=1500)
    assert (tmp_path / "train" / "model.pt.ep1").is_file()
    p2 = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3, keep_nbest_models=2,
                       batch_bins=1500, resume=True)
    r = finetune.run(p2, live=False)
    # what the exported average is made of, and that this attempt resumed, are recorded
    assert r.checkpoint == "model.pt.avg2" and len(r.metrics["averaged"]) == 2
    assert all(n.startswith("model.pt.ep") for n in r.metrics["averaged"])
    card = (r.model_dir / "README.md").read_text(encoding="utf-8")
    assert f"the average of {', '.join(r.metrics['averaged'])}" in card and "resumed after epoch 1" in card
    log = (tmp_path / "train" / "train.log").read_text(encoding="utf-8")
    assert log.count("Train epoch: 0, rank: 0") == 1  # the resumed run did not start over
    assert "Train epoch: 2, rank: 0" in log
    assert (tmp_path / "train" / "model.pt.ep3").is_file() and (tmp_path / "train" / "model.pt.avg2").is_file()
    assert r.model_dir.is_dir()
    assert not any("will train nothing" in w for w in p2.warnings)
    # resuming a finished run trains nothing: said at plan time, with the fix
    p3 = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=3, keep_nbest_models=2,
                       batch_bins=1500, resume=True)
    assert any("already holds 3 epoch(s) and max_epoch is 3" in w and "raise max_epoch" in w for w in p3.warnings)
    fresh = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=1, batch_bins=1500)
    assert any("holds a finished fine-tune" in w and "replaces it" in w for w in fresh.warnings)
    # a last checkpoint cut short (killed while funasr saved it in place): named, with the way back
    with open(tmp_path / "train" / "model.pt", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match=r"resume: .*model.pt cannot be read .*copy model.pt.ep3 .* over it"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path), max_epoch=4, batch_bins=1500, resume=True)


def test_torchrun_launch_paths_on_cpu(tmp_path, tiny_data):
    """1-process torchrun always; 2-process gloo DDP (the CPU-safe trainer supports it)."""
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "a"), max_epoch=1, keep_nbest_models=1, batch_bins=1500)
    training.launch(p.config, tmp_path / "a" / "train", torchrun=True)
    assert (tmp_path / "a" / "train" / "model.pt.ep1").is_file()
    p2 = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "b"), max_epoch=1, keep_nbest_models=1,
                       batch_bins=1500, device="cpu", num_gpus=2)
    assert p2.nproc == 2
    training.launch(p2.config, tmp_path / "b" / "train", nproc=2, env={"OMP_NUM_THREADS": "1"})
    log = (tmp_path / "b" / "train" / "train.log").read_text(encoding="utf-8")
    assert "use_ddp: True" in log and "Train epoch: 0, rank: 1" in log
    assert (tmp_path / "b" / "train" / "model.pt.ep1").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_plan_for_a_missing_gpu_fails(tmp_path, tiny_data):
    """funasr's trainer would fall back to the CPU without a word."""
    with pytest.raises(ValueError, match=r"device 'cuda': this machine has 0 CUDA GPU"):
        finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "o"), max_epoch=1, device="cuda")
    assert not (tmp_path / "o").exists()  # refused before any folder is written


def test_make_data_path_from_audio_folder_and_table(tmp_path):
    src = DEMO_DATA / "target/dev"
    audio = tmp_path / "audio"
    shutil.copytree(src / "audio", audio)
    out, n_train, n_dev = finetune.make_data_path(audio, src / "text", tmp_path / "data", dev_fraction=0.2, seed=3)
    assert n_dev == round(0.2 * (n_train + n_dev)) and (out / "train/wav.scp").is_file()
    again = finetune.make_data_path(audio, src / "text", tmp_path / "data2", dev_fraction=0.2, seed=3)
    assert (out / "dev/text").read_text() == (again[0] / "dev/text").read_text()  # seeded
    keys = {part: [line.split()[0] for line in (out / part / "wav.scp").read_text().splitlines()] for part in ("train", "dev")}
    assert (len(keys["train"]), len(keys["dev"])) == (n_train, n_dev) and not set(keys["train"]) & set(keys["dev"])
    assert set(keys["train"]) | set(keys["dev"]) == set(datadir.read_table(src / "text"))


def test_plans_that_would_waste_the_run_fail_before_training(tmp_path, tiny_data):
    """What funasr's trainer would do silently or only after an epoch fails (or is warned) at plan time: an
    accum_grad that never steps (it clears gradients at each epoch), a batch shorter than the shortest utterance
    (an empty batch: 'missing 4 required positional arguments'), a checkpoint the run will not write, nested
    numbers YAML 1.1 reads as strings, data_split_num with small data, schedulers funasr's trainer cannot step."""
    plan = lambda name, **kw: finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / name), max_epoch=2, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"accum_grad 8 with about 1 batch\(es\) per epoch.*never change the model"):
        plan("a", accum_grad=8, batch_bins=4000)
    p = plan("b", accum_grad=2, batch_bins=1000)  # 12 utterances, ~3 a batch: 4 batches... or an odd number
    batches = fconfig.planned_batches(p.train.frames(), 1000)
    assert p.steps_per_epoch == batches // 2
    assert any("computed but never applied" in w for w in p.warnings) == bool(batches % 2)
    with pytest.raises(ValueError, match=r"batch_bins 150 \(frames\) makes batches of 150 frames, shorter than the "
                                         r"shortest train utterance \(\S+, \S+wav.scp:\d+: \d+ frames"):
        plan("c", batch_bins=150)
    with pytest.raises(ValueError, match=r"batch_bins 1500 \(ms of audio\) makes batches of 150 frames"):
        plan("c2", batch_bins=1500, dataset_type="large")
    with pytest.raises(ValueError, match="writes model.pt.avg2"):
        plan("d", keep_nbest_models=2, checkpoint="model.pt.avg3")
    with pytest.raises(ValueError, match="only 2 epoch"):
        plan("e", checkpoint="model.pt.ep5")
    with pytest.raises(ValueError, match="checkpoint must be auto"):
        plan("f", checkpoint="best")
    assert any("averages at most 2" in w for w in plan("g", keep_nbest_models=5).warnings)
    p = plan("h", finetune_overrides={"optim_conf": {"lr": "1e-4"}, "scheduler_conf": {"warmup_steps": "3e3"}})
    assert p.config["optim_conf"]["lr"] == 1e-4 and p.config["scheduler_conf"]["warmup_steps"] == 3000
    with pytest.raises(ValueError, match="data_split_num is for dataset_type: large"):
        plan("i", finetune_overrides={"dataset_conf": {"data_split_num": 3}})
    with pytest.raises(ValueError, match="ReduceLROnPlateau.*cannot run under funasr's trainer"):
        plan("j", scheduler="ReduceLROnPlateau")
    # what is right stays allowed: step checkpoints, utterance-count batches, a model's own shard count with small
    # data (reset to one list), an explicit shard count with large
    assert plan("k", checkpoint="model.pt.ep2.100").checkpoint == "model.pt.ep2.100"
    p = plan("l", finetune_overrides={"dataset_conf": {"batch_type": "example", "batch_size": 4}})
    assert p.steps_per_epoch == 3  # 12 utterances, 4 a batch
    base = tmp_path / "sensevoice-like"
    shutil.copytree(DEMO_MODEL, base)
    (base / "finetune.yaml").write_text(yaml.safe_dump({**yaml.safe_load((base / "finetune.yaml").read_text()),
                                                         "dataset_conf": {"data_split_num": 32}}))
    assert finetune.plan(str(base), str(tiny_data), str(tmp_path / "m"), max_epoch=1).config["dataset_conf"]["data_split_num"] == 1
    p = plan("n", dataset_type="large", batch_bins=20000, finetune_overrides={"dataset_conf": {"data_split_num": 2}})
    assert p.config["dataset_conf"]["data_split_num"] == 2
    # optimizer and scheduler settings are built before training: a typo or a missing key is named with the keys
    # the class takes (funasr's trainer raised a bare TypeError after start-up)
    with pytest.raises(ValueError, match=r"scheduler_conf \{'warmup_step': 5\} does not fit scheduler 'warmuplr' "
                                         r".*it takes warmup_steps"):
        plan("p", scheduler_conf={"warmup_step": 5})
    with pytest.raises(ValueError, match=r"CosineAnnealingLR.*missing 1 required positional argument: 'T_max'"):
        plan("q", scheduler="CosineAnnealingLR")
    with pytest.raises(ValueError, match=r"optim_conf .*'lrr': 1.* does not fit optim 'adam'"):
        plan("r", finetune_overrides={"optim_conf": {"lrr": 1}})


def test_bases_funasr_would_retrain_in_part_or_fail_on_are_refused(tmp_path, tiny_data):
    """A tokens file longer than the weights' vocabulary (funasr re-initialises the embedding and output layers
    and logs it only in train.log) and hotword models (their forward() needs lists funasr's dataset does not
    make) fail at plan time, naming the file."""
    vocab = tmp_path / "vocab"
    shutil.copytree(DEMO_MODEL, vocab)
    tokens = json.loads((vocab / "tokens.json").read_text(encoding="utf-8"))
    (vocab / "tokens.json").write_text(json.dumps(tokens[:-1] + ["甲", "乙", "丙", tokens[-1]], ensure_ascii=False),
                                       encoding="utf-8")
    with pytest.raises(ValueError, match=rf"the tokens file lists {len(tokens) + 3} tokens, but model.pt's "
                                         rf"decoder.output_layer.weight has {len(tokens)} rows"):
        finetune.plan(str(vocab), str(tiny_data), str(tmp_path / "a"), max_epoch=1)
    seaco = tmp_path / "seaco"
    shutil.copytree(DEMO_MODEL, seaco)
    config = yaml.safe_load((seaco / "config.yaml").read_text(encoding="utf-8"))
    (seaco / "config.yaml").write_text(yaml.safe_dump({**config, "model": "SeacoParaformer"}), encoding="utf-8")
    with pytest.raises(ValueError, match="model SeacoParaformer needs hotword lists"):
        finetune.plan(str(seaco), str(tiny_data), str(tmp_path / "b"), max_epoch=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written
    # a model that batches by utterance count: its batch_size (16) is not read as 16 frames, unsaid
    example = tmp_path / "example"
    shutil.copytree(DEMO_MODEL, example)
    (example / "finetune.yaml").unlink()
    config = yaml.safe_load((example / "config.yaml").read_text(encoding="utf-8"))
    config["dataset_conf"] = {**config.get("dataset_conf", {}), "batch_type": "example", "batch_size": 16}
    (example / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"batches by 'example' \(batch_size 16\), the workbench by frames"):
        finetune.plan(str(example), str(tiny_data), str(tmp_path / "c"), max_epoch=1)
    assert finetune.plan(str(example), str(tiny_data), str(tmp_path / "d"), max_epoch=1,
                         batch_bins=4000).config["dataset_conf"]["batch_size"] == 4000


def test_a_fine_tune_never_replaces_its_own_base(tmp_path, tiny_data):
    """Continuing a fine-tune from its exported model into the same output_dir would delete the base (model/ is
    replaced by a fresh run): refused at plan time."""
    out = tmp_path / "ft"
    shutil.copytree(DEMO_MODEL, out / "model")
    with pytest.raises(ValueError, match="which a fine-tune into .* replaces"):
        finetune.plan(str(out / "model"), str(tiny_data), str(out), max_epoch=1)
    assert (out / "model" / "model.pt").is_file()
    # nor its data: output_dir = data_path would remove data_path/train (its audio and transcripts) before training
    for output_dir in (tiny_data, tiny_data / "validation" / ".."):
        with pytest.raises(ValueError, match="the train split .* which a fine-tune into .* replaces"):
            finetune.plan(str(DEMO_MODEL), str(tiny_data), str(output_dir), max_epoch=1)
    assert (tiny_data / "train" / "wav.scp").is_file() and not (tiny_data / ".asr_workbench_run").exists()


def test_a_failed_rerun_leaves_no_earlier_model_beside_its_config(tmp_path, tiny_data):
    """A fresh run into a used output_dir removes the earlier run's model/ and metrics.json before training: if it
    fails, nothing is left that an evaluation would take for this run's model."""
    out = tmp_path / "ft"
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(out), max_epoch=1, keep_nbest_models=1, batch_bins=1500)
    shutil.copytree(DEMO_MODEL, out / "model")  # what the earlier run exported
    (out / "metrics.json").write_text('{"cer": 0.01}')
    p.config["train_data_set_list"] = str(tmp_path / "no-such-list.jsonl")  # this run fails in funasr's trainer
    with pytest.raises(RuntimeError, match="training failed"):
        finetune.run(p, live=False)
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_trainer_dies_with_the_process_that_launched_it(tmp_path):
    """A killed kernel or a cancelled job (SIGKILL: no cleanup runs) must not leave funasr's trainer running."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text("import sys, time\nfrom asr_workbench.training import popen_tied\n"
                      "p = popen_tied([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                      "print(p.pid, flush=True)\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    def alive() -> bool:  # a zombie (exited, not yet reaped by whoever adopted it) is not alive
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    for _ in range(100):
        if not alive():
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


def test_a_transcript_file_read_through_a_conversion_is_a_plan_warning(tmp_path, tiny_data):
    """A GBK train text was read right but said only in the data report: the plan's warnings name it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    text = data / "train" / "text"
    text.write_bytes(text.read_text(encoding="utf-8").encode("gbk"))
    p = finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "ft"), max_epoch=1)
    assert any("transcript file problem(s) were read around" in w and "GBK-encoded" in w for w in p.warnings)
    targets = [json.loads(x)["target"] for x in p.train.jsonl.read_text(encoding="utf-8").splitlines()]
    assert targets == [datadir.training_target(u.text, p.base.tokens) for u in p.train.dataset.scored]
    assert all(u.text and not u.oov for u in p.train.dataset.scored)  # read as GBK: the vocabulary's characters


def test_data_path_of_funasr_jsonl_lists(tmp_path, tiny_data):
    """FunASR 1.x users keep train.jsonl / val.jsonl (key, source, target): a data_path of those fine-tunes too."""
    data = tmp_path / "jsonl-data"
    data.mkdir()
    datadir.write_jsonl_from_dir(tiny_data / "train", data / "train.jsonl")
    datadir.write_jsonl_from_dir(tiny_data / "validation", data / "val.jsonl")
    p = finetune.plan(str(DEMO_MODEL), str(data), str(tmp_path / "ft"), max_epoch=1)
    assert (p.train.folder, p.dev.folder) == (data / "train.jsonl", data / "val.jsonl")
    assert (p.train.n_utts, p.dev.n_utts) == (12, 4)
    with pytest.raises(FileNotFoundError, match=r"no train/wav.scp, nor train.jsonl"):
        finetune.plan(str(DEMO_MODEL), str(tmp_path / "ft"), str(tmp_path / "ft2"), max_epoch=1)


def test_data_from_an_audio_folder_names_what_it_cannot_pair(tmp_path, capsys):
    """audio_dir + transcripts: two files with one transcript's name are refused, naming both (the last one found
    was taken: a transcript trained on another speaker's clip); every audio format the data check reads is taken
    (.sph, .aiff were left out unsaid); transcript ids without audio are printed and are a plan warning."""
    src = DEMO_DATA / "target/dev"
    wavs = datadir.read_table(src / "wav.scp")
    texts = datadir.read_table(src / "text")
    keys = sorted(wavs)[:6]
    audio = tmp_path / "audio"
    (audio / "spk1").mkdir(parents=True)
    for k in keys[:4]:
        shutil.copy(src / wavs[k], audio / "spk1" / (k + Path(wavs[k]).suffix))
    x, sr = sf.read(str(src / wavs[keys[4]]))
    sf.write(str(audio / "spk1" / f"{keys[4]}.aiff"), x, sr, format="AIFF")
    sf.write(str(audio / "spk1" / f"{keys[5]}.sph"), x, sr, format="NIST", subtype="PCM_16")
    table = tmp_path / "transcripts.txt"
    table.write_text("".join(f"{k} {texts[k]}\n" for k in keys) + "ghost 没有声音\n", encoding="utf-8")
    built = finetune.data_path_from(str(audio), str(table), str(tmp_path / "data"), 0.2, 0)
    said = capsys.readouterr().out
    assert "5 train / 1 dev" in said and "1 id(s) of" in said and "(ghost: all in" in said
    paired = {**datadir.read_table(Path(built) / "train/wav.scp"), **datadir.read_table(Path(built) / "dev/wav.scp")}
    assert set(paired) == set(keys)
    p = finetune.plan(str(DEMO_MODEL), built, str(tmp_path / "ft"), max_epoch=1)
    assert any(w.startswith("1 transcript id(s) have no audio file") and "ghost" in w for w in p.warnings)
    (audio / "spk2").mkdir()
    shutil.copy(audio / "spk1" / f"{keys[0]}{Path(wavs[keys[0]]).suffix}", audio / "spk2" / f"{keys[0]}.flac")
    with pytest.raises(datadir.DataError, match=rf"1 id\(s\) of .* name several audio files .*{keys[0]}: .*spk1.*, .*spk2"):
        finetune.data_path_from(str(audio), str(table), str(tmp_path / "data"), 0.2, 0)


def test_a_diverged_training_is_named_and_a_worse_export_is_said(tmp_path, tiny_data):
    """Training that blows up failed with funasr's IndexError or 'Dimension size must be non-negative' from
    inside the CIF predictor, nothing saying the weights went non-finite; one that ends worse than the base on
    dev exported it without a word."""
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "a"), max_epoch=1, lr=1e30, batch_bins=1500,
                      scheduler_conf={"warmup_steps": 1}, finetune_overrides={"train_conf": {"grad_clip": 1e38}})
    with pytest.raises(RuntimeError, match=r"training failed \(exit 1\): training diverged .*lower lr"):
        finetune.run(p, live=False)
    p = finetune.plan(str(DEMO_MODEL), str(tiny_data), str(tmp_path / "b"), max_epoch=1, keep_nbest_models=1,
                      lr=1e5, batch_bins=1500, scheduler_conf={"warmup_steps": 1})
    r = finetune.run(p, live=False)
    assert r.dev_cer[r.checkpoint] > r.dev_cer["base"]
    assert any(w.startswith(f"the exported {r.checkpoint} is worse on dev than the base model") for w in r.metrics["warnings"])
    # said where it is read: the notebook shows result.warnings after training, the model card lists them
    assert any("worse on dev than the base" in w for w in r.warnings) and not set(r.warnings) & set(p.warnings)
    card = (r.model_dir / "README.md").read_text(encoding="utf-8")
    assert "## Warnings" in card and "worse on dev than the base" in card and f"{r.checkpoint} (exported)" in card



def test_the_divergence_diagnosis_is_not_given_for_other_failures(tmp_path):
    """A frame in funasr's CIF predictor is not divergence by itself: out of memory there, or the model registry
    table every log starts with, get no 'diverged' diagnosis."""
    log = tmp_path / "train.log"
    frame = '  File "/x/funasr/models/paraformer/cif_predictor.py", line 309, in forward\n    y = f(x)\n'
    for text, diverged in ((frame + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate\n", False),
                           ("| CifPredictorV2 | funasr/models/paraformer/cif_predictor.py:208 |\nValueError: x\n", False),
                           (frame + "IndexError: index 63 is out of bounds for dimension 0\n", True),
                           ("(loss_avg_slice: nan), (ppl_avg_slice: nan)\n", True)):
        log.write_text(text, encoding="utf-8")
        assert ("diverged" in training._diagnosis(log)) == diverged, text
