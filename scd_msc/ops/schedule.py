"""Per-layer MSC schedules: configs name a schedule, not one value.

The MSC paper (Xu & Cao, arXiv 2412.09828) pools more (larger ``r``) in deeper layers,
where features are coarser. A schedule turns a few base numbers into one
:class:`MSCLayerSpec` per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional


@dataclass(frozen=True)
class MSCLayerSpec:
    """One layer: low-res down factor ``r``, hi-res spatial ``window`` (w) and temporal
    ``frames`` (v), low-res temporal ``stride`` (s) and ``strided_frames`` (k; None:
    unbounded)."""

    down: int = 2
    window: int = 7
    frames: int = 4
    stride: int = 2
    strided_frames: Optional[int] = 8


@dataclass
class MSCScheduleConfig:
    """``name`` in :data:`SCHEDULES`; ``base`` is the spec every layer starts from;
    ``down_max`` is the deepest layer's ``r`` for ``pyramid``; ``layers`` (if given)
    lists every layer explicitly (``explicit``)."""

    name: str = "pyramid"
    base: MSCLayerSpec = field(default_factory=MSCLayerSpec)
    down_max: int = 4
    layers: Optional[list[MSCLayerSpec]] = field(default=None)


def _uniform(cfg: MSCScheduleConfig, depth: int) -> list[MSCLayerSpec]:
    return [cfg.base] * depth


def _pyramid(cfg: MSCScheduleConfig, depth: int) -> list[MSCLayerSpec]:
    """``r`` doubles from ``base.down`` to ``down_max`` in equal runs of layers."""
    down = cfg.base.down
    steps = int(round(math.log2(cfg.down_max / down))) + 1
    return [replace(cfg.base, down=down * 2 ** (i * steps // depth)) for i in range(depth)]


def _explicit(cfg: MSCScheduleConfig, depth: int) -> list[MSCLayerSpec]:
    if cfg.layers is None or len(cfg.layers) != depth:
        got = None if cfg.layers is None else len(cfg.layers)
        raise ValueError(f"schedule 'explicit' needs layers with {depth} entries, got {got}")
    return [MSCLayerSpec(**vars(s)) if not isinstance(s, MSCLayerSpec) else s for s in cfg.layers]


SCHEDULES: dict[str, Callable[[MSCScheduleConfig, int], list[MSCLayerSpec]]] = {
    "uniform": _uniform,
    "pyramid": _pyramid,
    "explicit": _explicit,
}


def build_schedule(cfg: MSCScheduleConfig, depth: int) -> list[MSCLayerSpec]:
    """One spec per layer; validates every number."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {sorted(SCHEDULES)}, got {cfg.name!r}")
    if cfg.down_max < cfg.base.down:
        raise ValueError(f"schedule.down_max ({cfg.down_max}) must be >= base.down ({cfg.base.down})")
    specs = SCHEDULES[cfg.name](cfg, depth)
    for i, s in enumerate(specs):
        for name in ("down", "window", "frames", "stride"):
            value = getattr(s, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"layer {i}: {name} must be an int >= 1, got {value!r}")
        if s.window % 2 == 0:
            raise ValueError(f"layer {i}: window must be odd, got {s.window}")
        if s.strided_frames is not None and s.strided_frames < 1:
            raise ValueError(f"layer {i}: strided_frames must be >= 1 or None, got {s.strided_frames}")
    return specs
