"""Training: a thin LightningModule, callbacks (EMA, sample strips, last.ckpt) and the
``scd-msc train`` entry point (``scd_msc.training.train.train``). Everything here is
imported lazily, so that loading and validating a config (``scd_msc.config``) does not
pay for importing Lightning."""

_EXPORTS = {
    "SCDLitModule": "scd_msc.training.module",
    "EMA": "scd_msc.training.callbacks",
    "SampleStrip": "scd_msc.training.callbacks",
    "LastCheckpoint": "scd_msc.training.callbacks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
