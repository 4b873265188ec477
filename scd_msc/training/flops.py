"""Model FLOPs of one training step, counted from the architecture (for MFU).

Model FLOPs utilisation (MFU, PaLM's definition) is the FLOPs the model needs — not the
ones the hardware happens to run (recomputation, padding, masked-out attention) — per
second, over the chip's peak. Per token of a block of width ``D`` and MLP ratio ``r`` the
linear layers cost ``2·(4 + 2r)·D²`` forward (qkv, output projection, MLP; an MSC
layer's low-res heads project pooled tokens, so their share of qkv counts those); attention
costs ``4·d`` per (query, key) pair and head (``q·kᵀ`` and ``p·v``), with the exact pair
counts of the masks (:func:`scd_msc.ops.masks.window_pairs`), so MSC's local windows
are credited only with the pairs they attend. Backward costs twice the forward: a
training step is ``3×`` the forward. Per-frame embeddings, norms, gates and the
patch/unpatch projections are left out (under 1% at the presets' sizes).

Shapes: ``B`` clips · ``F`` frames · ``N`` tokens per frame · ``K`` decoder noise draws.
"""

from __future__ import annotations

from scd_msc.diffusion import FlowConfig
from scd_msc.models.config import ModelConfig
from scd_msc.ops.masks import dense_spec, frame_causal_pairs, hires_spec, lowres_spec, window_pairs
from scd_msc.ops.schedule import MSCLayerSpec, build_schedule

# dense bf16 matrix peak (TFLOP/s) by GPU name, from the vendors' datasheets
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak of a GPU named ``device_name``, or None if unknown."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name.upper()), None)


def _linear(cfg: ModelConfig, tokens: int) -> float:
    return 2.0 * (4 + 2 * cfg.mlp_ratio) * cfg.dim ** 2 * tokens


def _msc_linear(cfg: ModelConfig, spec: MSCLayerSpec, frames: int) -> float:
    """The linear layers of one MSC block over ``frames`` frames: the low-res heads'
    share of qkv projects the pooled tokens (``MSCAttention.project``)."""
    g, h_hi = cfg.grid, cfg.attention.hires_count(cfg.heads)
    pooled_tokens = (-(-g // spec.down)) ** 2
    qkv_rows = (h_hi * g * g + (cfg.heads - h_hi) * pooled_tokens) / cfg.heads
    return 2.0 * cfg.dim ** 2 * frames * ((1 + 2 * cfg.mlp_ratio) * g * g + 3 * qkv_rows)


def _msc_attention(cfg: ModelConfig, spec: MSCLayerSpec, q_frames: int, kv_frames: int, causal: bool) -> float:
    """Forward attention FLOPs of one MSC layer over one sample."""
    g, d, h_hi = cfg.grid, cfg.dim // cfg.heads, cfg.attention.hires_count(cfg.heads)
    pooled = -(-g // spec.down)
    hi = window_pairs(hires_spec(spec.window, spec.frames, causal), q_frames, kv_frames, g, g)
    lo_spec = lowres_spec((pooled, pooled), spec.stride, spec.strided_frames, kv_frames, causal)
    lo = window_pairs(lo_spec, q_frames, kv_frames, pooled, pooled)
    return 4.0 * d * (h_hi * hi + (cfg.heads - h_hi) * lo)


def _dense_attention(cfg: ModelConfig, frames: int, causal: bool, window: int | None) -> float:
    n = cfg.grid ** 2
    if causal and window is None:
        pairs = frame_causal_pairs(frames, frames, n)
    else:
        pairs = window_pairs(dense_spec(window, frames, (cfg.grid, cfg.grid), causal), frames, frames,
                             cfg.grid, cfg.grid)
    return 4.0 * cfg.dim * pairs  # heads · d = D


def training_flops(cfg: ModelConfig, flow: FlowConfig, batch: int, frames: int) -> float:
    """Model FLOPs of one optimizer step on ``batch`` clips of ``frames`` frames (forward
    and backward)."""
    n = cfg.grid ** 2
    if cfg.family == "causal-dit":  # every block over the F frames, frame-causal
        per_clip = (cfg.enc_depth + cfg.dec_depth) * (
            _linear(cfg, frames * n) + _dense_attention(cfg, frames, True, cfg.dense_window_frames))
        return 3.0 * batch * per_clip
    ctx = frames - 1  # the encoder runs once over frames 0..F-2
    stack = 2 if cfg.conditioning == "token_concat" else 1  # the decoder's [c ; x_t] "frames"
    causal = cfg.decoder_context == "prefix"
    if cfg.family == "scd-msc":
        encoder = sum(_msc_linear(cfg, s, ctx) + _msc_attention(cfg, s, ctx, ctx, True)
                      for s in build_schedule(cfg.schedule, cfg.enc_depth))
        spec = MSCLayerSpec(down=cfg.decoder_down, window=cfg.decoder_window, frames=2, stride=1,
                            strided_frames=None)
        decoder = cfg.dec_depth * (_msc_linear(cfg, spec, stack) + _msc_attention(cfg, spec, stack, stack, causal))
    else:
        encoder = cfg.enc_depth * (_linear(cfg, ctx * n) + _dense_attention(cfg, ctx, True, cfg.dense_window_frames))
        decoder = cfg.dec_depth * (_linear(cfg, stack * n) + _dense_attention(cfg, stack, causal, None))
    return 3.0 * batch * (encoder + flow.decoder_multi_batch * frames * decoder)
