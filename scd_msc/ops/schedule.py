"""Per-layer MSC schedules: configs name a schedule, not one value.

The MSC paper (Xu & Cao, arXiv 2412.09828) pools more (larger ``r``) in deeper layers,
where features are coarser. A schedule turns a few base numbers into one
:class:`MSCLayerSpec` per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Optional

from scd_msc import checks


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

    def check(self, prefix: str = "") -> None:
        """Every number is an integer >= 1 (``window`` odd, ``strided_frames`` may be None).
        Checked by the config that holds the spec, which knows its path (``prefix``, e.g.
        ``model.schedule.layers[2].``)."""
        for name in ("down", "window", "frames", "stride"):
            checks.integer(f"{prefix}{name}", getattr(self, name), low=1, odd=name == "window")
        checks.positive_int(f"{prefix}strided_frames", self.strided_frames, allow_none=True)


@dataclass
class MSCScheduleConfig:
    """``name`` in :data:`SCHEDULES`; ``base`` is the spec every layer starts from;
    ``down_max`` is the deepest layer's ``r`` for ``pyramid``; ``layers`` (if given)
    lists every layer explicitly (``explicit``). Errors name the fields by their config
    path (``_PREFIX``)."""

    _PREFIX: ClassVar[str] = "model.schedule."

    name: str = "pyramid"
    base: MSCLayerSpec = field(default_factory=MSCLayerSpec)
    down_max: int = 4
    layers: Optional[list[MSCLayerSpec]] = field(default=None)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        p = self._PREFIX
        checks.choice(f"{p}name", self.name, SCHEDULES)
        self.base.check(f"{p}base.")
        checks.integer(f"{p}down_max", self.down_max, low=self.base.down, detail=f"{p}base.down={self.base.down}")
        for i, spec in enumerate(self.layers or ()):  # MSCLayerSpecs, or objects with their fields
            MSCLayerSpec.check(spec, f"{p}layers[{i}].")


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
    """One spec per layer (``cfg`` is checked again: it may have changed in place)."""
    cfg.validate()
    return SCHEDULES[cfg.name](cfg, depth)
