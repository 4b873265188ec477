"""Continuation quality on held-out clips, the same protocol for every model family.

For each clip of ``k + n`` frames the first ``k`` are the prompt; the model generates
``n`` frames with its stream session (caches on, context guidance 1.0, context frames
committed at level ``context_noise``, one seeded generator for the whole run), and
generated frame ``j`` is compared with ground-truth frame ``k + j``: PSNR and SSIM
(torchmetrics, on [0, 1] after clamping to [-1, 1] and mapping), per clip and horizon
step, then averaged over clips per step. Three sets of scores, on the same clips:

* **true actions** (``EvalResult.psnr``/``ssim``): a conditioned model gets each clip's
  own conditions: the prompt's actions as ``prompt_actions``, action ``k + j`` for
  horizon frame ``j`` (``actions[:, i]`` leads to frame ``i``), the clip's label.
* **shuffled actions** (``EvalResult.shuffled``, models conditioned on actions): the same
  clips, prompts, prompt actions, labels and noise, but the horizon actions of another
  clip of the batch (a seeded derangement: no clip keeps its own; a batch of one clip
  takes those of a clip of the batch before, and the first such clip has none). How
  much the model listens to its actions: the gap to the true-action scores.
* **repeat last** (``EvalResult.repeat_last``): every horizon frame predicted as the last
  context frame, no model involved: the floor any model must beat.
* **teacher-forced** (``EvalResult.teacher_forced``, when asked): next-frame prediction
  from the true history: horizon frame ``j`` is denoised after the true frames ``0 ..
  k + j - 1`` (and their actions) were committed, then the true frame ``k + j`` is
  committed in its place, so no error carries over from one frame to the next.

The shuffled and teacher-forced runs replay the true run's noise. Next to the scores,
the **mean colour** of every generated and true horizon frame (per channel, on [0, 1];
``EvalResult.colour``/``colour_truth``): how far a long rollout drifts from the data
(``colour_ratios``).

PSNR of identical frames is infinite; it is counted as ``PSNR_MAX`` (100 dB: an MSE of
1e-10) so that a clip whose frames stop changing (a game standing still) does not make a
mean infinite. Ctrl-C (or SIGTERM) ends the run early with the clips scored so far
(``EvalResult.interrupted``); a batch is counted whole or not at all. For a latent model
a ``decoder`` maps the generated latents to pixels, frame by frame, and the scores are in
pixel space: against the true frames when the batches carry them (``pixels``: clips
encoded by an autoencoder, :mod:`scd_msc.inference.latents`), else against the decoded
true latents. With the true frames a fourth set is scored:

* **autoencoder ceiling** (``EvalResult.ceiling``): ``decode(encode(true frame))`` against
  the true frame, no model involved: the best any model on these latents can score.

Shapes: ``B`` batch · ``M`` clips · ``F`` frames · ``k`` context · ``n`` horizon ·
``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from torch import Tensor, nn
from scd_msc.streaming.fast import CompileArg
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

from scd_msc.diffusion import Sampler
from scd_msc.inference.conditions import stream_kwargs
from scd_msc.inference.generate import InterruptGuard
from scd_msc.models.ae_objective import ssim_kernel

if TYPE_CHECKING:
    from scd_msc.inference.latents import FrameDecoder

PSNR_MAX = 100.0  # dB: the PSNR of identical frames (an MSE of 1e-10 on [0, 1])
COLOUR_WINDOW = 64  # horizon steps per window of colour_ratios


def frame_metrics(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """pred, target ``(B, F, C, H, W)`` in [-1, 1] -> PSNR (dB) and SSIM, each ``(B, F)``.

    PSNR is ``PSNR_MAX`` for identical frames (not infinite); SSIM is 1.
    """
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: "
                         "expected the same (B, F, C, H, W) shape")
    b, f = pred.shape[:2]
    p = pred.detach().float().clamp(-1, 1).add(1).div(2).flatten(0, 1).cpu()  # (B·F, C, H, W) in [0, 1]
    t = target.detach().float().clamp(-1, 1).add(1).div(2).flatten(0, 1).cpu()
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (B·F,)
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none",
                                               kernel_size=ssim_kernel(*p.shape[-2:]))  # (B·F,)
    return psnr.clamp(max=PSNR_MAX).reshape(b, f), ssim.reshape(b, f)


def mean_colour(frames: Tensor) -> Tensor:
    """frames ``(B, F, C, H, W)`` in [-1, 1] -> the mean of each channel on [0, 1], ``(B, F, C)`` (CPU, float32)."""
    return frames.detach().float().clamp(-1, 1).add(1).div(2).mean(dim=(-2, -1)).cpu()


def colour_ratios(colour: Tensor, truth: Tensor, window: int = COLOUR_WINDOW) -> Tensor:
    """Mean colour of the generated frames ÷ the data's, ``(W, C)``: per window of ``window``
    horizon steps (the last may be shorter) and channel, each mean over the clips and the
    window's steps. ``colour``, ``truth``: ``(M, n, C)`` from :func:`mean_colour`."""
    starts = range(0, colour.shape[1], window)
    return torch.stack([colour[:, i:i + window].mean((0, 1)) / truth[:, i:i + window].mean((0, 1))
                        for i in starts])  # (W, C)


def worst_ratio(ratios: Tensor) -> float:
    """The entry of ``ratios`` farthest from 1 (the one a ±x% bar is decided by)."""
    flat = ratios.flatten()
    return float(flat[(flat - 1).abs().argmax()])


def finite(x: float) -> Optional[float]:
    """``x``, or None when it is inf/nan (JSON has neither: no clip was scored)."""
    return x if math.isfinite(x) else None


@dataclass
class Scores:
    """PSNR and SSIM ``(M, n)`` of one set (NaN where a clip has no score)."""

    psnr: Tensor
    ssim: Tensor

    @property
    def clips(self) -> int:
        """Clips with scores."""
        return int((~self.psnr.isnan().all(1)).sum())

    def per_horizon(self) -> list[dict[str, Optional[float]]]:
        """``[{step, psnr, ssim}]`` (step 1 is the first generated frame), means over clips."""
        psnr, ssim = self.psnr.nanmean(0), self.ssim.nanmean(0)  # (n,)
        return [{"step": j + 1, "psnr": finite(psnr[j].item()), "ssim": finite(ssim[j].item())}
                for j in range(self.psnr.shape[1])]

    def mean_1_8(self) -> tuple[Optional[float], Optional[float]]:
        """Mean PSNR and SSIM over horizon steps 1..min(8, n) and all clips."""
        m = min(8, self.psnr.shape[1])
        return finite(self.psnr[:, :m].nanmean().item()), finite(self.ssim[:, :m].nanmean().item())

    def clip_psnr_1_8(self) -> list[Optional[float]]:
        """Each clip's mean PSNR over steps 1..8 (for paired comparisons)."""
        return [finite(v) for v in self.psnr[:, :8].mean(1).tolist()]

    @staticmethod
    def cat(parts: list["Scores"]) -> "Scores":
        return Scores(torch.cat([p.psnr for p in parts]), torch.cat([p.ssim for p in parts]))


@dataclass
class EvalResult:
    """Per-clip metrics of the three sets and a few example clips."""

    context: int
    psnr: Tensor  # (M, n) with the true actions (or an unconditioned model)
    ssim: Tensor  # (M, n)
    keys: list[str]
    truth: Tensor  # (E, k + n, C, H, W) the first E clips
    generated: Tensor  # (E, k + n, C, H, W): the prompt frames, then the generated ones
    interrupted: bool = False  # Ctrl-C / SIGTERM ended the run before ``total`` clips
    signum: Optional[int] = None  # the signal that did
    repeat_last: Optional[Scores] = None  # the last context frame repeated (no model)
    shuffled: Optional[Scores] = None  # the horizon actions of other clips (models with actions)
    shuffled_generated: Optional[Tensor] = None  # (E, k + n, C, H, W), when every example has them
    ceiling: Optional[Scores] = None  # decode(encode(true frames)) (a latent model given the true frames)
    teacher_forced: Optional[Scores] = None  # next frame from the true history (when asked)
    colour: Optional[Tensor] = None  # (M, n, C) mean colour of the generated frames
    colour_truth: Optional[Tensor] = None  # (M, n, C) the same of the true frames

    @property
    def clips(self) -> int:
        return self.psnr.shape[0]

    @property
    def horizon(self) -> int:
        return self.psnr.shape[1]

    @property
    def scores(self) -> Scores:
        """The main scores: true actions."""
        return Scores(self.psnr, self.ssim)

    def per_horizon(self) -> list[dict[str, Optional[float]]]:
        return self.scores.per_horizon()

    def mean_1_8(self) -> tuple[Optional[float], Optional[float]]:
        return self.scores.mean_1_8()


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A seeded permutation of ``0 .. n-1`` without a fixed point (``n >= 2``): one random
    cycle through a random order, so ``perm[order[i]] = order[i + 1]``."""
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def shuffled_actions(actions: Tensor, previous: Optional[Tensor], generator: torch.Generator) -> Optional[Tensor]:
    """Horizon actions ``(B, n)`` given to other clips: a derangement of the batch's rows;
    a batch of one clip takes a row of ``previous`` (the batch before; None: no row)."""
    if actions.shape[0] >= 2:
        return actions[derangement(actions.shape[0], generator).to(actions.device)]
    if previous is None:
        return None
    return previous[int(torch.randint(previous.shape[0], (1,), generator=generator))][None]


def repeat_last(video: Tensor, context: int) -> Tensor:
    """The floor's prediction ``(B, n, C, H, W)``: frame ``k - 1`` of ``video (B, k + n, ...)``, ``n`` times."""
    return video[:, context - 1:context].expand(-1, video.shape[1] - context, -1, -1, -1)


@dataclass
class Scored:
    """One batch through the protocol: its scores and predictions ``(B, n, C, H, W)``."""

    pixels: Tensor  # (B, k + n, C, H, W) the clips (decoded for a latent model)
    pred: Tensor
    true: Scores
    floor: Scores
    shuffled: Optional[Scores] = None  # models with actions (NaN for a clip without shuffled actions)
    pred_shuffled: Optional[Tensor] = None
    ceiling: Optional[Scores] = None  # the autoencoder's round trip, when the true frames are given
    teacher_forced: Optional[Scores] = None


@dataclass
class Protocol:
    """The settings of one evaluation and the state that runs across its batches: the
    noise ``generator`` and, for the shuffled actions, their generator and the previous
    batch's horizon actions. ``shuffle``: score the shuffled actions (models with actions);
    ``teacher_forced``: score next-frame prediction from the true history."""

    model: nn.Module
    context: int
    steps: int
    generator: Optional[torch.Generator] = None
    context_noise: float = 0.0
    sampler: Optional[Sampler] = None
    decoder: Optional["FrameDecoder"] = None
    cond_guidance: float = 1.0
    shuffle_seed: int = 0
    compile: CompileArg = None
    shuffle: bool = True
    teacher_forced: bool = False

    def __post_init__(self) -> None:
        self.shuffle_generator = torch.Generator().manual_seed(self.shuffle_seed)
        self.previous: Optional[Tensor] = None

    def session(self, video: Tensor, conditions: dict):
        """A stream session prompted with ``video[:, :k]``."""
        dtype = next(self.model.parameters()).dtype
        return self.model.stream(video.shape[0], self.steps, prompt=video[:, :self.context].to(dtype),
                                 generator=self.generator, context_noise=self.context_noise,
                                 sampler=self.sampler, compile=self.compile, **conditions)

    def pixels(self, frame: Tensor) -> Tensor:
        """A generated frame ``(B, C, H, W)`` as pixels (decoded when the model makes latents)."""
        return frame if self.decoder is None else self.decoder(frame)

    def continuation(self, video: Tensor, conditions: dict, actions: Optional[Tensor]) -> Tensor:
        """The model's ``n`` frames ``(B, n, C, H, W)`` after ``video[:, :k]``; horizon frame
        ``j`` made with ``actions[:, j]`` (``actions (B, n)`` or None). Pixels with a decoder."""
        session = self.session(video, conditions)
        frames = []
        for j in range(video.shape[1] - self.context):
            frame = session.step() if actions is None else session.step(actions[:, j])
            frames.append(self.pixels(frame))
        return torch.stack(frames, dim=1)  # (B, n, C, H, W)

    def next_frames(self, video: Tensor, conditions: dict, actions: Optional[Tensor]) -> Tensor:
        """Teacher forcing: horizon frame ``j`` ``(B, n, C, H, W)`` denoised after the true
        frames ``< k + j``; the true frame ``k + j`` is then committed in its place."""
        session = self.session(video, conditions)
        dtype = next(self.model.parameters()).dtype
        frames = []
        for j in range(video.shape[1] - self.context):
            action = None if actions is None else actions[:, j]
            frames.append(self.pixels(session.denoise(action)))
            session.commit(video[:, self.context + j].to(dtype), action)
        return torch.stack(frames, dim=1)  # (B, n, C, H, W)

    def replaying(self, start: Optional[Tensor], run, *args) -> Tensor:
        """``run(*args)`` with the noise generator at ``start`` (the true run's noise)."""
        if start is not None:
            self.generator.set_state(start)
        return run(*args)

    def score(self, video: Tensor, actions: Optional[Tensor], labels: Optional[Tensor],
              true_pixels: Optional[Tensor] = None) -> Scored:
        """The sets for clips ``video (B, k + n, C, H, W)`` with their ``actions
        (B, k + n)`` and ``labels (B,)`` (None: the model does not take them); the
        autoencoder's ceiling too when ``true_pixels (B, k + n, C', H', W')`` (the frames
        ``video`` encodes) are given."""
        k = self.context
        conditions = stream_kwargs(None if actions is None else actions[:, :k], labels, self.cond_guidance)
        horizon = None if actions is None else actions[:, k:]  # (B, n)
        start = None if self.generator is None else self.generator.get_state()
        pred = self.continuation(video, conditions, horizon)
        after = None if self.generator is None else self.generator.get_state()
        pixels = true_pixels if true_pixels is not None else video if self.decoder is None else self.decoder.clip(video)
        target = pixels[:, k:]  # (B, n, C, H, W)
        out = Scored(pixels, pred, Scores(*frame_metrics(pred, target)),
                     Scores(*frame_metrics(repeat_last(pixels, k), target)))
        if true_pixels is not None and self.decoder is not None:
            out.ceiling = Scores(*frame_metrics(self.decoder.clip(video[:, k:]), target))
        if horizon is not None and self.shuffle:
            other = shuffled_actions(horizon, self.previous, self.shuffle_generator)
            self.previous = horizon
            if other is None:
                nan = torch.full_like(out.true.psnr, math.nan)
                out.shuffled = Scores(nan, nan.clone())
            else:
                out.pred_shuffled = self.replaying(start, self.continuation, video, conditions, other)
                out.shuffled = Scores(*frame_metrics(out.pred_shuffled, target))
        if self.teacher_forced:
            forced = self.replaying(start, self.next_frames, video, conditions, horizon)
            out.teacher_forced = Scores(*frame_metrics(forced, target))
        if after is not None:
            self.generator.set_state(after)
        return out


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], context: int, steps: int, total: int,
             generator: Optional[torch.Generator] = None, examples: int = 4,
             progress: bool = True, context_noise: float = 0.0,
             decoder: Optional["FrameDecoder"] = None,
             sampler: Optional[Sampler] = None, cond_guidance: float = 1.0,
             shuffle_seed: int = 0, compile: CompileArg = None, shuffle: bool = True,
             teacher_forced: bool = False) -> EvalResult:
    """Run the protocol on ``batches`` of ``{"video": (B, k + n, C, H, W), "key": [...]}``
    plus ``actions (B, k + n)`` / ``label (B,)`` for a model conditioned on them (at most
    ``total`` clips; latents when ``decoder`` is given, and the result holds pixels; the
    true frames as ``pixels (B, k + n, C, H, W)`` when the clips were encoded). The
    shuffled-action run (``shuffle``) and the teacher-forced one (``teacher_forced``) replay
    the true run's noise; ``shuffle_seed`` seeds the derangements. Raises ValueError when
    no clip arrives, KeyboardInterrupt when interrupted before the first clip was scored."""
    device = next(model.parameters()).device
    cfg = model.cfg
    protocol = Protocol(model, context, steps, generator, context_noise, sampler, decoder, cond_guidance,
                        shuffle_seed, compile, shuffle, teacher_forced)
    true, floor, shuffled, forced, ceiling = [], [], [], [], []  # Scores per batch
    colour, colour_truth = [], []  # (B, n, C) per batch
    keys: list[str] = []
    truth, generated, shuffled_generated = [], [], []  # the first examples, each (k + n, C, H, W)
    bar = tqdm(total=total, unit="clip", desc="eval", disable=not progress)
    interrupted = False
    with InterruptGuard() as guard:
        try:
            for batch in batches:
                video = batch["video"][: total - len(keys)].to(device)  # (B, k + n, C, H, W)
                b = video.shape[0]
                actions = batch["actions"][:b].to(device) if cfg.actions else None  # (B, k + n)
                labels = batch["label"][:b].to(device) if cfg.classes else None  # (B,)
                pixels = batch["pixels"][:b].to(device) if "pixels" in batch else None  # (B, k + n, C', H', W')
                scored = protocol.score(video, actions, labels, pixels)
                with guard.critical():  # a batch is scored whole or not at all
                    true.append(scored.true)
                    floor.append(scored.floor)
                    shuffled += [] if scored.shuffled is None else [scored.shuffled]
                    ceiling += [] if scored.ceiling is None else [scored.ceiling]
                    forced += [] if scored.teacher_forced is None else [scored.teacher_forced]
                    colour.append(mean_colour(scored.pred))
                    colour_truth.append(mean_colour(scored.pixels[:, context:]))
                    keys += list(batch["key"][:b])
                    take = examples - len(truth)
                    if take > 0:
                        truth += list(scored.pixels[:take].float().cpu())
                        generated += list(_with_prompt(scored.pixels[:take], scored.pred[:take]))
                        if scored.pred_shuffled is not None:
                            shuffled_generated += list(_with_prompt(scored.pixels[:take],
                                                                    scored.pred_shuffled[:take]))
                bar.update(b)
                bar.set_postfix(psnr=f"{torch.cat([s.psnr for s in true]).mean().item():.2f}")
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
    main = Scores.cat(true)
    return EvalResult(context, main.psnr, main.ssim, keys, torch.stack(truth), torch.stack(generated),
                      interrupted, guard.signum, repeat_last=Scores.cat(floor),
                      shuffled=Scores.cat(shuffled) if shuffled else None,
                      shuffled_generated=(torch.stack(shuffled_generated)
                                          if len(shuffled_generated) == len(truth) else None),
                      ceiling=Scores.cat(ceiling) if ceiling else None,
                      teacher_forced=Scores.cat(forced) if forced else None,
                      colour=torch.cat(colour), colour_truth=torch.cat(colour_truth))


def _with_prompt(pixels: Tensor, pred: Tensor) -> Tensor:
    """The prompt frames of ``pixels (B, k + n, ...)`` followed by ``pred (B, n, ...)``, on the CPU."""
    context = pixels.shape[1] - pred.shape[1]
    return torch.cat([pixels[:, :context].float(), pred.float().clamp(-1, 1)], dim=1).cpu()  # (B, k + n, C, H, W)
