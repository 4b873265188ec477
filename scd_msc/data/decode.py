"""Turn one webdataset sample into a training clip, or say why it was skipped.

Accepted fields (first one present wins): ``latent.npy`` (float ``(F, C, h, w)``),
``frames.npy`` (uint8 ``(F, H, W, C)`` or ``(F, H, W)``), and a video (``mp4``, as
written by ``make_shards`` or video2dataset, with optional ``json``/``txt``). Pixels
come out as float32 ``(F, C, H, W)`` in [-1, 1]; latents as stored, in float32.
Conditions, when the sample has them (``conditions.py``): ``actions`` int64
``(clip_frames,)``, cut at the same offset as the frames, and ``label`` int64 ``()``
(from an integer json ``label``; other tools' string labels are left alone).

Bad samples raise ``SkipSample(reason)``; ``SkipCounter`` counts them per reason, logs
them, and also serves as the webdataset ``handler`` for unreadable shards.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from .video import decode_video, resize_frames

log = logging.getLogger(__name__)

REASONS = ("read_error", "missing_field", "decode_error", "too_short", "wrong_channels", "wrong_size")
VIDEO_FIELDS = ("mp4", "webm", "avi", "mkv", "mov")


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SkipCounter:
    """Per-reason counts of skipped samples (one instance per reader and worker process).

    A skip is logged at WARNING the 1st, 2nd, 4th, 8th, ... time a reason occurs (bounded
    logs on a big, dirty data set). More than ``max_consecutive`` skips in a row with no
    good sample in between raise a ``RuntimeError``: a resampled reader would otherwise
    spin forever on a data set where nothing is usable. ``first`` describes the first
    skip (for one-line error messages); ``quiet`` turns the logging off.
    """

    def __init__(self, max_consecutive: int = 1000, quiet: bool = False):
        self.counts: Counter[str] = Counter()
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.used = 0  # samples that gave a clip
        self.quiet = quiet
        self.first = ""

    def skip(self, reason: str, key: str = "?", detail: str = "") -> None:
        self.counts[reason] += 1
        self.consecutive += 1
        self.first = self.first or f"{key} ({reason}: {detail})"
        n = self.counts[reason]
        if n & (n - 1) == 0 and not self.quiet:
            log.warning("skipped sample %s (%s: %s); skipped so far: %s", key, reason, detail, self.summary())
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} samples in a row were unusable ({self.summary()}); "
                               "check the shard paths, clip_frames, channels and image_size")

    def ok(self) -> None:
        self.consecutive = 0
        self.used += 1

    def snapshot(self) -> dict[str, int]:
        """``{"used": n, <reason>: n, ...}``: plain ints, cheap to send with a batch."""
        return {"used": self.used, **self.counts}

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count a shard/tar read error and go on."""
        self.skip("read_error", detail=repr(exn)[:300])
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"


@dataclass(frozen=True)
class ClipSpec:
    """What a usable clip looks like.

    ``image_size`` is H == W of pixel frames, or h == w of latents. With ``resize`` a
    pixel clip of another size is centre-cropped and resized instead of skipped
    (useful for video2dataset shards); latents are never resized.
    """

    clip_frames: int
    channels: int
    image_size: int
    resize: bool = False


def _offset(total: int, length: int, rng: np.random.Generator | None) -> int:
    return 0 if rng is None else int(rng.integers(0, total - length + 1))


def _load_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exn:  # noqa: BLE001 -- corrupt bytes raise ValueError, EOFError, OSError, ...
        raise SkipSample("decode_error", f"npy: {exn!r}"[:200]) from None


def _pixels(sample: dict, spec: ClipSpec, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """uint8 ``(clip_frames, H, W, C)`` from ``frames.npy`` or a video field, and its first frame."""
    if "frames.npy" in sample:
        frames = _load_npy(sample["frames.npy"])
        frames = frames[..., None] if frames.ndim == 3 else frames
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise SkipSample("decode_error", f"frames.npy {frames.dtype} {frames.shape}: expected uint8 (F, H, W, C)")
        if frames.shape[-1] != spec.channels:
            raise SkipSample("wrong_channels", f"{frames.shape[-1]} != {spec.channels}")
        if len(frames) < spec.clip_frames:
            raise SkipSample("too_short", f"{len(frames)} < {spec.clip_frames} frames")
        start = _offset(len(frames), spec.clip_frames, rng)
        return frames[start:start + spec.clip_frames], start
    field = next(f for f in VIDEO_FIELDS if f in sample)
    meta = _meta(sample)
    stored = int(meta.get("channels", 3))
    if stored != spec.channels:
        raise SkipSample("wrong_channels", f"{stored} != {spec.channels}")
    total = meta.get("frames")
    known = isinstance(total, int) and total >= spec.clip_frames
    start = _offset(total, spec.clip_frames, rng) if known else 0
    try:
        frames = decode_video(sample[field], channels=spec.channels,
                              max_frames=start + spec.clip_frames if known else None)
    except Exception as exn:  # noqa: BLE001 -- av.FFmpegError and friends
        raise SkipSample("decode_error", f"{field}: {exn!r}"[:200]) from None
    if len(frames) < start + spec.clip_frames:
        raise SkipSample("too_short", f"{len(frames)} < {start + spec.clip_frames} frames")
    if not known:
        start = _offset(len(frames), spec.clip_frames, rng)
    return frames[start:start + spec.clip_frames], start


def _meta(sample: dict) -> dict:
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except ValueError as exn:
        raise SkipSample("decode_error", f"json: {exn}") from None
    return meta if isinstance(meta, dict) else {}


def _latents(sample: dict, spec: ClipSpec, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """float32 ``(clip_frames, C, h, w)`` from ``latent.npy``, and its first frame."""
    z = _load_npy(sample["latent.npy"])
    if z.ndim != 4 or z.dtype.kind != "f":
        raise SkipSample("decode_error", f"latent.npy {z.dtype} {z.shape}: expected float (F, C, h, w)")
    if z.shape[1] != spec.channels:
        raise SkipSample("wrong_channels", f"{z.shape[1]} != {spec.channels}")
    if z.shape[2:] != (spec.image_size, spec.image_size):
        raise SkipSample("wrong_size", f"{z.shape[2:]} != {(spec.image_size,) * 2}")
    if len(z) < spec.clip_frames:
        raise SkipSample("too_short", f"{len(z)} < {spec.clip_frames} frames")
    start = _offset(len(z), spec.clip_frames, rng)
    return z[start:start + spec.clip_frames].astype(np.float32), start


def _conditions(sample: dict, start: int, length: int) -> dict:
    """``{"actions": int64 (length,), "label": int64 ()}``, each only when the sample has it."""
    out = {}
    if "actions.npy" in sample:
        actions = _load_npy(sample["actions.npy"])
        if actions.ndim != 1 or actions.dtype.kind not in "iu" or len(actions) < start + length:
            raise SkipSample("decode_error", f"actions.npy {actions.dtype} {actions.shape}: expected integer ids, "
                                             f">= {start + length} (one per stored frame)")
        out["actions"] = torch.from_numpy(actions[start:start + length].astype(np.int64))
    label = _meta(sample).get("label")
    if isinstance(label, int) and not isinstance(label, bool):  # other tools' string labels are not class ids
        if label < 0:
            raise SkipSample("decode_error", f"json label={label!r}: expected a non-negative class id")
        out["label"] = torch.tensor(label, dtype=torch.int64)
    return out


def decode_sample(sample: dict, spec: ClipSpec, rng: np.random.Generator | None = None) -> dict:
    """``{"video": float32 (clip_frames, C, H, W), "key": str}`` plus ``actions`` / ``label`` when
    present (see the module docstring); offset 0 when ``rng`` is None.

    Raises ``SkipSample`` for a sample that cannot be used.
    """
    key = sample.get("__key__", "?")
    if "latent.npy" in sample:
        z, start = _latents(sample, spec, rng)
        return {"video": torch.from_numpy(np.ascontiguousarray(z)), **_conditions(sample, start, len(z)), "key": key}
    if "frames.npy" not in sample and not any(f in sample for f in VIDEO_FIELDS):
        fields = sorted(k for k in sample if not k.startswith("__"))
        raise SkipSample("missing_field", f"fields {fields}, expected latent.npy, frames.npy or mp4")
    frames, start = _pixels(sample, spec, rng)                              # (F, H, W, C) uint8
    conditions = _conditions(sample, start, len(frames))
    if frames.shape[1:3] != (spec.image_size, spec.image_size):
        if not spec.resize:
            raise SkipSample("wrong_size", f"{frames.shape[1:3]} != {(spec.image_size,) * 2}")
        frames = resize_frames(frames, spec.image_size)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (F, C, H, W)
    return {"video": video.float().div_(127.5).sub_(1.0), **conditions, "key": key}
