"""Latent shards: pixel clips through an encoder, conditions carried along (DESIGN.md §8).

``make-shards latents`` takes its pixels from a generator or a video folder
(``--pixels``) or from existing pixel shards (``--from PATTERN``: :func:`shard_clips`,
each clip whole, its key, actions, label and header kept), and its encoder from

* ``--autoencoder AE.ckpt``: a ``scd-msc train-ae`` checkpoint, run on ``--device`` (CUDA
  when present) over ``--batch`` clips at a time; every sample's json names it
  (``autoencoder``: absolute path, ``autoencoder_sha256``) with its latent scaling
  (``latent_mean`` / ``latent_std``, already applied: the latents are unit-scale), and a
  diffusion model trained on the shards records both (:class:`~scd_msc.data.probe.ShardInfo`);
* ``--encoder module:function``: an outside encoder, one clip per call (it may look
  across the frames of a clip), named in the json as ``encoder``.

Shapes: ``N`` frames of a batch of clips · ``F`` frames of a clip · ``C, H, W`` pixels ·
``c, h, w`` latents.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .dataset import expand_shards
from .decode import VIDEO_FIELDS
from .sources import Clip, encode_latents, load_callable

# json keys of a pixel sample that describe its frames or conditions; the rest is provenance, kept
_FRAME_KEYS = ("fps", "frames", "height", "width", "channels", "source", "label", "action_names", "class_names")


def _sample_clip(sample: dict, url: str) -> Clip:
    """One raw pixel sample as a whole :class:`Clip` (every stored frame), or a ValueError."""
    key = sample.get("__key__", "?")
    where = f"sample {key} of {url}"
    if "latent.npy" in sample:
        raise ValueError(f"{where}: holds latents; expected pixel shards (frames.npy or a video)")
    meta = json.loads(sample["json"]) if "json" in sample else {}
    meta = meta if isinstance(meta, dict) else {}
    try:
        if "frames.npy" in sample:
            frames = np.load(io.BytesIO(sample["frames.npy"]), allow_pickle=False)
            frames = frames[..., None] if frames.ndim == 3 else frames
        else:
            from .video import decode_video

            video = next((f for f in VIDEO_FIELDS if f in sample), None)
            if video is None:
                fields = sorted(k for k in sample if not k.startswith("__"))
                raise ValueError(f"fields {fields}, expected frames.npy or a video ({', '.join(VIDEO_FIELDS)})")
            frames = decode_video(sample[video], channels=int(meta.get("channels", 3)))
        actions = np.load(io.BytesIO(sample["actions.npy"]), allow_pickle=False) if "actions.npy" in sample else None
    except Exception as err:  # noqa: BLE001 -- corrupt npy or video: say which sample
        raise ValueError(f"{where}: could not be read ({err})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"{where}: frames {frames.dtype} {frames.shape}; expected uint8 (F, H, W, C)")
    extra = {k: v for k, v in meta.items() if k not in _FRAME_KEYS}
    return Clip(frames, float(meta.get("fps", 8.0)), str(meta.get("source", "shards")),
                {**extra, "pixels_from": url}, actions, meta.get("label"),
                tuple(meta.get("action_names") or ()), tuple(meta.get("class_names") or ()))


def shard_clips(shards: str, clips: Optional[int] = None) -> Iterator[tuple[str, Clip]]:
    """``(key, clip)`` of every sample of pixel ``shards`` in order (at most ``clips``).
    Raises ``ValueError`` naming ``--from`` and the sample that cannot be used."""
    import webdataset as wds

    try:
        urls = expand_shards(shards)
    except ValueError as err:
        raise ValueError(f"--from: {err}") from None
    done = 0
    for url in urls:
        for sample in wds.tarfile_to_samples()(iter([{"url": url}])):
            if clips is not None and done >= clips:
                return
            try:
                yield str(sample["__key__"]), _sample_clip(sample, url)
            except ValueError as err:
                raise ValueError(f"--from={shards!r}: {err}") from None
            done += 1


@dataclass
class LatentEncoder:
    """What turns pixels into latents: ``fn`` maps ``(N, C, H, W)`` float32 in [-1, 1] to
    ``(N, c, h, w)``, over ``batch`` clips per call; ``meta``: the json fields that name it."""

    fn: Callable[[Any], Any]
    batch: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    channels: Optional[int] = None  # pixel channels it takes (None: not known)
    factor: Optional[int] = None  # spatial down factor (None: not known)
    arg: str = "--encoder"

    @classmethod
    def module(cls, spec: str) -> "LatentEncoder":
        """An outside ``module:function``: one clip per call (it may look across frames)."""
        return cls(load_callable(spec), 1, {"encoder": spec})

    @classmethod
    def autoencoder(cls, path: str, device: str = "auto", batch: int = 16) -> "LatentEncoder":
        """A ``scd-msc train-ae`` checkpoint on ``device`` (``auto``: CUDA when present),
        ``batch`` clips per call. One-line ValueErrors name ``--autoencoder``/``--device``."""
        import torch

        from scd_msc.checkpoint import load_autoencoder
        from scd_msc.inference.inputs import resolve_device

        where = resolve_device(device)
        try:
            ae = load_autoencoder(path, map_location="cpu")
        except ValueError as err:
            raise ValueError(f"--autoencoder={path!r}: {err}") from None
        ae.model.to(where)

        def fn(x: "torch.Tensor") -> "torch.Tensor":
            return ae.encode(x.to(where)).cpu()  # (N, c, h, w) unit-scale

        meta = {"autoencoder": os.path.abspath(path), "autoencoder_sha256": ae.sha256,
                "latent_mean": ae.model.latent_mean.tolist(), "latent_std": ae.model.latent_std.tolist()}
        return cls(fn, batch, meta, ae.config.model.channels, ae.config.model.factor, "--autoencoder")

    def check(self, key: str, clip: Clip) -> None:
        """The clip's frames fit the autoencoder (channels, size a multiple of its factor)."""
        _, h, w, c = clip.frames.shape
        if self.channels is not None and c != self.channels:
            raise ValueError(f"{self.arg}: clip {key} has {c}-channel frames; the autoencoder takes {self.channels}")
        if self.factor is not None and (h % self.factor or w % self.factor):
            raise ValueError(f"{self.arg}: clip {key} has {h}×{w} frames; the autoencoder needs sides that are "
                             f"multiples of its factor {self.factor}")


def encoded(clips: Iterable[tuple[str, Clip]], encoder: LatentEncoder,
            dtype: str = "float16") -> Iterator[tuple[str, Clip, np.ndarray]]:
    """``(key, clip, latent (F, c, h, w) of dtype)`` for every clip, ``encoder.batch``
    clips per call of ``encoder.fn`` (their frames concatenated), in order."""
    pending: list[tuple[str, Clip]] = []

    def flush() -> Iterator[tuple[str, Clip, np.ndarray]]:
        if encoder.batch == 1:  # an outside encoder sees one clip, as its contract says
            yield from ((k, c, encode_latents(encoder.fn, c.frames, dtype)) for k, c in pending)
            return
        shapes = {c.frames.shape[1:] for _, c in pending}
        if len(shapes) > 1:
            raise ValueError(f"{encoder.arg}: clips {pending[0][0]}..{pending[-1][0]} have frames of shapes "
                             f"{sorted(shapes)}; expected one (H, W, C) for every clip")
        z = encode_latents(encoder.fn, np.concatenate([c.frames for _, c in pending]), dtype)  # (N, c, h, w)
        bounds = np.cumsum([len(c.frames) for _, c in pending])[:-1]
        yield from ((k, c, part) for (k, c), part in zip(pending, np.split(z, bounds)))

    for key, clip in clips:
        encoder.check(key, clip)
        pending.append((key, clip))
        if len(pending) == encoder.batch:
            yield from flush()
            pending = []
    if pending:
        yield from flush()
