"""Fused attention in funasr's SANM layers: same numbers as funasr's own code, switched back afterwards."""

import pytest
import torch

from asr_workbench import attention, decode
from conftest import DEMO_MODEL, decode_items


def _padded(batch: int, t: int, d: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, t, d)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]  # (batch, 1, t): funasr's
    return x, mask


def test_fused_layers_compute_funasr_attention():
    """Encoder self-attention (with FSMN memory) and decoder cross-attention, padded batches: the fused
    layers give funasr's outputs on every real frame, and on an utterance with no frame at all; training
    mode and attention-weight requests keep funasr's code."""
    from funasr.models.sanm.attention import MultiHeadedAttentionCrossAtt, MultiHeadedAttentionSANM

    torch.manual_seed(0)
    sanm = MultiHeadedAttentionSANM(4, 64, 64, 0.1, kernel_size=11).eval()
    cross = MultiHeadedAttentionCrossAtt(4, 64, 0.1).eval()
    net = torch.nn.ModuleList([sanm, cross])
    x, mask = _padded(3, 37, 64, [37, 20, 5])
    tokens = torch.randn(3, 9, 64)
    with torch.no_grad():
        want_self, want_cross = sanm(x, mask), cross(tokens, x, mask)
        want_empty = sanm(x, torch.zeros_like(mask))
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
    assert torch.allclose(empty, want_empty, atol=1e-5)
    sanm.train()
    with attention.fused(net):
        torch.manual_seed(1)
        a = sanm(x, mask)
    torch.manual_seed(1)
    assert torch.equal(a, sanm(x, mask))  # dropout path: funasr's own code, same random draws


def test_overlapping_blocks_switch_back_when_the_last_ends():
    """Two decodes of one model may overlap (threads): the layers stay fused until the last block ends."""
    from funasr.models.sanm.attention import MultiHeadedAttentionSANM

    net = torch.nn.ModuleList([MultiHeadedAttentionSANM(2, 16, 16, 0.0, kernel_size=3)])
    with attention.fused(net) as a:
        with attention.fused(net) as b, attention.fused(net, enabled=False) as c:
            assert (a, b, c) == (1, 1, 0)
        assert "forward" in vars(net[0])
    assert "forward" not in vars(net[0])


def test_fused_attention_decodes_like_funasr(demo_model, tmp_path, monkeypatch):
    """The demo model decodes the demo test set to the same transcripts either way (the fused kernel really
    runs in its 6 encoder and 2 decoder attention layers), and its layers are funasr's own again after."""
    items = decode_items("target/test")
    calls = []
    real = attention._attend
    monkeypatch.setattr(attention, "_attend", lambda *a: calls.append(a[0].shape) or real(*a))
    got, n_calls = {}, {}
    for mode in attention.MODES:
        res = decode.decode(str(DEMO_MODEL), items, decode.DecodeOptions(batch_size=8, device="cpu", attention=mode),
                            tmp_path / f"{mode}.partial", mode, model=demo_model, progress=False)
        got[mode], n_calls[mode] = [(h.key, h.text) for h in res.hypotheses], len(calls)
        calls.clear()
    assert got["fused"] == got["funasr"] and len(got["fused"]) == len(items)
    n_batches = -(-len(items) // 8)
    assert n_calls == {"fused": 8 * n_batches, "funasr": 0}
    assert not any("forward" in vars(m) for m in demo_model.model.modules())
    with pytest.raises(ValueError, match="attention"):
        decode.decode(str(DEMO_MODEL), items[:2], decode.DecodeOptions(device="cpu", attention="flash"),
                      tmp_path / "x.partial", "x", model=demo_model, progress=False)
