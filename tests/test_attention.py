"""Fused attention in funasr's SANM layers: same numbers as funasr's own code, switched back afterwards."""

import pytest
import torch

from asr_workbench import attention, decode
from conftest import DEMO_DATA, DEMO_MODEL


def _padded(batch: int, t: int, d: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, t, d)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]  # (batch, 1, t): funasr's
    return x, mask


def test_fused_layers_compute_funasr_attention():
    """Encoder self-attention (with FSMN memory) and decoder cross-attention, padded batches: the fused
    layers give funasr's outputs on every real frame; training mode and attention-weight requests keep
    funasr's code; an utterance with no frame at all stays finite instead of NaN."""
    from funasr.models.sanm.attention import MultiHeadedAttentionCrossAtt, MultiHeadedAttentionSANM

    torch.manual_seed(0)
    sanm = MultiHeadedAttentionSANM(4, 64, 64, 0.1, kernel_size=11).eval()
    cross = MultiHeadedAttentionCrossAtt(4, 64, 0.1).eval()
    net = torch.nn.ModuleList([sanm, cross])
    x, mask = _padded(3, 37, 64, [37, 20, 5])
    tokens = torch.randn(3, 9, 64)
    with torch.no_grad():
        want_self, want_cross = sanm(x, mask), cross(tokens, x, mask)
        with attention.fused(net) as n:
            assert n == 2
            got_self, got_cross = sanm(x, mask), cross(tokens, x, mask)
            _, weights = cross(tokens, x, mask, ret_attn=True)  # weights asked for: funasr's code
            assert weights.shape == (3, 4, 9, 37)
            empty = sanm(x, torch.zeros_like(mask))
        assert "forward" not in vars(sanm) and "forward" not in vars(cross)
        assert torch.allclose(sanm(x, mask), want_self)  # switched back
    for b, length in enumerate([37, 20, 5]):
        assert torch.allclose(got_self[b, :length], want_self[b, :length], atol=1e-5)
    assert torch.allclose(got_cross, want_cross, atol=1e-5)
    assert torch.isfinite(empty).all()
    sanm.train()
    with attention.fused(net):
        torch.manual_seed(1)
        a = sanm(x, mask)
    torch.manual_seed(1)
    assert torch.equal(a, sanm(x, mask))  # dropout path: funasr's own code, same random draws


def test_fused_attention_decodes_like_funasr(demo_model, tmp_path):
    """The demo model decodes the demo test set to the same transcripts either way, and its layers are
    funasr's own again after decoding."""
    from asr_workbench import audio

    d = DEMO_DATA / "target/test"
    items = [(k, str(d / p), audio.probe(d / p).duration_s)
             for k, p in (line.split() for line in (d / "wav.scp").read_text().splitlines())]
    got = {}
    for mode in attention.MODES:
        res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(batch_size=8, device="cpu", attention=mode),
                            tmp_path / f"{mode}.partial", mode, model=demo_model, progress=False)
        got[mode] = [(h.key, h.text) for h in res.hypotheses]
    assert got["fused"] == got["funasr"] and len(got["fused"]) == len(items)
    assert not any("forward" in vars(m) for m in demo_model.model.modules())
    with pytest.raises(ValueError, match="attention"):
        decode.decode(str(DEMO_MODEL), items[:2], decode.DecodeOptions(device="cpu", attention="flash"),
                      tmp_path / "x.partial", "x", model=demo_model, progress=False)
