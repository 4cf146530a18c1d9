"""Model folders: local folders, the ModelScope cache (no network), clear errors."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from asr_workbench import modelhub
from conftest import DEMO_MODEL

MODEL_ID = "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """Any hub request goes to a closed port on this machine: fails at once, reaches nobody. modelscope 1.40
    reads MODELSCOPE_ENDPOINT in its new client (MODELSCOPE_DOMAIN there is deprecated) and MODELSCOPE_DOMAIN
    in its older helpers: both point at the port; the new client's cached configuration (read once per
    process) is dropped so it reads them."""
    from modelscope_hub import config

    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:9")
    monkeypatch.setattr(config, "_default_config", None)


def test_local_folder_is_checked_and_read():
    mf = modelhub.open_model(str(DEMO_MODEL))
    assert mf.source == "folder" and mf.tokens[:3] == ["<blank>", "<s>", "</s>"]
    assert mf.decoding["batch_size"] == 16 and "optim_conf" in mf.finetune


def test_relative_folder_resolves_against_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert modelhub.open_model("demo/model").path == DEMO_MODEL


@pytest.mark.parametrize("layout", ["models/{owner}--{name}/snapshots/master", "{owner}/{name}"])
def test_modelscope_cache_is_used_without_network(tmp_path, layout):
    owner, name = MODEL_ID.split("/")
    target = tmp_path / layout.format(owner=owner, name=name)
    shutil.copytree(DEMO_MODEL, target)
    t = time.time()
    mf = modelhub.open_model(MODEL_ID, cache_dir=str(tmp_path))
    assert time.time() - t < 20  # no download attempt, no retries
    assert mf.path.resolve() == target.resolve() and mf.source == "modelscope-cache" and mf.model_id == MODEL_ID


def test_modelscope_cache_env_variable(tmp_path, monkeypatch):
    owner, name = MODEL_ID.split("/")
    shutil.copytree(DEMO_MODEL, tmp_path / "models" / f"{owner}--{name}" / "snapshots" / "master")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    assert modelhub.open_model(MODEL_ID).source == "modelscope-cache"



def test_cache_folders_named_models_and_cached_revisions(tmp_path, monkeypatch):
    """A cache root that is itself named models (MODELSCOPE_CACHE=/data/models: modelscope puts the model in
    /data/models/models/...) and the models folder inside a cache both work; several cached revisions and no
    master: the message lists them and says to set model_revision, which picks one; a relative MODELSCOPE_CACHE
    is where modelscope reads it, from the working directory."""
    owner, name = MODEL_ID.split("/")
    snapshots = tmp_path / "data" / "models" / "models" / f"{owner}--{name}" / "snapshots"
    shutil.copytree(DEMO_MODEL, snapshots / "master")
    for given in (tmp_path / "data" / "models", tmp_path / "data" / "models" / "models"):
        assert modelhub.open_model(MODEL_ID, cache_dir=str(given)).path == snapshots / "master"
    (snapshots / "master").rename(snapshots / "v2.0.4")
    shutil.copytree(snapshots / "v2.0.4", snapshots / "v2.0.5")
    with pytest.raises(modelhub.ModelError, match=r"in several revisions .*v2\.0\.4, v2\.0\.5.*; set model_revision"):
        modelhub.open_model(MODEL_ID, cache_dir=str(tmp_path / "data" / "models"))
    assert modelhub.open_model(MODEL_ID, cache_dir=str(tmp_path / "data" / "models"),
                               revision="v2.0.5").path == snapshots / "v2.0.5"
    from asr_workbench import infer
    from conftest import DEMO_DATA, subset

    run = infer.run(model=MODEL_ID, data_dir=str(subset(DEMO_DATA / "base/test", tmp_path / "d", 1)),
                    output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "data" / "models"),
                    model_revision="v2.0.5", device="cpu", progress=False)
    assert run.config["model_dir"] == str(snapshots / "v2.0.5") and run.config["model_revision"] == "v2.0.5"
    with pytest.raises(modelhub.ModelError, match=r"at revision 'v9' is not in the ModelScope cache .* The cache has "
                                                  r"it in other revisions \(.*v2\.0\.4, v2\.0\.5"):
        modelhub.open_model(MODEL_ID, cache_dir=str(tmp_path / "data" / "models"), revision="v9")
    monkeypatch.chdir(tmp_path / "data")
    monkeypatch.setenv("MODELSCOPE_CACHE", "models")
    assert modelhub.open_model(MODEL_ID, revision="v2.0.4").path == snapshots / "v2.0.4"


def test_unknown_id_offline_fails_fast_with_clear_message(tmp_path):
    t = time.time()
    with pytest.raises(modelhub.ModelError, match=r"not in the ModelScope cache .* could not be downloaded .*"
                                                  r"and there is no folder .*iic/no-such-model \(relative paths"):
        modelhub.open_model("iic/no-such-model", cache_dir=str(tmp_path))
    assert time.time() - t < 10  # the hub is probed once, not retried with back-off
    with pytest.MonkeyPatch.context() as mp:  # behind a proxy that cannot be reached: modelscope retried for 26 s
        mp.setenv("HTTP_PROXY", "http://127.0.0.1:7")  # the one requests takes for the (http) test endpoint
        mp.setenv("HTTPS_PROXY", "http://127.0.0.1:8")  # not for an http endpoint
        t = time.time()
        with pytest.raises(modelhub.ModelError, match=r"the proxy 127\.0\.0\.1:7 cannot be reached"):
            modelhub.open_model("iic/no-such-model", cache_dir=str(tmp_path))
        assert time.time() - t < 10 and not (tmp_path / "models" / "iic--no-such-model").exists()
    # the old owner name of a cached model (ModelScope moved damo/ to iic/): the cached id is named
    shutil.copytree(DEMO_MODEL, tmp_path / "iic" / "demo_paraformer")
    with pytest.raises(modelhub.ModelError, match=r"The cache holds iic/demo_paraformer: the same model under another "
                                                  r"owner"):
        modelhub.open_model("damo/demo_paraformer", cache_dir=str(tmp_path))


def test_vad_model_short_name_resolves_through_the_cache(tmp_path):
    """funasr's short name fsmn-vad is its ModelScope id: found in the cache without the network, and offline
    without it a clear error names the id and the cache at once (funasr itself ends in "not registered")."""
    target = tmp_path / "models" / "iic--speech_fsmn_vad_zh-cn-16k-common-pytorch" / "snapshots" / "master"
    shutil.copytree(DEMO_MODEL, target)  # any folder: the lookup is what is tested, not the VAD model
    assert modelhub.resolve_helper_model("fsmn-vad", cache_dir=str(tmp_path)).path.resolve() == target.resolve()
    t = time.time()
    with pytest.raises(modelhub.ModelError, match=r"vad_model fsmn-vad \(iic/speech_fsmn_vad_zh-cn-16k-common-pytorch\)"
                                                  r": .*'iic/speech_fsmn_vad_zh-cn-16k-common-pytorch' is not in the "
                                                  r"ModelScope cache"):
        modelhub.resolve_helper_model("fsmn-vad", cache_dir=str(tmp_path / "empty"))
    assert time.time() - t < 10


def test_fallback_layout_without_am_mvn_is_warned(tmp_path):
    """No configuration.json and no am.mvn: funasr decodes without CMVN, silently; the workbench says so."""
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "configuration.json").unlink()
    assert modelhub.open_model(str(folder)).warnings == ()
    (folder / "am.mvn").unlink()
    assert any(w.startswith("am.mvn") and "normalised" in w for w in modelhub.open_model(str(folder)).warnings)


def test_configuration_json_naming_no_cmvn_is_warned(tmp_path):
    """A configuration.json whose file_path_metas name no cmvn_file (and a config.yaml without one): funasr
    decodes without CMVN (CER 12 % instead of 2 % on the demo), silently; the workbench says so."""
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    conf = json.loads((folder / "configuration.json").read_text())
    conf["file_path_metas"].pop("frontend_conf")
    (folder / "configuration.json").write_text(json.dumps(conf))
    (folder / "am.mvn").unlink()
    assert any(w.startswith("a cmvn_file") and "not be mean/variance normalised" in w
               for w in modelhub.open_model(str(folder)).warnings)
    # config.yaml names one the metas do not: funasr opens it as written, from the working directory (the model
    # failed to load after the data was read; with an am.mvn there, it took that one)
    shutil.copy(DEMO_MODEL / "am.mvn", folder / "am.mvn")
    cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    cfg["frontend_conf"]["cmvn_file"] = "am.mvn"
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(modelhub.ModelError, match=r"frontend_conf.cmvn_file 'am.mvn' is not there as funasr reads it "
                                                  r".*add it there \("):
        modelhub.open_model(str(folder))
    cfg["frontend_conf"]["cmvn_file"] = str(folder / "am.mvn")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert not any("cmvn" in w for w in modelhub.open_model(str(folder)).warnings)


def test_not_a_folder_nor_an_id():
    with pytest.raises(modelhub.ModelError, match="no such folder .* not a ModelScope id"):
        modelhub.open_model("no_such_folder_or_id")


def test_missing_tokens_file_is_named(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "tokens.json").unlink()
    with pytest.raises(modelhub.ModelError, match=r"lacks: tokens.json \(configuration.json tokenizer_conf.token_list\)"):
        modelhub.open_model(str(folder))


def test_folder_without_configuration_json_uses_funasr_fallback(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "configuration.json").unlink()
    assert modelhub.open_model(str(folder)).tokens[-1] == "<unk>"
    (folder / "model.pt").rename(folder / "model.pb")  # FunASR 0.x's name: said, with what loads it
    with pytest.raises(modelhub.ModelError, match=r"lacks: model.pt \(model.pb is there: .* configuration.json names "
                                                  r"it as init_param\)"):
        modelhub.open_model(str(folder))
    # a sentencepiece model (SenseVoice, English Paraformer) needs its bpe.model, not tokens.json (funasr's fallback)
    (folder / "model.pb").rename(folder / "model.pt")
    (folder / "tokens.json").unlink()
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "tokenizer": "SentencepiecesTokenizer"}))
    with pytest.raises(modelhub.ModelError, match=r"lacks: bpe.model \(its SentencepiecesTokenizer's model\)"):
        modelhub.open_model(str(folder))
    (folder / "bpe.model").write_bytes(b"")
    assert modelhub.open_model(str(folder)).path == folder


def test_bad_configuration_json(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "configuration.json").write_text("{not json")
    with pytest.raises(modelhub.ModelError, match="configuration.json: not valid JSON"):
        modelhub.open_model(str(folder))
    json.loads((DEMO_MODEL / "configuration.json").read_text())  # the shipped one is untouched


@pytest.mark.parametrize("drop", ["config", "init_param"])
def test_configuration_json_without_config_or_weights_entry_is_named(tmp_path, drop):
    """With a configuration.json funasr finds config.yaml and the weights only through file_path_metas: without
    "config" it fails with "... is not registered", without "init_param" it decodes with random weights."""
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    conf = json.loads((folder / "configuration.json").read_text())
    del conf["file_path_metas"][drop]
    (folder / "configuration.json").write_text(json.dumps(conf))
    with pytest.raises(modelhub.ModelError, match=rf"configuration.json: file_path_metas lacks '{drop}'"):
        modelhub.open_model(str(folder))
    if drop == "config":  # the rule is funasr's: its own loader cannot build this folder
        from funasr.download.download_model_from_hub import download_model

        assert download_model(model=str(folder))["model"] == str(folder)  # not a model class: "not registered"


def test_weights_under_another_name_are_the_ones_hashed(tmp_path):
    """configuration.json's init_param names the weights (model.pb in older exports): provenance and the resume
    fingerprint hash that file, not a model.pt that is not there."""
    from asr_workbench import runs

    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "model.pt").rename(folder / "model.pb")
    conf = json.loads((folder / "configuration.json").read_text())
    conf["file_path_metas"]["init_param"] = "model.pb"
    (folder / "configuration.json").write_text(json.dumps(conf))
    mf = modelhub.open_model(str(folder))
    assert mf.weights == folder / "model.pb"
    assert runs.provenance(mf.weights)["model_sha256"] == runs.file_sha256(DEMO_MODEL / "model.pt")
    assert modelhub.open_model(str(DEMO_MODEL)).weights == DEMO_MODEL / "model.pt"


def test_a_file_is_hashed_once_until_it_changes(tmp_path):
    """Weights hashed again in one process (an evaluation: per set and for its checks) are not read again unless
    the file changed; a changed file (new content, new time) is hashed anew."""
    import hashlib
    import os

    from asr_workbench import runs

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = runs.file_sha256(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time, same inode: taken as unchanged
    assert runs.file_sha256(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert runs.file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_folder_without_configuration_json_decodes_its_own_model_pt(tmp_path):
    """funasr takes an existing init_param that config.yaml names (a trainer's config copied beside a checkpoint
    names the base model's weights) over the folder's model.pt: the workbench loads model.pt and says so."""
    import torch

    from asr_workbench import decode, infer
    from conftest import DEMO_DATA, subset

    other = tmp_path / "zeros.pt"
    torch.save({k: torch.zeros_like(v) for k, v in modelhub.load_weights(DEMO_MODEL / "model.pt").items()}, other)
    folder = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "configuration.json").unlink()
    cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    (folder / "config.yaml").write_text(yaml.safe_dump({**cfg, "init_param": str(other)}, allow_unicode=True),
                                        encoding="utf-8")
    mf = modelhub.open_model(str(folder))
    assert mf.weights == folder / "model.pt" and any(f"init_param {other}" in w for w in mf.warnings)
    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 3)
    own, demo = (infer.run(model=str(m), data_dir=str(data), output_dir=str(tmp_path / n), device="cpu", progress=False)
                 for m, n in ((folder, "own"), (DEMO_MODEL, "demo")))
    assert [r["hyp"] for r in own.results] == [r["hyp"] for r in demo.results] and all(r["hyp"] for r in own.results)
    assert any("init_param" in n for n in own.metrics["notes"])
    assert decode.load_model(str(folder)).kwargs["init_param"] == str(folder / "model.pt")


def test_half_downloaded_models_say_so(tmp_path):
    """A download killed early (only configuration.json, a *.incomplete file) or an empty model.pt: the message
    says what it looks like and what to do, before any data is read (an empty model.pt failed after it, with
    'EOFError: ')."""
    owner, name = MODEL_ID.split("/")
    snap = tmp_path / "models" / f"{owner}--{name}" / "snapshots" / "master"
    snap.mkdir(parents=True)
    shutil.copy(DEMO_MODEL / "configuration.json", snap)
    with pytest.raises(modelhub.ModelError, match=r"no config.yaml: not a funasr model folder \(an interrupted "
                                                  r"download\? delete it and download it again\)"):
        modelhub.open_model(MODEL_ID, cache_dir=str(tmp_path))
    folder = tmp_path / "copy"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "model.pt").rename(folder / "model.pt.incomplete")
    with pytest.raises(modelhub.ModelError, match=r"lacks: model.pt.*model.pt.incomplete is there"):
        modelhub.open_model(str(folder))
    (folder / "model.pt").write_bytes(b"")
    with pytest.raises(modelhub.ModelError, match=r"its weights model.pt are an empty file"):
        modelhub.open_model(str(folder))
