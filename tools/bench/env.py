"""The environment of a benchmark run: library versions, hardware, and the GPU's short
name used in report file names (``benchmarks/<what>_<gpu>_<date>.md``)."""

from __future__ import annotations

import importlib.metadata
import platform
import re
from typing import Any

import torch

_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct"}


def gpu_slug(device: str | torch.device | None = None) -> str:
    """Short name of the device for file names: ``"NVIDIA H100 80GB HBM3" -> "h100"``,
    ``"NVIDIA A100-SXM4-80GB" -> "a100"``, ``"NVIDIA GeForce RTX 4090" -> "rtx4090"``;
    ``"cpu"`` when ``device`` is a CPU (or None and CUDA is missing)."""
    dev = torch.device(device) if device is not None else None
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        return dev.type
    return slug_from_name(torch.cuda.get_device_name(dev))


def slug_from_name(name: str) -> str:
    """The first word holding letters and digits, after vendor words (see :func:`gpu_slug`)."""
    words = [w for w in re.split(r"[\s_\-]+", name.lower()) if w and w not in _VENDOR_WORDS]
    for i, w in enumerate(words):
        if re.search(r"\d", w):
            if re.search(r"[a-z]", w):
                return re.sub(r"[^a-z0-9]", "", w)
            return re.sub(r"[^a-z0-9]", "", "".join(words[: i + 1]))  # "rtx" "4090"
    return re.sub(r"[^a-z0-9]", "", "".join(words)) or "gpu"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Library versions and hardware of this run (no hostname, no user, no paths)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton") or _version("pytorch-triton"),
        "natten": _version("natten"),
        "natten_libnatten": None,
        "lightning": _version("lightning"),
        "einops": _version("einops"),
        "gpu": None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_capability": None,
        "gpu_memory_gib": None,
        "cpu_threads": torch.get_num_threads(),
    }
    if info["natten"] is not None:
        try:
            from natten import HAS_LIBNATTEN

            info["natten_libnatten"] = bool(HAS_LIBNATTEN)
        except Exception as e:  # a broken install is itself worth reporting
            info["natten_libnatten"] = f"import failed: {e}"
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info
