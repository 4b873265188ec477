"""The exponential moving average (EMA) of the trained weights: its warm-up, and which
weights ``auto`` hands out. No Lightning here: training plugs :func:`ema_update_fn` into
Lightning's ``WeightAveraging`` callback (``scd_msc/training/callbacks.py``); inference
(``scd_msc/checkpoint.py``, ``--weights``) asks :func:`choose_weights`.

**Warm-up.** With a constant decay ``d`` the first averaged weights (those after step 1,
nearly the random init) keep the share ``d^n`` of the average after ``n`` updates:
``0.99^100 = 37%``. So a short run's average is mostly an untrained network
(``configs/moving_digits_tiny.yaml``'s settings, step 100: validation loss 1.12 for the
EMA, 0.29 for the trained weights). With ``train.ema_warmup`` (the default) update
``n + 1`` uses the decay::

    d_n = min(d, (1 + n) / (10 + n))        n = updates before this one (n_averaged)

the classic warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and
timm's ``ModelEmaV2``. The average then spans about the last ``(10 + n) / 9`` updates,
so it follows training from the first steps (same run, step 100: 0.30 vs 0.29), and
the decay reaches ``d`` after ``9 / (1 - d) - 10`` updates (890 at 0.99, 8990 at 0.999).

Why not Lightning's ``EMAWeightAveraging(update_starting_at_step=s)``: a delayed start
copies the weights of step ``s`` and then decays at the full ``d``, so at step
``s + 100`` those weights still hold 37% of the average at 0.99. That moves the problem
by ``s``, and a good ``s`` depends on the run's length. The warm-up depends only on the
number of updates, which every checkpoint stores (``averaging_state["n_averaged"]``).

**When ``auto`` uses the EMA.** The average effectively spans ``1 / (1 - d_n)`` updates
(its window). ``auto`` uses it once that window is at most a tenth of the ``n`` updates
it has seen, i.e. from :func:`min_ema_updates` ``= 10 / (1 - d)`` updates (1000 at
0.99, 10 000 at 0.999). Then the average covers about the last 10% of training, and
with a constant decay (``ema_warmup=false``, older checkpoints) the first weights keep
at most ``e^-10`` of it. During the warm-up the window is ``(10 + n) / 9``, more than a
tenth of ``n``: while the loss still falls fast the average lags the trained weights,
and ``auto`` hands out the trained ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

from scd_msc.checks import number

WEIGHTS = ("auto", "ema", "trained")
WARMUP_OFFSET = 10  # d_n = min(d, (1 + n) / (WARMUP_OFFSET + n))
AUTO_WINDOWS = 10  # auto uses the EMA once its window is at most 1/AUTO_WINDOWS of its updates


def warmup_decay(decay: float, n: Tensor | int) -> Tensor:
    """The decay of the update that follows ``n`` earlier ones: ``min(decay, (1+n)/(10+n))``."""
    n = torch.as_tensor(n, dtype=torch.float32)  # float64: not on every device (MPS)
    return torch.clamp((1 + n) / (WARMUP_OFFSET + n), max=decay)


def ema_update_fn(decay: float, warmup: bool = True) -> Callable[[Sequence[Tensor], Sequence[Tensor], Any], None]:
    """A ``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: ``average <- d·average
    + (1 - d)·current`` over one group of same-device, same-dtype tensors. ``AveragedModel``
    copies the weights at its first update and calls this from the second one on, with
    ``n`` = updates so far (its ``n_averaged`` buffer, on the tensors' device)."""
    number("decay", decay, low=0, high=1, high_open=True)
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: Sequence[Tensor], current: Sequence[Tensor], n: Any) -> None:
        if not torch.is_floating_point(averaged[0]):  # integer buffers have no average: follow
            torch._foreach_copy_(averaged, current)
            return
        # the weight stays a tensor on the device: no host sync per training step
        weight = (1 - warmup_decay(decay, n).to(averaged[0].device)).to(averaged[0].dtype)
        torch._foreach_lerp_(averaged, current, [weight] * len(averaged))

    return update


def min_ema_updates(decay: float) -> int:
    """Updates from which ``auto`` uses the EMA: ``10 / (1 - decay)`` (1000 at 0.99)."""
    return math.ceil(AUTO_WINDOWS / (1 - decay) - 1e-6)  # 1e-6: 10 / (1 - 0.99) = 1000.0000000000009


@dataclass(frozen=True)
class WeightChoice:
    """Which weights of a checkpoint are used (``weights``: ``ema`` or ``trained``), what
    was asked for, and why. ``ema_updates``/``auto_from`` are ``None`` when unknown."""

    weights: str
    requested: str
    ema_updates: Optional[int]
    auto_from: Optional[int]
    reason: str

    def line(self) -> str:
        """``weights: trained (EMA has 40 updates; auto uses it from 1000)``."""
        return f"weights: {self.weights} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class WeightsError(ValueError):
    """A bad ``weights`` request; the message starts with ``weights=<value>:`` (the command
    line prefixes it with ``--``)."""


def check_weights(value: str) -> None:
    """``value`` must be one of :data:`WEIGHTS`."""
    if value not in WEIGHTS:
        raise WeightsError(f"weights={value!r}: expected one of {', '.join(WEIGHTS)}")


def choose_weights(requested: str, has_ema: bool, ema_updates: Optional[int] = None,
                   decay: Optional[float] = None, where: str = "the checkpoint") -> WeightChoice:
    """``requested`` (``auto``, ``ema``, ``trained``) applied to a checkpoint that holds
    EMA weights or not, with the EMA's update count and decay when it records them.
    Raises :class:`WeightsError` for an unknown request and for ``ema`` without EMA weights."""
    check_weights(requested)
    if not has_ema:
        if requested == "ema":
            raise WeightsError(f"weights='ema': {where} holds no EMA weights (trained with train.ema_decay=0); "
                             "expected auto or trained")
        why = "the checkpoint has no EMA weights"
        return WeightChoice("trained", requested, None, None, why if requested == "auto" else f"requested; {why}")
    if ema_updates is None or decay is None or not 0 < decay < 1:
        why = "the checkpoint does not record the EMA's decay and update count"
        if requested == "auto":
            return WeightChoice("trained", requested, ema_updates, None, f"{why}; auto uses the trained weights")
        return WeightChoice(requested, requested, ema_updates, None, f"requested; {why}")
    auto_from = min_ema_updates(decay)
    if requested == "auto":
        weights = "ema" if ema_updates >= auto_from else "trained"
        return WeightChoice(weights, requested, ema_updates, auto_from,
                            f"EMA has {ema_updates} updates; auto uses it from {auto_from}")
    return WeightChoice(requested, requested, ema_updates, auto_from,
                        f"requested; EMA has {ema_updates} updates, auto uses it from {auto_from}")
