"""The report of a benchmark: ``benchmarks/<what>_<gpu>_<date>.md`` with the command,
config, versions, hardware and the table the tool printed, and a ``.json`` twin holding
every number (STYLE.md §10, DESIGN.md §10). Also the table helpers the tools share."""

from __future__ import annotations

import datetime
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from tools.bench.env import env_info, gpu_slug


def today() -> str:
    return datetime.date.today().isoformat()


def report_stem(out_dir: str | Path, what: str, device: str | torch.device | None = None,
                date: str | None = None) -> Path:
    """``<out_dir>/<what>_<gpu>_<YYYY-MM-DD>`` (add ``.md`` / ``.json``)."""
    return Path(out_dir) / f"{what}_{gpu_slug(device)}_{date or today()}"


def command_line(module: str, args: Sequence[str] | None = None) -> str:
    """The command that ran tool ``module`` (e.g. ``"tools.bench_latency"``, a tool's
    ``__spec__.name``) with ``args`` (default: this process's arguments), as one would
    type it again from the repository root."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if args is None else args)])


def dims(size: Sequence[int]) -> str:
    """``(32, 64, 64) -> "32x64x64"``."""
    return "x".join(map(str, size))


def parse_dims(text: str) -> tuple[int, ...]:
    """``"32x64x64" -> (32, 64, 64)``."""
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected sizes like 32x64x64, got {text!r}") from None


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
