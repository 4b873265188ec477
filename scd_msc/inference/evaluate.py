"""Continuation quality on held-out clips, the same protocol for every model family.

For each clip of ``k + n`` frames the first ``k`` are the prompt; the model generates
``n`` frames with its stream session (caches on, guidance 1.0, context frames committed
at level ``context_noise``, one seeded generator for the whole run), and generated
frame ``j`` is compared with ground-truth frame ``k + j``: PSNR and SSIM (torchmetrics,
on [0, 1] after clamping to [-1, 1] and mapping), per clip and horizon step, then
averaged over clips per step. Ctrl-C (or SIGTERM) ends the run early with the clips
scored so far (``EvalResult.interrupted``); a batch is counted whole or not at all. For
a latent model a ``decoder`` maps the generated and the true latents to pixels, frame by
frame, and the scores are in pixel space.

Shapes: ``B`` batch · ``M`` clips · ``F`` frames · ``k`` context · ``n`` horizon ·
``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.streaming.fast import CompileArg
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

from scd_msc.inference.generate import InterruptGuard

if TYPE_CHECKING:
    from scd_msc.inference.latents import FrameDecoder

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window, shrunk for frames smaller than it


def frame_metrics(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """pred, target ``(B, F, C, H, W)`` in [-1, 1] -> PSNR (dB) and SSIM, each ``(B, F)``.

    PSNR is ``inf`` for identical frames; SSIM is 1.
    """
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: "
                         "expected the same (B, F, C, H, W) shape")
    b, f = pred.shape[:2]
    p = pred.detach().float().clamp(-1, 1).add(1).div(2).flatten(0, 1).cpu()  # (B·F, C, H, W) in [0, 1]
    t = target.detach().float().clamp(-1, 1).add(1).div(2).flatten(0, 1).cpu()
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (B·F,)
    side = min(p.shape[-2:])
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none",
                                               kernel_size=kernel)  # (B·F,)
    return psnr.reshape(b, f), ssim.reshape(b, f)


@dataclass
class EvalResult:
    """Per-clip metrics and a few example clips (ground truth and generated)."""

    context: int
    psnr: Tensor  # (M, n)
    ssim: Tensor  # (M, n)
    keys: list[str]
    truth: Tensor  # (E, k + n, C, H, W) the first E clips
    generated: Tensor  # (E, k + n, C, H, W): the prompt frames, then the generated ones
    interrupted: bool = False  # Ctrl-C / SIGTERM ended the run before ``total`` clips
    signum: Optional[int] = None  # the signal that did

    @property
    def clips(self) -> int:
        return self.psnr.shape[0]

    @property
    def horizon(self) -> int:
        return self.psnr.shape[1]

    def per_horizon(self) -> list[dict[str, Optional[float]]]:
        """``[{step, psnr, ssim}]`` (step 1 is the first generated frame), means over clips."""
        psnr, ssim = self.psnr.mean(0), self.ssim.mean(0)  # (n,)
        return [{"step": j + 1, "psnr": finite(psnr[j].item()), "ssim": finite(ssim[j].item())}
                for j in range(self.horizon)]

    def mean_1_8(self) -> tuple[Optional[float], Optional[float]]:
        """Mean PSNR and SSIM over horizon steps 1..min(8, n) and all clips."""
        m = min(8, self.horizon)
        return finite(self.psnr[:, :m].mean().item()), finite(self.ssim[:, :m].mean().item())


def finite(x: float) -> Optional[float]:
    """``x``, or None when it is inf/nan (JSON has no infinity; PSNR of a perfect match)."""
    return x if math.isfinite(x) else None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], context: int, steps: int, total: int,
             generator: Optional[torch.Generator] = None, examples: int = 4,
             progress: bool = True, context_noise: float = 0.0,
             decoder: Optional["FrameDecoder"] = None,
             sampler: Optional[Sampler] = None, compile: CompileArg = None) -> EvalResult:
    """Run the protocol on ``batches`` of ``{"video": (B, k + n, C, H, W), "key": [...]}``
    (at most ``total`` clips; latents when ``decoder`` is given, and the result holds
    pixels). Raises ValueError when no clip arrives, KeyboardInterrupt when interrupted
    before the first clip was scored."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    psnrs, ssims, keys, truth, generated = [], [], [], [], []
    bar = tqdm(total=total, unit="clip", desc="eval", disable=not progress)
    interrupted = False
    with InterruptGuard() as guard:
        try:
            for batch in batches:
                video = batch["video"][: total - len(keys)].to(device)  # (B, k + n, C, H, W)
                b, horizon = video.shape[0], video.shape[1] - context
                session = model.stream(b, steps, prompt=video[:, :context].to(dtype), generator=generator,
                                       context_noise=context_noise, sampler=sampler, compile=compile)
                if decoder is None:
                    pred = torch.stack([session.step() for _ in range(horizon)], dim=1)  # (B, n, C, H, W)
                else:  # latents -> pixels as they stream: the scores and the strip are in pixel space
                    pred = torch.stack([decoder(session.step()) for _ in range(horizon)], dim=1)
                    video = decoder.clip(video)  # (B, k + n, C, H, W)
                psnr, ssim = frame_metrics(pred, video[:, context:])
                with guard.critical():  # a batch is scored whole or not at all
                    psnrs.append(psnr)
                    ssims.append(ssim)
                    keys += list(batch["key"][:b])
                    if len(truth) < examples:
                        truth += list(video[:examples - len(truth)].cpu())
                        gen = torch.cat([video[:, :context], pred.float().clamp(-1, 1)], dim=1)  # (B, k + n, C, H, W)
                        generated += list(gen[:examples - len(generated)].cpu())
                bar.update(b)
                bar.set_postfix(psnr=f"{torch.cat(psnrs).mean().item():.2f}")
                if len(keys) >= total:
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    if not keys:
        if interrupted:
            raise KeyboardInterrupt
        raise ValueError("no clip was evaluated: the shards hold no usable clip")
    return EvalResult(context, torch.cat(psnrs), torch.cat(ssims), keys,
                      torch.stack(truth), torch.stack(generated), interrupted, guard.signum)
