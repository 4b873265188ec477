"""Shared helpers of the GPU benchmarks in ``tools/`` (attention, latency, training).

A benchmark is a reproducible file (STYLE.md §10, DESIGN.md §6): each tool times its
cases with :func:`time_cuda`, then :func:`write_report` writes
``benchmarks/<what>_<gpu>_<date>.md`` (command, config, versions, hardware, the table it
printed) and a ``.json`` twin holding every number.

Timings are steady state: warm-up (and compile, which a tool times apart) excluded;
medians over ``iters`` calls, each call timed with CUDA events (``perf_counter`` on CPU).
"""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import json
import math
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

# --------------------------------------------------------------------------- hardware

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


def today() -> str:
    return datetime.date.today().isoformat()


def report_stem(out_dir: str | Path, what: str, device: str | torch.device | None = None,
                date: str | None = None) -> Path:
    """``<out_dir>/<what>_<gpu>_<YYYY-MM-DD>`` (add ``.md`` / ``.json``)."""
    return Path(out_dir) / f"{what}_{gpu_slug(device)}_{date or today()}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this tool, as one would type it again."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join(["python", *argv])


def dims(size: Sequence[int]) -> str:
    """``(32, 64, 64) -> "32x64x64"``."""
    return "x".join(map(str, size))


def parse_dims(text: str) -> tuple[int, ...]:
    """``"32x64x64" -> (32, 64, 64)``."""
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected sizes like 32x64x64, got {text!r}") from None


def allow_recompiles(limit: int = 64) -> None:
    """Raise torch.compile's recompile limit. Benchmarks compile with static shapes, so
    every size, head count and grad mode is a recompile; past dynamo's default limit (8)
    the function would silently run eagerly and the numbers would mean nothing."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


# --------------------------------------------------------------------------- timing

def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Wall seconds of one call, synchronised (for first calls: compile, warm-up)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_cuda(fn: Callable[[], Any], warmup: int = 3, iters: int = 10,
              device: str | torch.device | None = None) -> dict[str, float]:
    """Steady-state time of ``fn()``: ``warmup`` untimed calls, then ``iters`` calls each
    timed with CUDA events (``perf_counter`` + synchronise on CPU). Returns
    ``median_ms``, ``p90_ms``, ``min_ms``, ``mean_ms`` and ``iters``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    if on_cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(times)


def summarize_ms(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "min_ms": ordered[0],
            "mean_ms": statistics.fmean(ordered), "iters": len(ordered)}


def iters_for_budget(estimate_ms: float, budget_ms: float, lo: int = 3, hi: int = 100) -> int:
    """How many timed calls fit in ``budget_ms`` given one call takes ``estimate_ms``."""
    if estimate_ms <= 0:
        return hi
    return int(max(lo, min(hi, budget_ms // estimate_ms)))


def reset_peak_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: str | torch.device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure(build: Callable[[], Callable[[], Any]], device: str | torch.device, *,
            budget_ms: float = 1000.0, warmup: int = 3, min_iters: int = 3,
            max_iters: int = 100,
            skip_errors: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """Build one case (``build() -> fn``) and time ``fn()``, never raising.

    The first call (compile, caches, lazy set-up) is timed alone as ``first_call_s``; a
    second call estimates the cost, which sets ``iters`` (about ``budget_ms`` of timed
    calls, within ``[min_iters, max_iters]``) and the warm-up (at most ``warmup`` calls,
    about a quarter of the budget). Returns ``status`` ("ok", "skipped" for
    ``skip_errors``, "oom", "error"), ``error``, ``first_call_s``, ``median_ms``,
    ``p90_ms``, ``iters`` and ``peak_gib`` (CUDA). Frees the case's memory afterwards.
    """
    out: dict[str, Any] = {"status": "ok", "error": None, "first_call_s": None,
                           "median_ms": None, "p90_ms": None, "iters": None, "peak_gib": None}
    fn = None
    try:
        reset_peak_memory(device)
        fn = build()
        out["first_call_s"] = time_once(fn, device)
        estimate_ms = time_once(fn, device) * 1e3
        iters = iters_for_budget(estimate_ms, budget_ms, min_iters, max_iters)
        n_warm = iters_for_budget(estimate_ms, budget_ms / 4, 0, warmup)
        t = time_cuda(fn, warmup=n_warm, iters=iters, device=device)
        out.update(median_ms=t["median_ms"], p90_ms=t["p90_ms"], iters=t["iters"],
                   peak_gib=peak_memory_gib(device))
    except skip_errors as e:
        out.update(status="skipped", error=str(e))
    except torch.OutOfMemoryError as e:
        out.update(status="oom", error=str(e).splitlines()[0][:300])
    except Exception as e:  # one failing case must not end the run
        out.update(status="error", error=f"{type(e).__name__}: {e}"[:300])
    finally:
        del fn
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return out


def check(value: float | None, op: str, threshold: float) -> str:
    """``"PASS"`` / ``"FAIL"`` of ``value op threshold`` (op ``">="`` or ``"<="``);
    ``"N/A"`` when the value is missing (a case skipped or failed)."""
    if value is None:
        return "N/A"
    ok = value >= threshold if op == ">=" else value <= threshold
    return "PASS" if ok else "FAIL"


def fastest(rows: Iterable[dict[str, Any]], size: str, prefix: str | tuple[str, ...],
            mode: str, key: str = "median_ms") -> tuple[float | None, str]:
    """Fastest timed row of ``size`` and ``mode`` whose ``case`` starts with ``prefix``:
    ``(time, case)``, or ``(None, "")`` when none ran."""
    hits = [(r[key], r["case"]) for r in rows if r["size"] == size and r["mode"] == mode
            and r["case"].startswith(prefix) and r.get(key) is not None]
    return min(hits) if hits else (None, "")


# --------------------------------------------------------------------------- attention FLOPs
# Exact FLOPs of the attention masks of scd_msc.ops.masks, for TFLOP/s and MFU columns.

def axis_pairs(q_pos: torch.Tensor, length: int, kernel: int, dilation: int,
               causal: bool) -> int:
    """Allowed (query, key) pairs of one axis rule: queries at ``q_pos``, keys 0..length-1."""
    from scd_msc.ops.masks import axis_window

    keys = torch.arange(length)[None, :]
    return int(axis_window(q_pos[:, None], keys, length, kernel, dilation, causal).sum())


def window_pairs(spec: Any, fq: int, fkv: int, hp: int, wp: int) -> int:
    """Allowed pairs of ``window_mask_mod(spec, fq, fkv, hp, wp)``, exactly, for a
    :class:`scd_msc.ops.masks.WindowSpec`. Token index ↔ (f, y, x) is a bijection and the
    mask is an AND of one rule per axis, each reading only its own axis, so the count is
    the product of the per-axis counts."""
    (kt, ky, kx), (dt, dy, dx), (ct, cy, cx) = spec.kernel, spec.dilation, spec.causal
    return (axis_pairs(torch.arange(fkv - fq, fkv), fkv, kt, dt, ct)
            * axis_pairs(torch.arange(hp), hp, ky, dy, cy)
            * axis_pairs(torch.arange(wp), wp, kx, dx, cx))


def frame_causal_pairs(fq: int, fkv: int, n: int) -> int:
    """Allowed pairs of ``frame_causal_mask_mod(fq, fkv, n)`` (``n`` tokens per frame)."""
    return sum((fkv - fq + i + 1) * n * n for i in range(fq))


def attn_flops(pairs: int, heads: int, head_dim: int, batch: int = 1) -> float:
    """Forward FLOPs of attention over ``pairs`` allowed pairs per head: QKᵀ and PV, 2
    flops per multiply-add (backward ≈ 2.5× this)."""
    return 4.0 * head_dim * pairs * heads * batch


# --------------------------------------------------------------------------- formatting

def fmt(value: Any, digits: int = 3) -> str:
    """Compact cell text: ``None -> "—"``, floats to ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        a = abs(value)
        if a == 0 or math.isnan(value) or math.isinf(value):
            return f"{value:g}"
        if a >= 1e6 or a < 1e-3:
            return f"{value:.{digits - 1}e}"
        if a >= 10 ** digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """GitHub markdown table of ``rows`` (dicts); ``columns`` picks and orders keys
    (default: the keys of the first row). Cells go through :func:`fmt`; ``|`` is escaped."""
    rows = list(rows)
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return repr(obj)


def write_report(path_stem: str | Path, title: str, command: str, config: dict[str, Any],
                 table_rows: list[dict[str, Any]], extra_md: str = "",
                 data_json: dict[str, Any] | None = None,
                 columns: Sequence[str] | None = None,
                 env: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<path_stem>.md`` and its ``.json`` twin; returns both paths.

    The markdown holds the title, the command, the environment (:func:`env_info` unless
    ``env`` is given), the config, ``extra_md`` (ratios, checks, notes) and the table.
    The JSON holds ``title``, ``command``, ``date``, ``env``, ``config``, ``rows`` and
    everything in ``data_json``.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    env = env_info() if env is None else env
    md = [f"# {title}", "", f"Date: {today()}", "", "Command:", "", "```", command, "```", "",
          "## Environment", "", markdown_table([{"key": k, "value": v} for k, v in env.items()]),
          "## Config", "", markdown_table([{"key": k, "value": v} for k, v in config.items()])]
    if extra_md:
        md += ["", extra_md.rstrip(), ""]
    md += ["## Table", "", markdown_table(table_rows, columns)]
    md_path, json_path = stem.with_suffix(".md"), stem.with_suffix(".json")
    md_path.write_text("\n".join(md))
    payload = {"title": title, "command": command, "date": today(), "env": env,
               "config": config, "rows": table_rows, **(data_json or {})}
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return md_path, json_path
