"""``decoder_context: recompute`` against ``prefix``: one report from the files that
``tools/decoder_context.sh`` leaves behind (issue 14).

Reads each setting's ``scd-msc eval`` folder (``eval.json``: PSNR/SSIM over horizons
1–8, per clip) and training run (``config.yaml``, ``timing.json``), checks that both were
scored on the same clips, and writes ``benchmarks/decoder_context_<device>_<date>.md`` +
``.json``: the mean PSNR/SSIM of each, the paired per-clip PSNR difference (prefix −
recompute: mean, standard deviation, 95% interval of the mean) and the bar (within
0.3 dB). Training step times are left out: the script runs anywhere, often beside other
jobs. The denoising speed-up is the latency benchmark's (``tools/bench_latency.py
--prefix``), cited, not measured here.

Shapes: ``M`` clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tools.bench.env import env_info
from tools.bench.report import command_line, fmt, report_stem, write_report
from tools.bench.stats import paired_gap

ROOT = Path(__file__).resolve().parent.parent
BAR_DB = 0.3  # prefix PSNR within 0.3 dB of recompute


def load_setting(eval_dir: Path, run_dir: Path) -> dict[str, Any]:
    summary = json.loads((eval_dir / "eval.json").read_text())
    config = OmegaConf.load(run_dir / "config.yaml")  # the run's resolved config (scd-msc train writes it)
    return {"psnr": summary["mean_psnr_1_8"], "ssim": summary["mean_ssim_1_8"], "clips": summary["clips"],
            "clip_keys": summary["clip_keys"], "clip_psnr": summary["clip_psnr_1_8"],
            "decoder_context": config.model.get("decoder_context", "recompute")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.decoder_context_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--recompute", nargs=2, required=True, metavar=("EVAL_DIR", "RUN_DIR"))
    p.add_argument("--prefix", nargs=2, required=True, metavar=("EVAL_DIR", "RUN_DIR"))
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    p.add_argument("--notes", default="", help="a line added to the report (how it was run)")
    args = p.parse_args(argv)
    try:
        rec, pre = (load_setting(Path(e), Path(r)) for e, r in (args.recompute, args.prefix))
    except (OSError, KeyError, json.JSONDecodeError) as err:
        p.error(f"cannot read an eval or run folder: {err}")
    if rec["clip_keys"] != pre["clip_keys"]:
        p.error("--recompute and --prefix were scored on different clips (clip_keys differ): pair them on the same")
    diff = paired_gap(pre["clip_psnr"], rec["clip_psnr"])  # prefix − recompute, clip by clip
    gap = pre["psnr"] - rec["psnr"]
    check = f"{'PASS' if gap >= -BAR_DB else 'FAIL'}"
    lines = [f"- PSNR over horizons 1–8: recompute **{fmt(rec['psnr'])} dB**, prefix **{fmt(pre['psnr'])} dB**: "
             f"prefix − recompute = **{gap:+.2f} dB** (bar: ≥ −{BAR_DB} dB): {check}",
             f"- paired over the same {diff['clips']} clips: mean {diff['mean']:+.2f} dB, std {diff['std']:.2f}, "
             f"95% interval of the mean [{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}] dB",
             f"- SSIM over horizons 1–8: recompute {fmt(rec['ssim'])}, prefix {fmt(pre['ssim'])}",
             "- the denoising speed-up of prefix is the latency benchmark's (`python -m tools.bench_latency "
             "--prefix`, benchmarks/latency_*), not measured here"]
    if args.notes:
        lines.append(f"- {args.notes}")
    for name, s in (("recompute", rec), ("prefix", pre)):
        if s["decoder_context"] != name:
            p.error(f"--{name}: its run was trained with decoder_context={s['decoder_context']}")
    rows = [{"setting": name, "psnr_1_8": s["psnr"], "ssim_1_8": s["ssim"], "clips": s["clips"]}
            for name, s in (("recompute", rec), ("prefix", pre))]
    env = env_info()
    stem = report_stem(args.out, "decoder_context")
    md, js = write_report(stem, "Decoder context: recompute vs prefix (same data, steps and seed)",
                          command_line("tools.decoder_context_report", argv), {"bar_db": BAR_DB}, rows,
                          extra_md="## Summary\n\n" + "\n".join(lines),
                          data_json={"recompute_psnr": rec["psnr"], "prefix_psnr": pre["psnr"],
                                     "prefix_minus_recompute_db": gap, "paired": diff, "pass": gap >= -BAR_DB},
                          env=env)
    print("\n".join(lines))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
