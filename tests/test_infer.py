"""The inference notebook end to end (papermill on the demo) and the pieces behind it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from asr_workbench import datadir, decode, infer, modelhub, runs, scoring
from conftest import DEMO_DATA, DEMO_MODEL, REPO, damaged_copies, decode_items, subset

RUN_FILES = ["config.yaml", "data_report.jsonl", "1best_recog/text", "1best_recog/text.cer", "results.jsonl",
             "errors.txt", "metrics.json"]


@pytest.fixture(scope="session")
def papermill_run(tmp_path_factory) -> Path:
    """``papermill notebooks/infer.ipynb out.ipynb -f params/demo/infer.yaml -p output_dir DIR``, as documented."""
    out = tmp_path_factory.mktemp("papermill-infer")
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(REPO / "notebooks/infer.ipynb"), str(out / "out.ipynb"),
         "-f", str(REPO / "params/demo/infer.yaml"), "-p", "output_dir", str(out), "--no-progress-bar"],
        capture_output=True, text=True, timeout=900, cwd=str(out),  # not the repo root: paths must still resolve
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _results(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_papermill_run_writes_every_file(papermill_run):
    for name in RUN_FILES:
        assert (papermill_run / name).is_file(), name
    n = len((DEMO_DATA / "target/test/wav.scp").read_text().splitlines())
    assert len(_results(papermill_run)) == n
    # FunASR's hypothesis file: every utterance, in wav.scp order, with results.jsonl's hypothesis
    wav_keys = [line.split()[0] for line in (DEMO_DATA / "target/test/wav.scp").read_text().splitlines()]
    text = [line.split(" ", 1) for line in (papermill_run / "1best_recog/text").read_text(encoding="utf-8").splitlines()]
    assert [k for k, *_ in text] == wav_keys == [r["key"] for r in _results(papermill_run)]
    assert {k: (h[0] if h else "") for k, *h in text} == {r["key"]: r["hyp"] for r in _results(papermill_run)}
    assert any(r["hyp"] for r in _results(papermill_run))


def test_metrics_cer_equals_results_and_funasr_scorer(papermill_run):
    m = json.loads((papermill_run / "metrics.json").read_text())
    rows = [r for r in _results(papermill_run) if r["scored"]]
    assert m["cer"] == pytest.approx(sum(r["errors"] for r in rows) / sum(r["ref_tokens"] for r in rows), abs=1e-6)
    # funasr's own scorer, run independently (unpatched, as a user would) on the normalised files
    cer_file = papermill_run / "check.cer"
    subprocess.run([sys.executable, "-m", "funasr.metrics.wer", f"++ref_file={papermill_run / '1best_recog/ref.proc'}",
                    f"++hyp_file={papermill_run / '1best_recog/text.proc'}", f"++cer_file={cer_file}"],
                   check=True, capture_output=True, cwd=str(papermill_run))
    pattern = r"%WER (\S+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]"
    theirs = re.search(pattern, cer_file.read_text(encoding="utf-8")).groups()
    ours = re.search(pattern, (papermill_run / "1best_recog/text.cer").read_text(encoding="utf-8")).groups()
    wrong, total = int(theirs[1]), int(theirs[2])
    assert ours[1:] == theirs[1:]  # the same error, token, ins, del and sub counts
    assert (m["sub"] + m["del"] + m["ins"], m["ref_tokens"]) == (wrong, total)
    # funasr's own %WER is not compared: past 327 errors (the demo set has more) it overflows (see the next test)
    assert float(ours[0]) == round(m["cer"] * 100, 2) == round(wrong * 100 / total, 2)
    tail = (papermill_run / "1best_recog/text.cer").read_text(encoding="utf-8").splitlines()[-3:]
    assert tail[0].startswith("%WER ") and tail[1].startswith("%SER ") and tail[2].startswith("Scored ")


def test_funasr_compute_wer_int16_overflow_is_worked_around(tmp_path):
    """funasr 1.4.16 prints a negative %WER past 327 errors; our text.cer does not. If this starts failing
    because funasr fixed it, scoring._compute_wer_by_line need not avoid it any more."""
    from funasr.metrics.wer import compute_wer

    from asr_workbench import scoring

    keys = [f"u{i}" for i in range(40)]
    scores = [scoring.score_utterance("今天是星期一下午三点", "明年") for _ in keys]  # 10 errors each, 400 in all
    ours = scoring.write_funasr_text_cer(keys, scores, tmp_path)
    compute_wer(str(tmp_path / "ref.proc"), str(tmp_path / "text.proc"), str(tmp_path / "raw.cer"))
    raw = float(re.search(r"%WER (\S+)", (tmp_path / "raw.cer").read_text(encoding="utf-8")).group(1))
    fixed = float(re.search(r"%WER (\S+)", ours.read_text(encoding="utf-8")).group(1))
    assert fixed == 100.0 and raw < 0


def test_metrics_json_has_counts_timing_and_provenance(papermill_run):
    m = json.loads((papermill_run / "metrics.json").read_text())
    for key in ("cer", "sub", "del", "ins", "n_input", "n_decoded", "n_scored", "n_skipped", "audio_seconds",
                "wall_seconds", "rtf", "normaliser", "model", "device", "parameters"):
        assert key in m, key
    assert m["n_input"] == m["n_decoded"] == m["n_scored"] and m["n_skipped"] == 0
    assert m["normaliser"].startswith("zh-char-v4") and m["normaliser"] == scoring.NORMALISER
    prov = m["provenance"]
    assert prov["model_sha256"] == runs.file_sha256(DEMO_MODEL / "model.pt")  # hashed beside the decoding
    assert prov["inputs_sha256"] == runs.inputs_sha256([DEMO_DATA / "target/test/wav.scp", DEMO_DATA / "target/test/text"])
    assert prov["packages"]["funasr"] == metadata.version("funasr") and prov["packages"]["torch"] == metadata.version("torch")
    durations = [r["duration_s"] for r in _results(papermill_run)]
    assert m["audio_seconds"] == pytest.approx(sum(durations), abs=0.01)  # results' durations are rounded to ms
    assert m["rtf"] == pytest.approx(m["wall_seconds"] / m["audio_seconds"], rel=1e-3, abs=1e-5)
    cfg = yaml.safe_load((papermill_run / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["decoding"]["batch_size"] == 16 and cfg["model_dir"] == str(DEMO_MODEL)


def test_executed_notebook_shows_report_without_errors(papermill_run):
    nb = json.loads((papermill_run / "out.ipynb").read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "CER" in html and "Resolved settings" in html and "<audio" in html
    html_outputs = ["".join(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {})]
    assert html_outputs and all("tex2jax_ignore" in h for h in html_outputs)  # transcripts are never typeset as maths
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert nb["metadata"]["papermill"]["parameters"]["output_dir"] == str(papermill_run)



def test_the_browser_shows_the_worst_utterances_first(papermill_run):
    """The report's static browser and the widget's list start with the utterances with the most errors, not
    with the first lines of wav.scp; the static one says how many it leaves out."""
    import re

    from asr_workbench.report import browser

    rows = _results(papermill_run)
    b = browser(rows)
    b.static_rows = 5
    shown = re.findall(r"<tr><td>([^<]+)</td>", b.static_html())
    errors = {r["key"]: r["errors"] for r in rows if r["scored"]}
    assert len(shown) == 5 and [errors[k] for k in shown] == sorted(errors.values(), reverse=True)[:5]
    assert max(errors.values()) > min(errors.values())  # else any order would pass
    assert f"The 5 of {len(rows)} utterances with the most errors" in b.static_html()
    assert [r["key"] for r in b.results][:5] == shown

def test_run_command_adds_executed_notebook_and_html(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "asr_workbench", "run", "params/demo/infer.yaml", "-q",
                           "-p", f"output_dir={out}", "-p", "data_dir=demo/data/target/dev"],
                          capture_output=True, text=True, timeout=900, cwd=str(REPO),
                          env={**os.environ, "ASR_WORKBENCH_OUTPUTS": str(tmp_path / "outputs")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out / "report.html") in proc.stdout and "CER" in proc.stdout
    assert runs.read_index(tmp_path / "outputs" / "runs.jsonl")[0]["output_dir"] == str(out)
    for name in RUN_FILES + ["infer.ipynb", "report.html", "command.txt"]:
        assert (out / name).is_file(), name
    command = (out / "command.txt").read_text(encoding="utf-8")  # what reproduces the run, overrides included
    assert "run params/demo/infer.yaml" in command and "data_dir=demo/data/target/dev" in command
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "hypothesis vs reference" in html  # the browser's static fallback, not an empty widget
    assert "<script" not in html and "cdnjs" not in html  # opens offline; a "$" in a transcript is not maths
    assert "ffmpeg is not installed" not in html  # funasr's import-time notice does not apply: libsndfile reads audio


def test_sharded_decoding_matches_single_process(tmp_path):
    """2 CPU processes, merged in input order, give the single process's transcripts. (On base/test, where the
    model is confident: on noisy audio another batch make-up can flip a near-tie character.)"""
    single = infer.run(str(DEMO_MODEL), "demo/data/base/test", str(tmp_path / "one"), device="cpu", progress=False)
    sharded = infer.run(str(DEMO_MODEL), "demo/data/base/test", str(tmp_path / "two"), device="cpu", njob=2,
                        progress=False)
    assert sharded.metrics["n_processes"] == 2
    assert [r["key"] for r in sharded.results] == [r["key"] for r in single.results]  # input order restored
    assert [r["hyp"] for r in sharded.results] == [r["hyp"] for r in single.results]
    assert sharded.metrics["cer"] == single.metrics["cer"]


def test_run_into_a_used_folder_leaves_no_earlier_scores(tmp_path):
    """A scored run, then a run without ``text`` into the same folder: no text.cer, ref.proc or CER of the
    first run stays beside the second's files."""
    scored = subset(DEMO_DATA / "target/test", tmp_path / "scored", 3)
    unscored = tmp_path / "unscored"
    unscored.mkdir()
    shutil.copy(scored / "wav.scp", unscored / "wav.scp")
    out = tmp_path / "run"
    infer.run(str(DEMO_MODEL), str(scored), str(out), device="cpu", progress=False)
    assert (out / "1best_recog/text.cer").is_file()
    second = infer.run(str(DEMO_MODEL), str(unscored), str(out), device="cpu", progress=False)
    assert second.metrics["cer"] is None
    assert not any((out / "1best_recog" / f).exists() for f in ("text.cer", "ref.proc", "text.proc"))
    assert not any("ref" in r for r in (json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()))
    # a mistyped model fails before anything of the earlier run is removed
    with pytest.raises(modelhub.ModelError):
        infer.run(str(tmp_path / "no-such-model"), str(unscored), str(out), device="cpu", progress=False)
    assert (out / "metrics.json").is_file() and (out / "results.jsonl").is_file()


def test_weights_that_did_not_load_are_said(tmp_path):
    """funasr only prints missing checkpoint keys and logs (at INFO) the weights it skips for another shape: a
    model.pt without its decoder, or a tokens file one token longer than the checkpoint's vocabulary, decode
    garbage; the run's notes say why. A truncated model.pt fails naming the folder."""
    import torch

    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 2)
    folder = tmp_path / "no-decoder"
    shutil.copytree(DEMO_MODEL, folder)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("decoder.")}, folder / "model.pt")
    r = infer.run(str(folder), str(data), str(tmp_path / "a"), device="cpu", progress=False)
    assert any("not in it and keep random values" in n and "decoder." in n for n in r.metrics["notes"])
    sharded = infer.run(str(folder), str(data), str(tmp_path / "a2"), device="cpu", njob=2, progress=False)
    assert sharded.metrics["n_processes"] == 2  # shard processes load the model themselves and say it too, once
    assert [n for n in sharded.metrics["notes"] if "keep random values" in n] == \
        [n for n in r.metrics["notes"] if "keep random values" in n]
    folder = tmp_path / "one-token-more"
    shutil.copytree(DEMO_MODEL, folder)
    tokens = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
    (folder / "tokens.json").write_text(json.dumps(tokens[:5] + ["额"] + tokens[5:], ensure_ascii=False), encoding="utf-8")
    r = infer.run(str(folder), str(data), str(tmp_path / "b"), device="cpu", progress=False)
    assert any("another shape" in n for n in r.metrics["notes"])
    clean = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "c"), device="cpu", progress=False)
    assert not any("weights" in n for n in clean.metrics["notes"])
    folder = tmp_path / "cut"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "model.pt").write_bytes((DEMO_MODEL / "model.pt").read_bytes()[:3_000_000])
    with pytest.raises(RuntimeError, match=f"funasr could not load the model in {re.escape(str(folder))}: the "
                                           "weights file is damaged or incomplete"):
        infer.run(str(folder), str(data), str(tmp_path / "d"), device="cpu", progress=False)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))  # a FunASR 0.x class: one line
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "model": "ParaformerBert"}), encoding="utf-8")
    shutil.copy2(DEMO_MODEL / "model.pt", folder / "model.pt")
    with pytest.raises(RuntimeError, match=r"config.yaml names model 'ParaformerBert', a class funasr [\d.]+ does not "
                                           r"have") as err:
        infer.run(str(folder), str(data), str(tmp_path / "d"), device="cpu", progress=False)
    assert "\n" not in str(err.value)


def test_batch_ending_in_a_quiet_clip_decodes(tmp_path, caplog):
    """funasr's cif_v1 raises an IndexError for a batch whose last utterances yield no token (a short quiet clip
    sorts last): such a batch is decoded one utterance at a time, and the run completes."""
    import numpy as np
    import soundfile as sf

    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "quiet.wav", np.random.default_rng(0).normal(0, 0.003, 4800).astype("float32"), 16000)
    real = DEMO_DATA / "target/test/audio/tgt_ts_00000.flac"
    (data / "wav.scp").write_text(f"a {real}\nquiet quiet.wav\n")
    batched = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "b"), device="cpu", progress=False)
    alone = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "one"), batch_size=1, device="cpu", progress=False)
    assert [r["key"] for r in batched.results] == ["a", "quiet"]
    assert [r["hyp"] for r in batched.results] == [r["hyp"] for r in alone.results]
    assert batched.results[0]["hyp"]  # the real utterance is transcribed
    assert any("decoding it one utterance at a time" in r.getMessage() and "IndexError" in r.getMessage()
               for r in caplog.records)  # and the fallback is said, in the log and in the run's notes
    notes = [n for n in batched.metrics["notes"] if "could not be decoded whole" in n]
    # the note names the clip that yields no token (the cause), not the batch's first utterance
    assert len(notes) == 1 and notes[0].startswith("1 batch(es) could not be decoded whole by funasr")
    assert notes[0].endswith(f"in the first such batch: quiet ({data / 'quiet.wav'})")
    assert not any("decoded whole" in n for n in alone.metrics["notes"])


def test_shard_files_never_match_the_partial_file(tmp_path):
    """Shard results go to <partial>.part<i>; a partial file named like "run.partial" once matched the
    leftover-parts pattern "run.part*" and was deleted, losing every result."""
    items = decode_items("base/test", 4)
    res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(device="cpu", njob=2), tmp_path / "run.partial",
                        "fp", progress=False)
    assert [h.key for h in res.hypotheses] == [k for k, _, _ in items] and res.n_processes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial"]


def test_shard_results_of_a_killed_run_are_resumed(tmp_path):
    """A run killed before it merged its shards' files (SIGKILL, a restarted kernel) leaves <partial>.part<i>: the
    rerun with the same settings takes their finished hypotheses (they were deleted and decoded again); another
    run's shard files are not taken."""
    items = decode_items("base/test", 6)
    partial = tmp_path / "run.partial"
    (tmp_path / "run.partial.part0").write_text(
        json.dumps({"fingerprint": "fp"}) + "\n" + json.dumps({"key": items[0][0], "text": "FROM-PART-0",
                                                                "duration_s": items[0][2]}, ensure_ascii=False)
        + "\n" + '{"key": "cut", "text": "今', encoding="utf-8")  # killed mid-write: the last character cut in half
    (tmp_path / "run.partial.part0").write_bytes((tmp_path / "run.partial.part0").read_bytes()[:-1])
    (tmp_path / "run.partial.items0").write_text("[]", encoding="utf-8")  # its shard list, no longer needed
    (tmp_path / "run.partial.part1").write_text(
        json.dumps({"fingerprint": "other"}) + "\n" + json.dumps({"key": items[1][0], "text": "OTHER-RUN",
                                                                   "duration_s": items[1][2]}) + "\n", encoding="utf-8")
    res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(device="cpu", njob=2), partial, "fp",
                        progress=False)
    texts = {h.key: h.text for h in res.hypotheses}
    assert res.resumed == 1 and texts[items[0][0]] == "FROM-PART-0" and texts[items[1][0]] != "OTHER-RUN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial"]


def _random_model(folder: Path, config: dict) -> Path:
    """A model folder of ``config``'s funasr class with random weights and the demo's tokens and am.mvn."""
    import torch
    from funasr import AutoModel

    shutil.copytree(DEMO_MODEL, folder, ignore=shutil.ignore_patterns("model.pt", "decoding.yaml", "README.md"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    torch.manual_seed(0)
    built = AutoModel(model=str(folder), device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR",
                      init_param=str(folder / "none.pt"))
    torch.save(built.model.state_dict(), folder / "model.pt")
    return folder


def test_model_classes_that_cannot_batch_decode_one_utterance_at_a_time(tmp_path):
    """funasr's streaming Paraformer decoded the last chunk only when told the input is final (every transcript
    lost its end); its attention models (Conformer) decode batches of several by CTC greedy search, not their
    beam search, so the batch size chose the algorithm. Both decode one utterance per call, said in the notes."""
    from funasr import AutoModel

    demo = yaml.safe_load((DEMO_MODEL / "config.yaml").read_text(encoding="utf-8"))
    small = {"output_size": 64, "linear_units": 128, "num_blocks": 2}
    streaming = _random_model(tmp_path / "streaming", {
        **demo, "model": "ParaformerStreaming", "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {**demo["encoder_conf"], **small, "input_layer": "pe_online",
                         "pos_enc_class": "StreamSinusoidalPositionEncoder", "chunk_size": [12, 15], "stride": [8, 10],
                         "pad_left": [0, 0], "encoder_att_look_back_factor": [4, 4],
                         "decoder_att_look_back_factor": [1, 1]},
        "decoder_conf": {**demo["decoder_conf"], "linear_units": 128, "num_blocks": 1, "att_layer_num": 1,
                         "sanm_shfit": 5},
        "predictor_conf": {**demo["predictor_conf"], "idim": 64}})
    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 4)
    r = infer.run(str(streaming), str(data), str(tmp_path / "s"), batch_size=4, device="cpu", progress=False)
    plain = AutoModel(model=str(streaming), device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR")
    plain.kwargs["frontend"].dither = 0.0  # as the workbench's files are heard (its seeded dither aside)
    whole = {row["key"]: plain.generate(input=row["audio"])[0]["text"] for row in r.results}
    assert any(whole.values())  # random weights that said nothing would make the next line pass for nothing
    assert sum(len(row["hyp"]) for row in r.results) >= sum(len(t) for t in whole.values()) * 0.9
    assert "ParaformerStreaming decodes one whole utterance per call" in " ".join(r.metrics["notes"])
    conformer = _random_model(tmp_path / "conformer", {
        **{k: demo[k] for k in ("frontend", "frontend_conf", "specaug", "specaug_conf", "tokenizer", "tokenizer_conf",
                                "ctc_conf")},
        "model": "Conformer", "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False},
        "encoder": "ConformerEncoder",
        "encoder_conf": {**small, "attention_heads": 4, "input_layer": "conv2d", "pos_enc_layer_type": "rel_pos",
                         "selfattention_layer_type": "rel_selfattn", "macaron_style": True, "use_cnn_module": True,
                         "cnn_module_kernel": 15},
        "decoder": "TransformerDecoder", "decoder_conf": {"attention_heads": 4, "linear_units": 128, "num_blocks": 1}})
    by_batch = {b: infer.run(str(conformer), str(data), str(tmp_path / f"c{b}"), batch_size=b, beam_size=3,
                             device="cpu", progress=False) for b in (1, 4)}
    assert any(x["hyp"] for x in by_batch[1].results)
    assert [x["hyp"] for x in by_batch[1].results] == [x["hyp"] for x in by_batch[4].results]
    assert "Conformer decodes batches of several by CTC greedy search" in " ".join(by_batch[4].metrics["notes"])
    assert not any("beam_size=3 is ignored" in n for n in by_batch[1].metrics["notes"])  # its decoder searches beams


def test_shards_end_with_their_killed_parent(tmp_path):
    """A kernel restarted or a job killed (SIGKILL: nothing of the parent runs) left its shard processes decoding
    for hours, holding CPUs or GPUs; they end with it."""
    import signal

    script = tmp_path / "sharded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from asr_workbench import decode\n"
        "if __name__ == '__main__':\n"
        f"    items = [(f'u{{i}}', k[1], k[2]) for i, k in enumerate({decode_items('base/test', 40)!r} * 50)]\n"
        "    decode.decode('demo/model', items, decode.DecodeOptions(device='cpu', njob=2, batch_size=1),\n"
        f"                  Path({str(tmp_path / 'p.jsonl')!r}), 'fp', progress=False)\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(REPO))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and sum(p.stat().st_size for p in tmp_path.glob("p.jsonl.part*")) < 1000:
            time.sleep(0.2)  # both shards are decoding
        children = (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        assert len(children) >= 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.2)
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "shards outlived their parent"


def test_shard_that_dies_at_start_fails_the_run_instead_of_hanging(tmp_path):
    """A script without a ``__main__`` guard: each spawned shard re-runs it and dies before reading its work.
    With thousands of utterances the run must still end, with an error naming the failed shards (shards read
    their work from a file; pickled into the start-up pipe it would block the parent for ever)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from asr_workbench import decode\n"
        f"out = Path({str(tmp_path)!r})\n"
        "items = [(f'utt{i:05d}', str(out / f'{\"long/folder/name/\" * 4}utt{i:05d}.wav'), 1.0) for i in range(3000)]\n"
        "decode.decode('demo/model', items, decode.DecodeOptions(device='cpu', njob=2), out / 'p.jsonl', 'fp',\n"
        "              progress=False)\n", encoding="utf-8")
    res = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "decoding shard(s) [0, 1] failed" in res.stderr
    assert not list(tmp_path.glob("p.jsonl.items*")) and not list(tmp_path.glob("p.jsonl.part*"))


def test_interrupted_run_resumes_from_partial_file(tmp_path):
    d = DEMO_DATA / "target/dev"
    items = [(k, str(d / p), 1.0) for k, p in (line.split() for line in (d / "wav.scp").read_text().splitlines())][:6]
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"fingerprint": "fp"}) + "\n" +
                       "".join(json.dumps({"key": k, "text": "RESUMED", "duration_s": 1.0}) + "\n" for k, _, _ in items[:2])
                       + '{"key": "cut-off', encoding="utf-8")
    res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(device="cpu"), partial, "fp", progress=False)
    assert res.resumed == 2
    assert [h.text for h in res.hypotheses[:2]] == ["RESUMED", "RESUMED"]
    assert all(h.text and h.text != "RESUMED" for h in res.hypotheses[2:])


def test_decoding_settings_precedence_and_conflicts():
    s = infer.resolve_decoding({"batch_size": 16, "beam_size": 1}, {"batch_size": 8, "ctc_weight": None}, {"maxlenratio": 0.5})
    assert s == {"batch_size": 8, "beam_size": 1, "maxlenratio": 0.5}
    with pytest.raises(ValueError, match="'batch_size' is set twice"):
        infer.resolve_decoding({}, {"batch_size": 8}, {"batch_size": 4})
    assert infer.resolve_decoding({"decoding_ctc_weight": 0.3}, {}, None)["ctc_weight"] == 0.3
    with pytest.raises(ValueError, match="'ctc_weight' is set twice"):
        infer.resolve_decoding({}, {"ctc_weight": 0.5}, {"decoding_ctc_weight": 0.3})


@pytest.mark.parametrize("where, value, message", [
    ("decoding.yaml", {"batch_size": "sixteen"}, r"m/decoding.yaml: decoding option batch_size must be an integer >= 1, got 'sixteen'"),
    ("decoding.yaml", {"ctc_weight": 3}, r"m/decoding.yaml: decoding option ctc_weight must be a number from 0 to 1"),
    ("overrides", {"batch_seconds": -1}, r"decoding_overrides: decoding option batch_seconds must be a number of seconds > 0 \(or 0 / null: off\)"),
    ("overrides", {"attention": "flash"}, r"decoding_overrides: decoding option attention must be one of fused, funasr"),
    # funasr's own name for it is the same option (it escaped the range check and the no-CTC note)
    ("overrides", {"decoding_ctc_weight": 2.0}, r"decoding_overrides: decoding option ctc_weight must be a number from 0 to 1"),
    ("parameter", {"beam_size": 0}, r"parameter beam_size: decoding option beam_size must be an integer >= 1"),
])
def test_bad_decoding_values_name_their_source(tmp_path, where, value, message):
    """A wrong value in the model's decoding.yaml, a parameter or decoding_overrides fails before anything runs,
    naming the file or parameter it came from; the earlier run's results in output_dir stay."""
    model = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    kw: dict = {}
    if where == "decoding.yaml":
        decoding = yaml.safe_load((model / "decoding.yaml").read_text())
        (model / "decoding.yaml").write_text(yaml.safe_dump({**decoding, **value}))
    elif where == "overrides":
        kw["decoding_overrides"] = value
    else:
        kw.update(value)
    with pytest.raises(ValueError, match=message):
        infer.run(str(model), "demo/data/target/dev", str(out), device="cpu", progress=False, **kw)
    assert (out / "metrics.json").read_text() == "{}"


def test_options_the_model_ignores_are_said(tmp_path):
    res = infer.run(str(DEMO_MODEL), "demo/data/target/dev", str(tmp_path), ctc_weight=0.5, beam_size=4,
                    device="cpu", progress=False)
    assert any("ctc_weight=0.5 is ignored" in n for n in res.metrics["notes"])
    assert any("beam_size=4 is ignored" in n for n in res.metrics["notes"])


def test_bad_inputs_are_reported_and_the_rest_decoded(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    src = DEMO_DATA / "target/dev"
    lines = (src / "wav.scp").read_text().splitlines()[:3]
    (d / "wav.scp").write_text("\n".join(f"{k} {src / p}" for k, p in (x.split() for x in lines))
                               + "\nbroken missing.wav\n")
    (d / "text").write_text((src / "text").read_text(encoding="utf-8"), encoding="utf-8")
    res = infer.run(str(DEMO_MODEL), str(d), str(tmp_path / "out"), device="cpu", progress=False)
    assert res.metrics["n_decoded"] == 3 and res.metrics["skipped_keys"] == ["broken"]
    report = (tmp_path / "out" / "data_report.jsonl").read_text()
    assert '"broken"' in report and "text_without_audio" in report
    with pytest.raises(Exception, match="missing_file"):
        infer.run(str(DEMO_MODEL), str(d), str(tmp_path / "out2"), on_bad_input="fail", device="cpu", progress=False)


def test_plots_render_chinese_with_a_cjk_font(recwarn):
    import matplotlib

    matplotlib.use("Agg")
    from asr_workbench import report

    assert report.setup_cjk_font() is not None  # the setup installs fonts-wqy-microhei
    fig = report.error_types_bar({"sub": 1, "del": 2, "ins": 3, "cer": 0.1, "ref_tokens": 60}, title="今天是星期一")
    fig.savefig(io.BytesIO(), format="png")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    # a data folder named with two $ is text, not mathtext (which failed the report after every result was written)
    fig = report.error_types_bar({"sub": 1, "del": 2, "ins": 3, "cer": 0.1, "ref_tokens": 60}, title="data/a_$x_$")
    fig.savefig(io.BytesIO(), format="png")
    assert fig.axes[0].get_title().startswith(r"data/a_\$x_\$")  # escaped: shown as data/a_$x_$


def test_decoding_is_deterministic(tmp_path):
    """funasr's frontend dithers at inference by default (and restores its build-time frontend before every
    generate); a model folder that keeps the default must still decode the same way every time."""
    folder = tmp_path / "dithering-model"
    shutil.copytree(DEMO_MODEL, folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    cfg["frontend_conf"].pop("dither")  # funasr's default: 1.0
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    model = decode.load_model(str(folder), device="cpu")
    d = DEMO_DATA / "target/test"
    items = [(k, str(d / p)) for k, p in (line.split() for line in (d / "wav.scp").read_text().splitlines()[:6])]
    runs = [[h.text for h in decode.transcribe(model, items, batch_size=b)] for b in (1, 1, 4, 4)]
    assert runs[0] == runs[1] and runs[2] == runs[3]
    assert model.kwargs["frontend"].dither == 0.0
    model.generate(input=items[0][1])  # funasr restores the frontend as built: it must have been built without
    assert model.kwargs["frontend"].dither == 0.0 and decode.trained_dither(model) == 1.0 / 32768
    # the configured value, also from a folder without configuration.json (funasr then reads config.yaml by name)
    (folder / "configuration.json").unlink()
    cfg["frontend_conf"]["dither"] = 0.0
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert decode.trained_dither(decode.load_model(str(folder), device="cpu")) == 0.0


def test_digital_silence_is_heard_as_the_model_was_trained(tmp_path):
    """The model trained with its frontend's dither; exact zeros (padding, a gated line, channels that cancel)
    without it made the demo model answer with characters. The workbench adds the trained dither, seeded:
    silence decodes to nothing, a padded utterance nearly like the unpadded one, the same in every run and batch."""
    src = sorted((DEMO_DATA / "base/test/audio").iterdir())[:4]
    sr = 16000
    lines = [f"zero {tmp_path / 'zero.wav'}"]
    sf.write(str(tmp_path / "zero.wav"), np.zeros(2 * sr, dtype=np.int16), sr, subtype="PCM_16")
    for i, f in enumerate(src):
        x, _ = sf.read(str(f), dtype="int16")
        sf.write(str(tmp_path / f"pad{i}.wav"), np.concatenate([np.zeros(sr, np.int16), x, np.zeros(2 * sr, np.int16)]),
                 sr, subtype="PCM_16")
        lines += [f"pad{i} {tmp_path / f'pad{i}.wav'}", f"raw{i} {f}"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wav.scp").write_text("\n".join(lines) + "\n", encoding="utf-8")
    runs = [{r["key"]: r["hyp"] for r in infer.run(str(DEMO_MODEL), str(tmp_path / "data"), str(tmp_path / f"o{b}"),
                                                   batch_size=b, progress=False).results} for b in (1, 4)]
    assert runs[0] == runs[1]
    assert runs[0]["zero"] == ""
    # padded: at most a character more than unpadded (without the dither: up to 7, '明明六他们有五十三个朋友张零零零')
    assert all(scoring.score_utterance(runs[0][f"raw{i}"], runs[0][f"pad{i}"]).errors <= 1 for i in range(len(src)))


def test_precomputed_features_decode_like_funasr_on_waveforms(demo_model):
    """The workbench computes Paraformer's fbank itself (to overlap it with decoding); funasr fed the same
    batches of waveforms must give the same transcripts."""
    from asr_workbench import audio

    d = DEMO_DATA / "target/test"
    items = [(k, str(d / p)) for k, p in (line.split() for line in (d / "wav.scp").read_text().splitlines()[:24])]
    ours = {h.key: h.text for h in decode.transcribe(demo_model, items, batch_size=8)}
    durations = [audio.probe(p).duration_s for _, p in items]
    theirs = {}
    for group in decode.length_sorted_batches(durations, 8):
        waves = [decode.dither(audio.load(items[i][1]), decode.trained_dither(demo_model)) for i in group]
        res = demo_model.generate(input=waves, batch_size=len(group))
        theirs.update({items[i][0]: r["text"] for i, r in zip(group, res)})
    assert ours == theirs


def test_concurrent_batches_decode_like_one_at_a_time(demo_model, tmp_path, monkeypatch):
    """Several batches decode at once on worker threads (each its own copy of funasr's settings); the
    hypotheses must equal one-batch-at-a-time decoding, and the process's torch thread count comes back."""
    import torch

    items = decode_items("target/test", 30)
    threads = torch.get_num_threads()
    got = {}
    for workers in (1, 3):
        res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(batch_size=4, device="cpu", workers=workers),
                            tmp_path / f"w{workers}.partial", f"fp{workers}", model=demo_model, progress=False)
        got[workers] = [(h.key, h.text) for h in res.hypotheses]
        assert torch.get_num_threads() == threads
    assert got[1] == got[3] and [k for k, _ in got[1]] == [k for k, _, _ in items]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a shard process or a parallel batch run: one batch at a time
    assert decode.plan_workers(demo_model, decode.DecodeOptions(), {}) == (1, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert decode.plan_workers(demo_model, decode.DecodeOptions(), {}) == (4, 2)
    assert decode.plan_workers(demo_model, decode.DecodeOptions(workers=2), {}) == (2, 4)
    # CTC / LM beam search keeps state in the model: one batch at a time
    assert decode.plan_workers(demo_model, decode.DecodeOptions(), {"decoding_ctc_weight": 0.3}) == (1, 0)
    with pytest.raises(ValueError, match="features_on"):
        decode.decode(str(DEMO_MODEL), items[:2], decode.DecodeOptions(device="cpu", features_on="gpu"),
                      tmp_path / "x.partial", "x", model=demo_model, progress=False)


def test_output_dir_that_holds_a_model_or_another_run_is_refused(tmp_path):
    """A run never writes into its model folder, a folder holding a model, or another kind of run's folder (an
    infer run into a fine-tune's folder would overwrite the config.yaml and metrics.json evaluation reads)."""
    from asr_workbench import runs

    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 2)
    model = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, model)
    config = (model / "config.yaml").read_text(encoding="utf-8")
    for out in (model, model / "runs" / "a"):
        with pytest.raises(ValueError, match="never writes into a model folder"):
            infer.run(str(model), str(data), str(out), device="cpu", progress=False)
    assert (model / "config.yaml").read_text(encoding="utf-8") == config and not (model / "runs").exists()
    with pytest.raises(ValueError, match=r"holds a model \(model.pt, configuration.json\)"):
        infer.run(str(DEMO_MODEL), str(data), str(model), device="cpu", progress=False)
    ft = runs.prepare_output_dir(tmp_path / "ft", "finetune")
    with pytest.raises(ValueError, match="holds a finetune run: a infer run would overwrite"):
        infer.run(str(DEMO_MODEL), str(data), str(ft), device="cpu", progress=False)
    (tmp_path / "afile").write_text("keep")  # a file, or a folder that cannot be made: said as such
    with pytest.raises(ValueError, match=f"output_dir {tmp_path / 'afile'} is a file, not a folder"):
        infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "afile"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=f"output_dir {tmp_path / 'afile' / 'run'} cannot be written: Not a directory"):
        infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "afile" / "run"), device="cpu", progress=False)
    with pytest.raises(datadir.DataError, match=f"a file, not a data folder: give the folder that holds wav.scp "
                                                f"\\(\\+ text\\): {data}"):
        infer.run(str(DEMO_MODEL), str(data / "wav.scp"), str(tmp_path / "out"), device="cpu", progress=False)
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("kw, message", [
    ({"precision": "bf61"}, "precision must be fp32, bf16 or fp16"),
    ({"njob": 0}, "njob must be an integer >= 1"),
    ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:<n>"),
    ({"devices": 7}, r"device 'cuda:7': this machine has \d+ CUDA GPU"),
    ({"decoding_overrides": "batch_seconds=120"}, "decoding_overrides must be a mapping"),
])
def test_run_settings_are_checked_before_earlier_results_go(tmp_path, kw, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        infer.run(str(DEMO_MODEL), "demo/data/base/test", str(out), progress=False, **kw)
    assert (out / "metrics.json").read_text() == "{}"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_on_a_machine_without_one_fails_instead_of_running_on_the_cpu(tmp_path):
    """funasr falls back to the CPU quietly; the run would be recorded and timed as a GPU run."""
    with pytest.raises(ValueError, match=r"device 'cuda': this machine has 0 CUDA GPU\(s\).*use device: auto"):
        infer.run(str(DEMO_MODEL), "demo/data/base/test", str(tmp_path), device="cuda", progress=False)


def test_device_lists_as_typed():
    assert infer._device_list(1) == ["cuda:1"] and infer._device_list(0) == ["cuda:0"]
    assert infer._device_list("0,1") == ["cuda:0", "cuda:1"] == infer._device_list([0, "1"])
    assert infer._device_list("cpu,cpu") == ["cpu", "cpu"] and infer._device_list(None) == []
    with pytest.raises(ValueError, match="not a device"):
        infer._device_list([0.5])


def test_nothing_to_decode_fails_and_keeps_the_earlier_results(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("a missing.wav\nb also-missing.wav\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(datadir.DataError, match=r"nothing to decode: 2 input line\(s\), each with an error"):
        infer.run(str(DEMO_MODEL), str(data), str(out), device="cpu", progress=False)
    # the finished run's files stay as they were; this run's data report is beside them
    assert (out / "metrics.json").read_text() == "{}" and not (out / "data_report.jsonl").exists()
    assert "missing_file" in (out / "data_report.failed.jsonl").read_text()


def test_audio_damaged_inside_is_skipped_with_its_line_and_the_rest_decodes(tmp_path):
    """Damage the data check cannot see (it reads headers and the last second) is found while decoding: that
    utterance is skipped and reported at its wav.scp line, its batch-mates are decoded; a level far beyond full
    scale is warned."""
    src = subset(DEMO_DATA / "target/test", tmp_path / "src", 3)
    good = datadir.read_table(src / "wav.scp")
    flac, nan, loud = damaged_copies(src / next(iter(good.values())), tmp_path / "bad")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(f"{k} {src / p}\n" for k, p in good.items())
                                  + f"flac {flac}\nnan {nan}\nloud {loud}\n")
    r = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "out"), batch_size=8, device="cpu", progress=False)
    m = r.metrics
    assert (m["n_input"], m["n_decoded"], m["n_skipped"]) == (6, 4, 2)
    assert sorted(m["skipped_keys"]) == ["flac", "nan"] and [row["key"] for row in r.results] == [*good, "loud"]
    assert all(row["hyp"] for row in r.results[:3])
    issues = {i["key"]: i for i in map(json.loads, (tmp_path / "out/data_report.jsonl").read_text().splitlines())}
    assert issues["flac"]["where"] == f"{data / 'wav.scp'}:4" and issues["flac"]["code"] == "undecodable_audio"
    assert "NaN or infinite" in issues["nan"]["reason"] and issues["nan"]["where"].endswith("wav.scp:5")
    assert issues["loud"]["severity"] == "warning" and "far beyond full scale" in issues["loud"]["reason"]
    # its player in the report is scaled to full scale, not a clipped square wave
    from asr_workbench import audio

    played, _ = sf.read(io.BytesIO(audio.playable(loud).data))
    assert np.mean(np.abs(played) > 0.999) < 0.01 and np.abs(played).max() > 0.9


def test_silent_clipped_and_cancelling_audio_is_warned(tmp_path):
    """Levels the model cannot hear well, in any sample format: digital silence, clipping in telephone A-law and
    mu-law (whose largest value is 0.98, not 1.0), stereo channels that cancel when averaged to mono."""
    from asr_workbench import audio

    speech, sr = sf.read(str(sorted((DEMO_DATA / "base/test/audio").iterdir())[0]), dtype="float32")
    loud = np.clip(speech * 20, -1, 1)
    files = {"zero": (np.zeros(sr), "PCM_16"), "alaw_clip": (loud, "ALAW"), "ulaw_clip": (loud, "ULAW"),
             "alaw": (speech, "ALAW"), "ulaw": (speech, "ULAW"), "inverted": (np.stack([speech, -speech], 1), "PCM_16"),
             "one_side": (np.stack([speech, 0 * speech], 1), "PCM_16")}
    warned = {}
    for name, (x, subtype) in files.items():
        sf.write(str(tmp_path / f"{name}.wav"), x, sr, subtype=subtype)
        warned[name] = audio.load_checked(tmp_path / f"{name}.wav")[1] or ""
    assert "digital silence" in warned["zero"]
    assert warned["alaw_clip"].startswith("clipped") and warned["ulaw_clip"].startswith("clipped")
    assert "cancel out" in warned["inverted"]
    assert warned["alaw"] == warned["ulaw"] == warned["one_side"] == ""


def test_bad_audio_found_while_decoding_fails_a_strict_run_and_keeps_the_earlier_results(tmp_path):
    src = subset(DEMO_DATA / "target/test", tmp_path / "src", 2)
    out = tmp_path / "out"
    first = infer.run(str(DEMO_MODEL), str(src), str(out), device="cpu", progress=False)
    before = {n: (out / n).read_bytes() for n in ("metrics.json", "results.jsonl", "config.yaml", "data_report.jsonl")}
    flac = damaged_copies(src / next(iter(datadir.read_table(src / "wav.scp").values())), tmp_path / "bad")[0]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"ok {src / next(iter(datadir.read_table(src / 'wav.scp').values()))}\nflac {flac}\n")
    with pytest.raises(datadir.DataError, match=re.escape(f"{data / 'wav.scp'}:2: [undecodable_audio] flac")):
        infer.run(str(DEMO_MODEL), str(data), str(out), device="cpu", progress=False, on_bad_input="fail")
    assert {n: (out / n).read_bytes() for n in before} == before and first.cer is not None
    assert "undecodable_audio" in (out / "data_report.failed.jsonl").read_text()
    cut = tmp_path / "cut-model"  # a model that fails to load: the earlier results stay too
    shutil.copytree(DEMO_MODEL, cut)
    (cut / "model.pt").write_bytes((DEMO_MODEL / "model.pt").read_bytes()[:3_000_000])
    with pytest.raises(RuntimeError, match="damaged or incomplete"):
        infer.run(str(cut), str(src), str(out), device="cpu", progress=False)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert (out / "data_report.failed.jsonl").read_text() == ""  # this attempt's report (clean data), not the last
    infer.run(str(DEMO_MODEL), str(data), str(out), device="cpu", progress=False)  # skipping it, the run lands
    assert not (out / "data_report.failed.jsonl").exists()
    assert json.loads((out / "metrics.json").read_text())["skipped_keys"] == ["flac"]


def test_counts_add_up_and_mistyped_decoding_keys_are_said(tmp_path):
    """input = decoded + skipped; an error only in text (a duplicate transcript) skips no input; a decoding key
    nobody reads is said, with the key it resembles."""
    src = subset(DEMO_DATA / "base/test", tmp_path / "src", 3)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text((src / "wav.scp").read_text() + "bad\n")
    (data / "text").write_text((src / "text").read_text(encoding="utf-8") + "zz 一\nzz 二\n", encoding="utf-8")
    r = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "out"), device="cpu", progress=False,
                  decoding_overrides={"batch_sise": 2})
    m = r.metrics
    assert (m["n_input"], m["n_decoded"], m["n_skipped"], m["skipped_keys"]) == (4, 3, 1, ["bad"])
    assert any("'batch_sise' is not one the workbench or funasr" in n and "did you mean 'batch_size'" in n
               for n in m["notes"])


def test_resume_fingerprint_changes_when_audio_is_replaced(tmp_path):
    """An interrupted run resumes only when each audio file is the same (size and modification time), not just
    the same name."""
    mf = modelhub.open_model(str(DEMO_MODEL))
    wav = tmp_path / "a.flac"
    shutil.copy(DEMO_DATA / "target/test/audio/tgt_ts_00000.flac", wav)
    items = [("a", str(wav), 1.0)]
    before = infer._fingerprint(mf, {}, items)
    assert infer._fingerprint(mf, {}, items) == before
    shutil.copy(DEMO_DATA / "target/test/audio/tgt_ts_00001.flac", wav)
    os.utime(wav, ns=(1, 1))
    assert infer._fingerprint(mf, {}, items) != before


def test_report_players_embed_at_most_the_first_30_seconds(tmp_path):
    """Ten 10-minute files made a 256 MB report whose output timed out the run: a player embeds the first 30 s
    (FLAC), and says so; an HTML table's plain-text copy in the notebook is one line, not the HTML again."""
    import base64

    from IPython.lib.pretty import pretty

    from asr_workbench import report
    from asr_workbench.report import tables

    sr = 16000
    long_file = tmp_path / "long.wav"
    sf.write(str(long_file), 0.1 * np.sin(2 * np.pi * 220 * np.arange(45 * sr) / sr), sr, subtype="PCM_16")
    player = tables.audio_html(str(long_file))
    assert "first 30 s of 45 s" in player
    data = base64.b64decode(re.search(r"data:audio/flac;base64,([^']+)'", player).group(1))
    clip, rate = sf.read(io.BytesIO(data))
    assert (len(clip), rate) == (30 * sr, sr)
    short = tables.audio_html(str(sorted((DEMO_DATA / "target/test/audio").iterdir())[0]))
    assert "first" not in short and "data:audio/flac;base64," in short
    table = report.worst_table([{"key": "u", "scored": True, "errors": 1, "cer": 0.5, "ref_tokens": 2,
                                 "ref_norm": "今 天", "hyp_norm": "今 年", "audio": str(long_file)}])
    assert pretty(table) == f"<HTML, {len(table):,} characters>"
    perfect = {"key": "ok", "scored": True, "errors": 0, "cer": 0.0, "ref_tokens": 2, "ref_norm": "今 天",
               "hyp_norm": "今 天", "audio": str(long_file)}
    assert ">ok<" not in report.worst_table([perfect, {**perfect, "key": "bad", "errors": 1, "cer": 0.5}])
    assert "No scored utterance has an error" in report.worst_table([perfect])


def test_vad_model_path_is_deterministic_checked_and_says_what_it_found(tmp_path):
    """Long audio through a vad_model (a local FSMN-VAD folder): its frontend's random dither made a file's
    transcript depend on what was decoded before it; a folder missing its weights decoded with random ones; a file
    without speech came back empty without a word."""
    from fsmn_vad import build_vad

    vad = build_vad(tmp_path / "vad")
    clips = sorted((DEMO_DATA / "target/test/audio").iterdir())[:6]
    data = tmp_path / "data"
    data.mkdir()
    silence = np.zeros(16000, dtype=np.float32)
    for name, part in (("a", clips[:3]), ("b", clips[3:])):
        wave = np.concatenate([x for c in part for x in (sf.read(str(c), dtype="float32")[0], silence)])
        sf.write(str(data / f"{name}.wav"), wave, 16000, subtype="PCM_16")
    (data / "wav.scp").write_text("a a.wav\nb b.wav\n")
    both = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "both"), vad_model=str(vad), device="cpu",
                     batch_size=4, progress=False)
    (data / "wav.scp").write_text("b b.wav\n")
    alone = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "alone"), vad_model=str(vad), device="cpu",
                      progress=False)
    assert both.results[1]["hyp"] and both.results[1]["hyp"] == alone.results[0]["hyp"]
    # the VAD's frontend adds no random dither of its own (it hears the seeded one in the waveform), generate after
    # generate (funasr restores its frontend from a copy made at loading)
    model = decode.load_model(str(DEMO_MODEL), device="cpu", vad_model=str(vad))
    for _ in range(2):
        model.generate(input=str(data / "b.wav"))
        assert model.vad_kwargs["frontend"].dither == 0.0
    assert any("batch_size is not used" in n for n in both.metrics["notes"])
    import torch

    from asr_workbench import processes

    assert torch.get_num_threads() == processes.thread_budget()  # funasr's generate() set every core's worth
    deaf = build_vad(tmp_path / "deaf", kind="silence")
    r = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "deaf-run"), vad_model=str(deaf), device="cpu",
                  progress=False)
    assert r.results[0]["hyp"] == "" and [i.code for i in r.report.issues if i.key == "b"] == ["no_speech"]
    (vad / "model.pt").unlink()
    with pytest.raises(modelhub.ModelError, match=r"vad_model .*vad: .*model.pt"):
        infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "no-weights"), vad_model=str(vad), device="cpu",
                  progress=False)
    assert not (tmp_path / "no-weights").exists()


def test_what_the_model_says_on_empty_references_is_counted(tmp_path):
    """A reference that is only a tag (a noise or silence utterance) is not in the CER, but the model's words on it
    were counted nowhere: a model that talks over noise looked as good as one that stays quiet."""
    data = subset(DEMO_DATA / "target/test", tmp_path / "data", 3)
    lines = (data / "text").read_text(encoding="utf-8").splitlines()
    (data / "text").write_text("\n".join([lines[0].split()[0] + " <NOISE>", *lines[1:]]) + "\n", encoding="utf-8")
    r = infer.run(str(DEMO_MODEL), str(data), str(tmp_path / "out"), device="cpu", progress=False)
    said = len(r.results[0]["hyp_norm"].split())
    assert said > 0  # the demo model says something on any speech
    assert r.metrics["empty_reference"] == {"utterances": 1, "hyp_tokens": said} and r.metrics["n_scored"] == 2
    assert any(f"the model said {said} token(s)" in n for n in r.metrics["notes"])


def test_a_run_holds_its_folder_and_refuses_one_held(tmp_path):
    """A notebook run (the library call, not only `asr-workbench run`) holds its folder while it writes, so an
    evaluation sees a fine-tune still running; a folder another process holds is refused before anything is
    written."""
    import threading

    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 2)
    out = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                              "from asr_workbench import runs; f = runs.lock_folder(Path(sys.argv[1])); "
                              "print('held', flush=True); time.sleep(120)", str(out)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=r"in use by another run \(pid \d+"):
            infer.run(model=str(DEMO_MODEL), data_dir=str(data), output_dir=str(out), device="cpu", progress=False)
        assert not (out / "config.yaml").exists()
    finally:
        other.kill()
        other.wait()
    seen: list[str | None] = []
    worker = threading.Thread(target=infer.run, kwargs=dict(model=str(DEMO_MODEL), data_dir=str(data),
                                                             output_dir=str(out), device="cpu", progress=False))
    worker.start()
    while worker.is_alive():
        seen.append(runs.folder_in_use(out))
        time.sleep(0.01)
    assert f"pid {os.getpid()} on {os.uname().nodename}" in seen and (out / "metrics.json").is_file()
    assert runs.folder_in_use(out) is None
    # the batch runner holds the folder for the kernel it starts, with a kernelspec's wrapper (here sh) between
    # them: the folder named in the environment is the kernel's to write
    script = ("import sys, subprocess; from pathlib import Path; from asr_workbench import runs; "
              "lock = runs.lock_folder(Path(sys.argv[1])); "
              "sys.exit(subprocess.run(['sh', '-c', '\"$0\" -c \"$1\"; exit $?', sys.executable, sys.argv[2]]).returncode)")
    call = (f"from asr_workbench import infer; infer.run(model={str(DEMO_MODEL)!r}, data_dir={str(data)!r}, "
            f"output_dir={str(out)!r}, device='cpu', progress=False)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    refused = subprocess.run([sys.executable, "-c", script, str(out), call], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "in use by another run" in refused.stderr
    held = subprocess.run([sys.executable, "-c", script, str(out), call], capture_output=True, text=True,
                          env={**env, runs.HELD_FOR_KERNEL: str(out.resolve())})
    assert held.returncode == 0, held.stderr[-2000:]


def test_an_8khz_model_hears_8khz_audio_in_any_batch(tmp_path):
    """A model whose frontend takes 8 kHz (frontend_conf.fs): batches of several utterances, whose features the
    workbench computes itself, get the samples at 8 kHz as funasr's own path does (16 kHz samples gave twice the
    frames and other transcripts than batch 1)."""
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video
    import torch

    model_dir = tmp_path / "m8k"
    shutil.copytree(DEMO_MODEL, model_dir)
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    cfg["frontend_conf"]["fs"] = 8000
    (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    data = subset(DEMO_DATA / "base/test", tmp_path / "data", 4)
    model = decode.load_model(str(model_dir))
    wav = str(data / next(iter(datadir.read_table(data / "wav.scp").values())))
    frontend = model.kwargs["frontend"]
    _, theirs = extract_fbank([load_audio_text_image_video(wav, fs=8000)], data_type="sound", frontend=frontend)
    _, ours = extract_fbank([torch.from_numpy(decode._read(wav, 0.0, 8000)[0])], data_type="sound", frontend=frontend)
    assert ours.tolist() == theirs.tolist()
    one, four = (infer.run(model=str(model_dir), data_dir=str(data), output_dir=str(tmp_path / f"b{n}"), batch_size=n,
                           device="cpu", progress=False, loaded_model=model) for n in (1, 4))
    assert [r["hyp"] for r in one.results] == [r["hyp"] for r in four.results]
    # the data check speaks of the model's rate: 16 kHz audio is converted to 8 kHz, not "upsampled"
    said = {i.code: i.reason for i in one.report.issues}
    assert "sample rate 16000 Hz, converted to 8000 Hz (the model's)" in said["resampled"] and "upsampled" not in said
