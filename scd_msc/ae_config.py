"""The config of ``scd-msc train-ae``: the autoencoder, its loss, the data and training.

``AEExperimentConfig = model + loss + data + train``, loaded like the diffusion config
(:mod:`scd_msc.config`: dataclass defaults <- ``configs/ae_*.yaml`` <- ``key=value``
overrides, one-line errors naming the key). ``data`` and ``train`` are the very
sections of ``scd-msc train`` (:class:`~scd_msc.data.config.DataConfig`,
:class:`~scd_msc.config.TrainConfig`): a batch of ``data.batch_size`` clips of
``data.clip_frames`` frames is folded into ``batch_size · clip_frames`` single frames.
The keys of ``train`` that only diffusion uses (``sample_*``, ``cond_dropout``,
``activation_checkpointing``) are ignored here; ``train.compile`` compiles the encoder and
the decoder (``auto``: when training on CUDA).

Frame shape: ``data.channels`` / ``data.image_size`` (``auto``) follow the training
shards, which must hold pixels; ``model.channels`` follows the data unless set, and the
frame side must be a multiple of ``model.factor``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from scd_msc import checks
from scd_msc.config import TrainConfig, probe_train_shards, merge_layer, read_layers, to_config_object
from scd_msc.data.config import AUTO, DataConfig
from scd_msc.models.ae_objective import AELossConfig
from scd_msc.models.autoencoder import FACTORS, AutoencoderConfig


@dataclass
class AEExperimentConfig:
    """Everything one autoencoder run needs."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AELossConfig = field(default_factory=AELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/ae"))

    def __post_init__(self) -> None:
        if not self.loss.gan:
            return
        why = "the discriminator is trained by a manual optimizer step"
        if self.train.accumulate_grad_batches != 1:
            raise checks.error("train.accumulate_grad_batches", self.train.accumulate_grad_batches,
                               "1 when loss.gan_weight > 0", why)
        if self.train.precision == "16-mixed":
            raise checks.error("train.precision", self.train.precision,
                               "not 16-mixed when loss.gan_weight > 0 (bf16-mixed or 32-true)",
                               "its raw step bypasses the fp16 loss scaler")


def resolve_ae_frame_shape(exp: AEExperimentConfig, explicit_channels: bool = False) -> None:
    """``auto`` in ``exp.data`` from the training shards (pixels only), ``model.channels``
    from the data unless ``explicit_channels``; in place. One-line ``ValueError``s."""
    info = probe_train_shards(exp.data.train_shards)
    if info is not None and info.kind != "pixels":
        raise ValueError(f"data.train_shards={exp.data.train_shards!r}: holds {info.describe()}; "
                         "expected pixel shards (an autoencoder learns to make latents)")
    if info is not None:
        exp.data = exp.data.with_shape_of(info)
    if exp.data.channels == AUTO:  # no shards yet: the data follows the model
        exp.data.channels = exp.model.channels
    elif not explicit_channels:
        exp.model.channels = exp.data.channels
    if exp.data.channels != exp.model.channels:
        raise ValueError(f"data.channels={exp.data.channels} but model.channels={exp.model.channels}: they must "
                         f"agree; drop model.channels={exp.model.channels} (the model follows the data)")
    size, factor = exp.data.image_size, exp.model.factor
    if size != AUTO and size % factor:
        fits = [f for f in FACTORS if size % f == 0]
        raise checks.error("data.image_size", size, f"a multiple of model.factor={factor}",
                           f"pass model.factor={fits[-1]} or shards of another size" if fits else "")


def load_ae_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> AEExperimentConfig:
    """The validated :class:`AEExperimentConfig` of yaml ``path`` plus ``key=value``
    overrides; ``ValueError`` naming the key for unknown keys, wrong types, bad values."""
    yaml, dots = read_layers(path, overrides)
    cfg = OmegaConf.structured(AEExperimentConfig)
    cfg = merge_layer(cfg, yaml, f"config file {path!r}", AEExperimentConfig)
    cfg = merge_layer(cfg, dots, "the command-line overrides", AEExperimentConfig)
    exp = to_config_object(cfg)
    assert isinstance(exp, AEExperimentConfig)
    resolve_ae_frame_shape(exp, any(OmegaConf.select(layer, "model.channels") is not None for layer in (yaml, dots)))
    return exp


def ae_config_to_dict(cfg: AEExperimentConfig) -> dict[str, Any]:
    """Plain, yaml-safe dict of the whole config (what checkpoints store)."""
    return dataclasses.asdict(cfg)


def ae_config_from_dict(d: dict[str, Any]) -> AEExperimentConfig:
    """Inverse of :func:`ae_config_to_dict`; unknown keys and bad types fail in one line."""
    base = OmegaConf.structured(AEExperimentConfig)
    exp = to_config_object(merge_layer(base, OmegaConf.create(d), "the stored config", AEExperimentConfig))
    assert isinstance(exp, AEExperimentConfig)
    return exp


def ae_to_yaml(cfg: AEExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(ae_config_to_dict(cfg)))
