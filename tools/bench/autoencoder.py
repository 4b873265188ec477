"""What ``tools/bench_autoencoder.py`` measures on a trained ``scd-msc train-ae``
checkpoint: reconstruction quality on held-out frames and the decoder's latency at batch 1.

* Quality: PSNR and SSIM per frame (``scd_msc.inference.evaluate.frame_metrics``, the
  definition ``scd-msc eval`` uses: torchmetrics on frames in [0, 1]), averaged over the
  first ``--eval-frames`` frames of the held-out shards, encoded and decoded in fp32.
* Latency of ``decode`` on one latent frame ``(1, c, h, w)``: eager in fp32, and the fast
  path on CUDA: the decoder ``generate``, ``eval`` and ``play`` use
  (``scd_msc.inference.codec.AutoencoderCodec``: ``decode`` compiled and replayed from a
  CUDA graph, fp32 in and out). Medians of CUDA-event timings after warm-up
  (``tools/bench/timing.py``); compile time reported apart. ``psnr_fast``: PSNR of every
  held-out frame decoded one at a time through the fast path, so its numerics are
  checked, not assumed. (The run of 2026-12-02 timed an earlier harness path instead:
  ``torch.compile`` of ``decode`` under bf16 autocast, graph-replayed.)

Shapes: ``N`` frames · ``C, H, W`` pixels · ``c, h, w`` latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from scd_msc.ae_config import AEExperimentConfig
from scd_msc.checkpoint import LoadedAutoencoder
from scd_msc.data import ClipDataset
from scd_msc.data.probe import probe_shards
from scd_msc.inference.codec import AutoencoderCodec
from scd_msc.inference.evaluate import frame_metrics
from scd_msc.models.autoencoder import FrameAutoencoder
from scd_msc.training.callbacks import video_strip
from tools.bench.timing import time_cuda, time_once

BATCH = 64  # frames per encode/decode batch of the quality pass


def held_out_frames(cfg: AEExperimentConfig, count: int) -> Tensor:
    """The first ``count`` frames of ``cfg.data.val_shards`` (whole clips, in shard order),
    ``(N, C, H, W)`` in [-1, 1]; fewer when the shards hold fewer."""
    info = probe_shards(cfg.data.val_shards)
    clips = ClipDataset(cfg.data.val_shards, info.frames or cfg.data.clip_frames, cfg.data.channels,
                        cfg.data.image_size, resampled=False, resize=cfg.data.resize)
    frames, total = [], 0
    for clip in clips:
        frames.append(clip["video"])  # (F, C, H, W)
        total += clip["video"].shape[0]
        if total >= count:
            break
    if not frames:
        raise ValueError(f"data.val_shards={cfg.data.val_shards!r}: no usable clip")
    return torch.cat(frames)[:count]


@torch.no_grad()
def reconstruct(ae: FrameAutoencoder, frames: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Latents ``(N, c, h, w)`` and fp32 reconstructions ``(N, C, H, W)`` (on the CPU)."""
    latents, recons = [], []
    for x in frames.split(BATCH):
        z = ae.encode(x.to(device))
        latents.append(z)
        recons.append(ae.decode(z).float().cpu())
    return torch.cat(latents), torch.cat(recons)


def quality(recon: Tensor, frames: Tensor) -> tuple[float, float]:
    """Mean per-frame PSNR (dB) and SSIM of ``recon`` against ``frames``, both ``(N, C, H, W)``."""
    psnr, ssim = frame_metrics(recon[None], frames[None])  # (1, N) each
    return float(psnr.mean()), float(ssim.mean())


def decode_timing(loaded: LoadedAutoencoder, latents: Tensor, frames: Tensor, device: torch.device,
                  iters: int) -> dict[str, Any]:
    """Batch-1 decode latency, eager (fp32) and fast (CUDA only: the streaming paths'
    :class:`AutoencoderCodec`), and ``psnr_fast``."""
    ae = loaded.model
    z1 = latents[:1].contiguous()  # (1, c, h, w)
    out: dict[str, Any] = {"decode_ms_eager": None, "decode_ms_fast": None, "compile_s": None, "psnr_fast": None}
    with torch.no_grad():
        out["decode_ms_eager"] = time_cuda(lambda: ae.decode(z1), warmup=5, iters=iters, device=device)["median_ms"]
    if device.type != "cuda":
        return out
    fast = AutoencoderCodec(loaded, device)  # compiled + CUDA graph, as generate/eval/play decode
    out["compile_s"] = time_once(lambda: fast(z1), device)
    out["decode_ms_fast"] = time_cuda(lambda: fast(z1), warmup=20, iters=iters, device=device)["median_ms"]
    recon = torch.cat([fast(z[None]).float().cpu() for z in latents])  # (N, C, H, W), one frame per replay
    out["psnr_fast"] = quality(recon, frames)[0]
    return out


def decoder_cost(ae: FrameAutoencoder, latent_shape: tuple[int, ...]) -> dict[str, float]:
    """GFLOP of one decoded frame (``torch.utils.flop_counter``) and the decoder's parameters (M)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(ae.decoder.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ae.decoder(torch.zeros(1, *latent_shape, device=param.device, dtype=param.dtype))
    return {"decoder_gflop": counter.get_total_flops() / 1e9,
            "decoder_params_m": sum(p.numel() for p in ae.decoder.parameters()) / 1e6}


def comparison_strip(frames: Tensor, recon: Tensor, count: int = 8) -> np.ndarray:
    """uint8 image: ``count`` held-out frames (evenly spread) above their reconstructions."""
    pick = torch.linspace(0, frames.shape[0] - 1, min(count, frames.shape[0])).long()
    pair = torch.stack([frames[pick], recon[pick].clamp(-1, 1)])  # (2, count, C, H, W)
    return video_strip(pair, scale=max(1, 128 // frames.shape[-1]))

