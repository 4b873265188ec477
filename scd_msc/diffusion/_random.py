"""Random draws that take an explicit ``torch.Generator`` (no hidden global state).

A generator lives on one device; ``torch.randn(..., generator=g, device=d)`` fails when
the two differ. These helpers draw on the generator's device and then move the result,
so a CPU generator can seed tensors for a GPU run (STYLE.md §8: pass things in).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _draw_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None,
          device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    out = fn(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal tensor of ``shape`` on ``device`` (drawn on the generator's device)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform ``[0, 1)`` tensor of ``shape`` on ``device`` (drawn on the generator's device)."""
    return _draw(torch.rand, shape, generator, device, dtype)
