"""scd_msc: streaming video diffusion with a causal MSC encoder and a frame-wise decoder.

``PRESETS`` and ``build_model`` are imported on first use (PEP 562), so that importing a
light submodule (``scd_msc.cli``, the game-source workers of ``scd_msc.data.games``)
does not import torch.
"""

__all__ = ["PRESETS", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        from scd_msc import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
