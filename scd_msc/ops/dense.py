"""Dense frame attention: the SCD-dense ablation and the causal-DiT baseline.

Same interface as :class:`~scd_msc.ops.msc.MSCAttention` (so blocks take either), but
every head sees every position of the last ``window_frames`` frames (causal) or of
all frames (non-causal); no pooling, no gates.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` token grid · ``D`` width · ``h`` heads ·
``d`` head dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from einops import rearrange
from torch import Tensor, nn

from scd_msc.checks import positive_int
from scd_msc.ops.attention import window_attention
from scd_msc.ops.masks import dense_spec
from scd_msc.ops.embed import Rotary
from scd_msc.ops.msc import MSCAttentionConfig, prepare_qkv, upgrade_qkv

if TYPE_CHECKING:  # streaming builds the caches; the layer only reads and writes them
    from scd_msc.streaming.cache import DenseCache


class DenseAttention(nn.Module):
    """qkv → dense (frame-causal) attention → output projection."""

    def __init__(self, cfg: MSCAttentionConfig, window_frames: Optional[int] = None):
        super().__init__()
        cfg.validate()
        positive_int("window_frames", window_frames, allow_none=True)
        self.cfg, self.window_frames = cfg, window_frames
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv_all = nn.Linear(cfg.dim, 3 * cfg.dim)  # rows (q|k|v, head, channel)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, t: Optional[Tensor], positions: Union[Tensor, Rotary],
                cache: Optional["DenseCache"] = None, write: bool = False) -> Tensor:
        """x ``(B, F, Hp, Wp, D)``, t ``(B, F)`` (unused: no gates), positions: frame
        indices ``(F,)`` or a :class:`Rotary`; with ``cache`` the frames follow the cached
        ones, and ``write`` appends them to it. Returns ``(B, F, Hp, Wp, D)``."""
        b, f, hp, wp, _ = x.shape
        if cache is not None and not self.cfg.causal:
            raise ValueError("a cache needs a causal layer (cfg.causal=True)")
        qkv = rearrange(self.qkv_all(x), "b f y x (n h d) -> n b f y x h d", n=3, h=self.heads)
        tables = Rotary.of(positions).tables(self.head_dim, 1, (hp, wp))
        q, k, v = prepare_qkv(self, qkv, tables)  # (B, F, Hp, Wp, h, d)
        if cache is not None:
            k, v = cache.kv.extend(k, v, write)
        spec = dense_spec(self.window_frames, k.shape[1], (hp, wp), self.cfg.causal)
        o = window_attention(q, k, v, spec, self.cfg.backend)  # (B, F, Hp, Wp, h, d)
        return self.proj(rearrange(o, "b f y x h d -> b f y x (h d)"))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - nn.Module's
        upgrade_qkv(state_dict, prefix, self.heads, self.head_dim, {"qkv_all": (0, self.heads)})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
