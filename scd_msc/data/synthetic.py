"""Deterministic synthetic video generators (the embedded default data set, no download).

* ``moving_digits``: 1-3 handwritten digits from scikit-learn's bundled 8x8
  ``load_digits()`` set (ships inside the wheel), upscaled and bouncing off the walls
  of a black canvas -- a Moving-MNIST look-alike.
* ``bouncing_shapes``: coloured circles and squares bouncing on a black canvas.

Every generator takes a ``numpy.random.Generator`` (or an int seed) and draws all of
its randomness from it, so the same seed gives the same clip, bit for bit.
Clips are uint8 arrays ``(F, H, W, C)`` with ``H == W == size``.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from scd_msc.checks import choice, integer

RngLike = np.random.Generator | int


@functools.lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    """All 1797 scikit-learn digits as float32 ``(N, 8, 8)`` in [0, 1] (cached, read-only)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # (N, 8, 8), values 0..16
    images.setflags(write=False)
    return images


def _bounce(rng: np.random.Generator, num_frames: int, num_objects: int, extent: np.ndarray,
            speed: tuple[float, float]) -> np.ndarray:
    """Positions ``(F, K, 2)`` of K points moving in straight lines, reflected at 0 and ``extent``.

    ``extent``: ``(K,)`` upper bound of the position of each object (same on both axes).
    """
    extent = extent[:, None]                                            # (K, 1)
    pos = rng.uniform(0.0, 1.0, size=(num_objects, 2)) * extent         # (K, 2)
    angle = rng.uniform(0.0, 2 * np.pi, size=num_objects)
    norm = rng.uniform(speed[0], speed[1], size=num_objects)
    vel = np.stack([np.sin(angle), np.cos(angle)], axis=-1) * norm[:, None]  # (K, 2)
    out = np.empty((num_frames, num_objects, 2), dtype=np.float64)
    for f in range(num_frames):
        out[f] = pos
        pos = pos + vel
        low, high = pos < 0, pos > extent
        pos = np.where(low, -pos, np.where(high, 2 * extent - pos, pos))
        vel = np.where(low | high, -vel, vel)
        pos = np.clip(pos, 0.0, extent)  # a speed larger than the extent would escape otherwise
    return out


def _canvas(num_frames: int, size: int, channels: int, rng: RngLike, count_name: str,
            count: int | None) -> tuple[np.random.Generator, int]:
    """Check the arguments every generator shares; the generator and the object count
    (``count``, or drawn uniformly from 1..3 as the generator's first draw)."""
    integer("num_frames", num_frames, low=1)
    integer("size", size, low=8)
    choice("channels", channels, (1, 3))
    rng = np.random.default_rng(rng)
    k = int(rng.integers(1, 4)) if count is None else count
    integer(count_name, k, low=1, high=3)
    return rng, k


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3)`` bright random colours in [0.35, 1] (never near black)."""
    return rng.uniform(0.35, 1.0, size=(n, 3))


def moving_digits(num_frames: int, size: int, rng: RngLike, *, num_digits: int | None = None,
                  channels: int = 1, digit_size: int | None = None,
                  max_speed: float | None = None) -> np.ndarray:
    """Bouncing handwritten digits: uint8 ``(F, size, size, channels)``.

    Args:
        num_frames: F, number of frames (>= 1).
        size: canvas height and width in pixels (>= 8).
        rng: generator (or int seed) that all randomness comes from.
        num_digits: digits on the canvas, 1-3; None draws it uniformly from 1..3.
        channels: 1 (grey) or 3 (each digit gets its own random colour).
        digit_size: side of an upscaled digit; default ``round(0.4 * size)``.
        max_speed: pixels per frame; default ``size / 8``.
    """
    rng, k = _canvas(num_frames, size, channels, rng, "num_digits", num_digits)
    d = max(4, round(0.4 * size)) if digit_size is None else digit_size
    integer("digit_size", d, low=1, high=size)
    speed = size / 8 if max_speed is None else float(max_speed)

    digits = _digit_images()[rng.integers(0, len(_digit_images()), size=k)]  # (K, 8, 8)
    sprites = np.stack([np.asarray(Image.fromarray(g).resize((d, d), Image.BILINEAR)) for g in digits])
    sprites = np.clip(sprites, 0.0, 1.0)                                  # (K, d, d)
    colour = _colours(rng, k) if channels == 3 else np.ones((k, 1))       # (K, C)
    traj = np.rint(_bounce(rng, num_frames, k, np.full(k, size - d, float), (speed / 2, speed))).astype(int)

    video = np.zeros((num_frames, size, size, channels), dtype=np.float64)  # (F, H, W, C)
    for f in range(num_frames):
        for i in range(k):
            y, x = traj[f, i]
            patch = sprites[i][:, :, None] * colour[i]                      # (d, d, C)
            view = video[f, y:y + d, x:x + d]
            np.maximum(view, patch, out=view)                               # overlapping digits: max
    return np.rint(video * 255).astype(np.uint8)


def bouncing_shapes(num_frames: int, size: int, rng: RngLike, *, num_shapes: int | None = None,
                    channels: int = 3, radius: tuple[float, float] | None = None,
                    max_speed: float | None = None) -> np.ndarray:
    """Coloured circles and squares bouncing on a black canvas: uint8 ``(F, size, size, channels)``.

    Args:
        num_frames: F, number of frames (>= 1).
        size: canvas height and width in pixels (>= 8).
        rng: generator (or int seed) that all randomness comes from.
        num_shapes: shapes on the canvas, 1-3; None draws it uniformly from 1..3.
        channels: 3 (RGB, default) or 1 (grey levels).
        radius: (min, max) half-side / radius in pixels; default ``(size/10, size/5)``.
        max_speed: pixels per frame; default ``size / 8``.
    """
    rng, k = _canvas(num_frames, size, channels, rng, "num_shapes", num_shapes)
    r_lo, r_hi = (size / 10, size / 5) if radius is None else radius
    if not 0 < r_lo <= r_hi <= size / 2:
        raise ValueError(f"radius={radius!r}: expected 0 < min <= max <= size/2 = {size / 2}")
    speed = size / 8 if max_speed is None else float(max_speed)

    radii = rng.uniform(r_lo, r_hi, size=k)                                  # (K,)
    square = rng.random(k) < 0.5                                             # (K,)
    colour = _colours(rng, k)                                                # (K, 3)
    if channels == 1:
        colour = colour.mean(axis=1, keepdims=True)                          # (K, 1)
    centres = radii[None, :, None] + _bounce(rng, num_frames, k, size - 2 * radii, (speed / 2, speed))

    yy, xx = np.mgrid[0:size, 0:size] + 0.5                                  # pixel centres (H, W)
    video = np.zeros((num_frames, size, size, channels), dtype=np.float64)   # (F, H, W, C)
    for f in range(num_frames):
        for i in range(k):  # later shapes are drawn on top of earlier ones
            dy, dx = yy - centres[f, i, 0], xx - centres[f, i, 1]
            if square[i]:
                mask = (np.abs(dy) <= radii[i]) & (np.abs(dx) <= radii[i])
            else:
                mask = dy**2 + dx**2 <= radii[i] ** 2
            video[f][mask] = colour[i]
    return np.rint(video * 255).astype(np.uint8)
