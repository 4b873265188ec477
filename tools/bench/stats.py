"""Paired comparisons of per-clip scores: two models (or two settings of one model) scored
on the same held-out clips, compared clip by clip, so that the clip-to-clip spread of the
scores (some clips are much harder than others) cancels out of the difference."""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

Z95 = 1.959964  # two-sided 95% quantile of the normal distribution


def paired_gap(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
               keys_a: Optional[Sequence[str]] = None, keys_b: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Statistics of ``a - b`` clip by clip: ``clips``, ``mean``, ``std`` (of the
    differences), ``stderr`` and ``ci95`` (``[low, high]``, normal approximation: mean ±
    1.96 standard errors). Pairs with a missing (None) score are dropped. With ``keys_a``
    and ``keys_b`` (clip ids) the scores are paired by id, in ``a``'s order, and clips
    that only one side scored are dropped; without them by position."""
    if keys_a is not None and keys_b is not None:
        by_key = dict(zip(keys_b, b))
        pairs = [(x, by_key[k]) for k, x in zip(keys_a, a) if k in by_key]
    else:
        pairs = list(zip(a, b))
    diff = [x - y for x, y in pairs if x is not None and y is not None]
    if not diff:
        nan = float("nan")
        return {"clips": 0, "mean": nan, "std": nan, "stderr": nan, "ci95": [nan, nan]}
    mean = statistics.fmean(diff)
    std = statistics.stdev(diff) if len(diff) > 1 else float("nan")
    se = std / math.sqrt(len(diff))
    return {"clips": len(diff), "mean": mean, "std": std, "stderr": se, "ci95": [mean - Z95 * se, mean + Z95 * se]}
