"""A local FSMN-VAD model folder funasr 1.4.16 loads as ``vad_model`` (no hub here), for the long-audio path.

The layout of ModelScope's iic/speech_fsmn_vad_zh-cn-16k-common-pytorch: config.yaml (FsmnVADStreaming, the FSMN
encoder's geometry, WavFrontendOnline: the offline WavFrontend is refused by the streaming VAD), am.mvn,
configuration.json and model.pt. Its weights are set by hand, not trained: ``energy`` makes the silence posterior a
sigmoid of the frame's mean log-mel energy (real pauses are found), ``silence`` finds no speech at all. The
frontend's dither is left at WavFrontendOnline's default (random noise, 1.0), as a config without the key has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

ENCODER = dict(input_dim=400, input_affine_dim=140, fsmn_layers=4, linear_dim=250, proj_dim=128, lorder=20,
               rorder=0, lstride=1, rstride=0, output_affine_dim=140, output_dim=248)
MODEL_CONF = dict(sample_rate=16000, detect_mode=1, snr_mode=0, max_end_silence_time=800,
                  max_start_silence_time=3000, do_start_point_detection=True, do_end_point_detection=True,
                  window_size_ms=200, sil_to_speech_time_thres=150, speech_to_sil_time_thres=150,
                  speech_2_noise_ratio=1.0, do_extend=1, lookback_time_start_point=200,
                  lookahead_time_end_point=100, max_single_segment_time=60000, snr_thres=-100.0,
                  noise_frame_num_used_for_snr=100, decibel_thres=-100.0, speech_noise_thres=0.6,
                  fe_prior_thres=0.0001, silence_pdf_num=1, sil_pdf_ids=[0], speech_noise_thresh_low=-0.1,
                  speech_noise_thresh_high=0.3, output_frame_probs=False, frame_in_ms=10, frame_length_ms=25)


def _weights(kind: str, threshold: float) -> dict[str, torch.Tensor]:
    from funasr.models.fsmn_vad_streaming.encoder import FSMN

    torch.manual_seed(0)
    sd = {f"encoder.{k}": torch.zeros_like(v) for k, v in FSMN(**ENCODER).state_dict().items()}
    out_w, out_b = sd["encoder.out_linear2.linear.weight"], sd["encoder.out_linear2.linear.bias"]
    out_b[2:] = -30.0  # pdf 0 silence, pdf 1 speech, the others never
    if kind == "silence":  # p(silence) 0.9 everywhere (not 1.0: funasr takes log(1 - p))
        out_b[0] = 2.2
        return sd
    # mean log-mel energy e -> relu(e - thr), relu(thr - e) -> through the FSMN blocks unchanged -> silence logit
    sd["encoder.in_linear1.linear.weight"][0, :] = 1.0 / ENCODER["input_dim"]
    sd["encoder.in_linear2.linear.weight"][0, 0], sd["encoder.in_linear2.linear.bias"][0] = 1.0, -threshold
    sd["encoder.in_linear2.linear.weight"][1, 0], sd["encoder.in_linear2.linear.bias"][1] = -1.0, threshold
    for i in range(ENCODER["fsmn_layers"]):
        for part in ("linear", "affine"):
            sd[f"encoder.fsmn.{i}.{part}.linear.weight"][0, 0] = 1.0
            sd[f"encoder.fsmn.{i}.{part}.linear.weight"][1, 1] = 1.0
    sd["encoder.out_linear1.linear.weight"][0, 0] = sd["encoder.out_linear1.linear.weight"][1, 1] = 1.0
    out_w[0, 0], out_w[0, 1] = -1.0, 0.5  # gentle slopes: log(p) must stay finite in float32
    return sd


def build_vad(out: Path, kind: str = "energy", threshold: float = 9.0) -> Path:
    """Write the VAD folder ``out`` (``kind``: ``energy`` or ``silence``)."""
    out.mkdir(parents=True, exist_ok=True)
    frontend_conf = dict(fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, lfr_m=5, lfr_n=1)
    config = dict(frontend="WavFrontendOnline", frontend_conf=frontend_conf, model="FsmnVADStreaming",
                  model_conf=MODEL_CONF, encoder="FSMN", encoder_conf=ENCODER)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    dim = ENCODER["input_dim"]
    (out / "am.mvn").write_text(f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 "
                                f"[ {' '.join(['0'] * dim)} ]\n<Rescale> {dim} {dim}\n<LearnRateCoef> 0 "
                                f"[ {' '.join(['1'] * dim)} ]\n</Nnet>\n", encoding="utf-8")
    (out / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "voice-activity-detection", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "frontend_conf": {"cmvn_file": "am.mvn"}}}), encoding="utf-8")
    torch.save(_weights(kind, threshold), out / "model.pt")
    return out
