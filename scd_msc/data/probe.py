"""What a set of shards holds, read from one sample: pixels or latents, channels, size, frames.

:func:`probe_shards` opens the shards in order until one yields a sample and describes
it from its ``json`` (fields ``channels``, ``height``, ``width``, ``frames`` and, for
latents, ``encoder`` or ``autoencoder`` / ``autoencoder_sha256``: see ``shards.py``)
or, for fields the json lacks, from the shape of its ``latent.npy`` / ``frames.npy``
(or the first frame of its video). One sample is read, so probing costs milliseconds;
it imports neither Lightning nor the models.

``scd-msc train`` uses it to let ``data.channels`` / ``data.image_size`` (``auto``)
follow the shards, and records the result in the checkpoint so that inference knows
whether a model makes pixels or latents (and which encoder or autoencoder made them).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import webdataset as wds

from .dataset import expand_shards
from .decode import VIDEO_FIELDS

KINDS = ("pixels", "latents")


class ProbeError(ValueError):
    """The shards exist but no sample among the first few says what it holds."""


@dataclass(frozen=True)
class ShardInfo:
    """One probed sample. ``kind``: ``pixels`` (uint8 frames or a video) or ``latents``
    (``latent.npy``); ``channels`` × ``height`` × ``width`` per frame (latent channels and
    size for latents); ``frames`` of the clip (None when only a video without json told);
    ``encoder``: the ``module:function`` that made latent shards, or ``autoencoder`` and
    ``autoencoder_sha256``: the path and file hash of the ``scd-msc train-ae`` checkpoint
    that did (``make-shards latents --autoencoder``); ``url`` and ``key``: where the
    sample was read."""

    kind: str
    channels: int
    height: int
    width: int
    frames: Optional[int] = None
    encoder: Optional[str] = None
    url: str = ""
    key: str = ""
    autoencoder: Optional[str] = None
    autoencoder_sha256: Optional[str] = None

    @property
    def size(self) -> Optional[int]:
        """The side of square frames (None for non-square ones)."""
        return self.height if self.height == self.width else None

    def describe(self) -> str:
        """``3×48×48 pixel frames`` / ``4×8×8 latents (encoder my_vae:encode)`` /
        ``8×16×16 latents (autoencoder runs/ae/checkpoints/last.ckpt, sha256 1234abcd…)``."""
        shape = f"{self.channels}×{self.height}×{self.width}"
        if self.kind == "latents" and self.autoencoder:
            return f"{shape} latents (autoencoder {self.autoencoder}, sha256 {short_hash(self.autoencoder_sha256)})"
        if self.kind == "latents":
            return f"{shape} latents (encoder {self.encoder or 'not recorded'})"
        return f"{shape} pixel frames"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardInfo":
        """Inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def short_hash(sha256: Optional[str]) -> str:
    """The first 8 hex digits of a sha256 and an ellipsis (``1234abcd…``), as errors show it."""
    return f"{sha256[:8]}…" if sha256 else "not recorded"


def _meta(sample: dict) -> dict:
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _array_shape(sample: dict, kind: str) -> dict[str, Optional[int]]:
    """``frames, channels, height, width`` from the sample's array or video."""
    if kind == "latents":
        f, c, h, w = np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False).shape
        return {"frames": f, "channels": c, "height": h, "width": w}
    if "frames.npy" in sample:
        shape = np.load(io.BytesIO(sample["frames.npy"]), allow_pickle=False).shape  # (F, H, W[, C])
        return {"frames": shape[0], "height": shape[1], "width": shape[2],
                "channels": shape[3] if len(shape) == 4 else 1}
    from .video import iter_video_frames  # PyAV only for a video sample without json

    field = next(f for f in VIDEO_FIELDS if f in sample)
    h, w, _ = next(iter_video_frames(sample[field], max_frames=1)).shape
    return {"frames": None, "height": h, "width": w, "channels": 3}  # the reader's default for videos


def sample_info(sample: dict, url: str = "") -> ShardInfo:
    """Describe one webdataset sample; ``ProbeError`` when it holds no known field."""
    key = str(sample.get("__key__", "?"))
    if "latent.npy" in sample:
        kind = "latents"
    elif "frames.npy" in sample or any(f in sample for f in VIDEO_FIELDS):
        kind = "pixels"
    else:
        fields = sorted(k for k in sample if not k.startswith("__"))
        raise ProbeError(f"sample {key} of {url}: fields {fields}, expected latent.npy, frames.npy "
                         f"or a video ({', '.join(VIDEO_FIELDS)})")
    meta = _meta(sample)
    shape = {k: meta.get(k) for k in ("frames", "channels", "height", "width")}
    if not all(isinstance(shape[k], int) and shape[k] > 0 for k in ("channels", "height", "width")):
        try:
            shape.update(_array_shape(sample, kind))
        except Exception as err:  # noqa: BLE001 -- corrupt npy or video: say which sample
            raise ProbeError(f"sample {key} of {url}: could not read its shape ({err!r:.120})") from None
    frames = shape["frames"] if isinstance(shape["frames"], int) else None
    latent = {k: meta.get(k) if kind == "latents" else None for k in ("encoder", "autoencoder", "autoencoder_sha256")}
    return ShardInfo(kind, int(shape["channels"]), int(shape["height"]), int(shape["width"]), frames,
                     latent["encoder"], url, key, latent["autoencoder"], latent["autoencoder_sha256"])


def probe_shards(shards: str | Sequence[str], max_shards: int = 4) -> ShardInfo:
    """Describe the first readable sample of ``shards`` (pattern or list, see ``expand_shards``).

    Raises ``ValueError`` when the pattern matches no file and :class:`ProbeError` when
    none of the first ``max_shards`` shards yields a usable sample.
    """
    urls = expand_shards(shards)
    problems: list[str] = []
    for url in urls[:max_shards]:
        try:
            sample = next(iter(wds.tarfile_to_samples()(iter([{"url": url}]))), None)
        except Exception as err:  # noqa: BLE001 -- truncated or not a tar: try the next shard
            problems.append(f"{url}: {err!r:.100}")
            continue
        if sample is None:
            problems.append(f"{url}: no sample")
            continue
        try:
            return sample_info(sample, url)
        except ProbeError as err:
            problems.append(str(err))
    raise ProbeError(f"shards={shards!r}: no readable sample in the first {min(len(urls), max_shards)} "
                     f"shard(s) ({'; '.join(problems)})")
