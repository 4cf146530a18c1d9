"""Fused attention for funasr's SANM attention layers while decoding.

funasr's ``MultiHeadedAttentionSANM`` (Paraformer's encoder) and ``MultiHeadedAttentionCrossAtt`` (its
decoder) build the whole (batch, heads, T, T) score tensor, mask it, soft-max it and mask it again: on a CPU
that was 2.9 of the demo Paraformer's 7.2 single-threaded decoding seconds on 1-20 s utterances. PyTorch's
``scaled_dot_product_attention`` computes the same attention in one fused kernel without that tensor. :func:`fused` puts it into the layers of one loaded model
for the length of a ``with`` block. Layers in training mode, chunked (streaming) masks, layers asked for their
attention weights and subclasses keep funasr's own code.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["MODES", "fused"]

MODES = ("fused", "funasr")  # DecodeOptions.attention: torch's fused kernel, or funasr's own code


def _attend(q: Any, k: Any, v: Any, mask: Any) -> Any:
    """Attention of (batch, heads, T1, d) queries over T2 keys as one (batch, T1, heads * d) tensor.

    ``mask`` is funasr's: (batch, 1, T2) or (batch, T1, T2), non-zero where a key may be attended to.
    """
    import torch.nn.functional as F

    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        allowed = mask.unsqueeze(1).ne(0)  # (batch, 1, 1 or T1, T2)
        # a row with no key to attend to (an empty utterance) is zeros in funasr's code; some fused kernels
        # return NaN for it: it attends everywhere and is zeroed afterwards, as funasr has it
        has_key = allowed.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_key).masked_fill(~has_key, 0.0)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def _sanm_forward(self: Any, x: Any, mask: Any, mask_shfit_chunk: Any = None, mask_att_chunk_encoder: Any = None) -> Any:
    """``MultiHeadedAttentionSANM.forward`` with the fused kernel: self-attention plus the FSMN memory."""
    if self.training or mask_att_chunk_encoder is not None:
        return type(self).forward(self, x, mask, mask_shfit_chunk, mask_att_chunk_encoder)
    q_h, k_h, v_h, v = self.forward_qkv(x)
    fsmn_memory = self.forward_fsmn(v, mask, mask_shfit_chunk)
    return self.linear_out(_attend(q_h, k_h, v_h, mask)) + fsmn_memory


def _cross_forward(self: Any, x: Any, memory: Any, memory_mask: Any, ret_attn: bool = False) -> Any:
    """``MultiHeadedAttentionCrossAtt.forward`` (decoder over encoder output) with the fused kernel."""
    if self.training or ret_attn:
        return type(self).forward(self, x, memory, memory_mask, ret_attn)
    q_h, k_h, v_h = self.forward_qkv(x, memory)
    return self.linear_out(_attend(q_h, k_h, v_h, memory_mask))


_lock = threading.Lock()
_users: dict[int, int] = {}  # id(layer) -> blocks using its fused forward (overlapping decodes of one model)


@contextlib.contextmanager
def fused(model: Any, enabled: bool = True) -> Iterator[int]:
    """Decode ``model`` (a ``torch.nn.Module``) with fused attention inside the block; yields how many
    layers use it. Only layers of exactly funasr's two classes switch; they switch back when the last block
    using them ends (``enabled=False`` inside another thread's block does not switch them back early)."""
    from funasr.models.sanm.attention import MultiHeadedAttentionCrossAtt, MultiHeadedAttentionSANM

    replacement = {MultiHeadedAttentionSANM: _sanm_forward, MultiHeadedAttentionCrossAtt: _cross_forward}
    with _lock:  # a layer with a forward of someone else's on the instance is left alone
        layers = [m for m in model.modules() if type(m) in replacement
                  and ("forward" not in vars(m) or id(m) in _users)] if enabled else []
        for layer in layers:
            if _users.get(id(layer), 0) == 0:
                layer.forward = types.MethodType(replacement[type(layer)], layer)
            _users[id(layer)] = _users.get(id(layer), 0) + 1
    try:
        yield len(layers)
    finally:
        with _lock:
            for layer in layers:
                _users[id(layer)] -= 1
                if _users[id(layer)] == 0:
                    del _users[id(layer)]
                    vars(layer).pop("forward", None)
