"""The shipped demo: a ModelScope-style model folder funasr loads offline, data, and its CER figures."""

from __future__ import annotations

import json
import re

import pytest
import soundfile as sf
import torch
import yaml

from asr_workbench import datadir, decode
from asr_workbench.scoring import NORMALISER, corpus_cer
from conftest import DEMO, DEMO_DATA, DEMO_MODEL

MODEL_FILES = ["config.yaml", "model.pt", "tokens.json", "am.mvn", "configuration.json",
               "decoding.yaml", "finetune.yaml", "README.md"]
TEST_SETS = ["base/test", "target/test", "target/dev", "target/train"]
TOLERANCE = 0.01  # decoding the same audio with the same weights may differ by a character or two


def test_model_folder_layout():
    for name in MODEL_FILES:
        assert (DEMO_MODEL / name).is_file(), name
    metas = json.loads((DEMO_MODEL / "configuration.json").read_text())["file_path_metas"]
    assert metas == {"init_param": "model.pt", "config": "config.yaml",
                     "tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}}
    cfg = yaml.safe_load((DEMO_MODEL / "config.yaml").read_text())
    assert (cfg["model"], cfg["encoder"], cfg["decoder"], cfg["predictor"], cfg["specaug"]) == (
        "Paraformer", "SANMEncoder", "ParaformerSANMDecoder", "CifPredictorV2", "SpecAugLFR")
    assert (cfg["frontend_conf"]["lfr_m"], cfg["frontend_conf"]["lfr_n"]) == (7, 6)
    assert cfg["tokenizer"] == "CharTokenizer"


def test_model_is_weights_only_and_small():
    state = torch.load(DEMO_MODEL / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    n = sum(v.numel() for v in state.values() if v.is_floating_point())
    assert 1.0e6 < n < 4.0e6
    total = sum(p.stat().st_size for p in DEMO_MODEL.iterdir())
    assert total <= 10 * 1024 * 1024


def test_tokens_json_has_special_tokens_and_card_lists_vocab():
    tokens = json.loads((DEMO_MODEL / "tokens.json").read_text(encoding="utf-8"))
    assert tokens[:3] == ["<blank>", "<s>", "</s>"] and tokens[-1] == "<unk>"
    card = (DEMO_MODEL / "README.md").read_text(encoding="utf-8")
    assert "".join(tokens[3:-1]) in card
    assert "eSpeak NG" in card and "<unk>" in card and "python -m asr_workbench.demo.build" in card


def test_no_absolute_or_build_machine_paths():
    pattern = re.compile(r"(^|[\s\"'=:])/(work|tmp|root|home|usr|opt)/|[A-Za-z]:\\\\")
    for path in DEMO.rglob("*"):
        if path.suffix in {".yaml", ".json", ".scp", ".md", ".mvn"} or path.name in {"text", "wav.scp"}:
            text = path.read_text(encoding="utf-8")
            assert not pattern.search(text), f"{path} holds an absolute path"
    for scp in DEMO_DATA.rglob("wav.scp"):
        for key, rel in datadir.read_table(scp).items():
            assert not rel.startswith("/") and (scp.parent / rel).is_file(), f"{scp}: {key}"


def test_shipped_audio_budget_and_format():
    audio = [p for p in DEMO_DATA.rglob("*") if p.suffix in {".flac", ".wav"}]
    assert len(audio) >= 100 and sum(p.stat().st_size for p in audio) <= 15 * 1024 * 1024
    for p in audio[::25]:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), p


def _card_cer(name: str) -> float:
    report = json.loads((DEMO / "build_report.json").read_text(encoding="utf-8"))
    return report["cer"][name]


def _decode_cer(model, name: str) -> float:
    d = DEMO_DATA / name
    wavs, refs = datadir.read_table(d / "wav.scp"), datadir.read_table(d / "text")
    hyps = decode.transcribe(model, [(k, str(d / p)) for k, p in wavs.items()], batch_size=16)
    return corpus_cer([refs[h.key] for h in hyps], [h.text for h in hyps]).cer


def test_automodel_loads_offline_and_meets_base_cer(demo_model):
    cer = _decode_cer(demo_model, "base/test")
    assert cer <= 0.05
    assert cer == pytest.approx(_card_cer("base/test"), abs=TOLERANCE)


def test_target_domain_leaves_room_for_finetuning(demo_model):
    cer = _decode_cer(demo_model, "target/test")
    assert cer >= 0.40
    assert cer == pytest.approx(_card_cer("target/test"), abs=TOLERANCE)


def test_plain_automodel_call_as_documented():
    """Exactly the call the issue names: a folder path, no hub, CPU."""
    from funasr import AutoModel

    model = AutoModel(model=str(DEMO_MODEL), disable_update=True, device="cpu", disable_pbar=True)
    wav = sorted((DEMO_DATA / "base/test/audio").iterdir())[0]
    out = model.generate(input=str(wav))
    assert out and out[0]["key"] and isinstance(out[0]["text"], str) and out[0]["text"].strip()


@pytest.fixture(scope="session")
def demo_finetune(tmp_path_factory):
    """The demo's fine-tuning story, replayed: the shipped model + finetune.yaml on target/train."""
    from asr_workbench.demo import build

    report = json.loads((DEMO / "build_report.json").read_text(encoding="utf-8"))
    work = tmp_path_factory.mktemp("demo-finetune")
    return build.finetune_check(DEMO_MODEL, DEMO, work, report["finetune"]["epochs"], ncpu=2), report


def test_finetuning_halves_target_cer(demo_finetune):
    result, report = demo_finetune
    before = report["cer"]["target/test"]
    assert result["target_test_cer_after"] < before / 2
    # the model card's figure, within what thread scheduling can change in a short CPU run
    assert result["target_test_cer_after"] == pytest.approx(report["finetune"]["target_test_cer_after"], abs=0.05)


def test_card_states_the_numbers():
    card = (DEMO_MODEL / "README.md").read_text(encoding="utf-8")
    report = json.loads((DEMO / "build_report.json").read_text(encoding="utf-8"))
    for name, cer in report["cer"].items():
        assert f"| {name} | {cer * 100:.2f} % |" in card
    assert f"{report['finetune']['target_test_cer_after'] * 100:.2f} %" in card
    assert report["cer"]["base/test"] <= 0.05 and report["cer"]["target/test"] >= 0.40
    # the card names the normaliser its figures were measured with: the one the workbench scores with today
    assert report["normaliser"] == NORMALISER and f"## CER (normaliser: {NORMALISER})" in card
