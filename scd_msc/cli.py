"""``scd-msc``: the command line of scd_msc (one subcommand per job)."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> int:
    from scd_msc.demo import run_demo

    return run_demo(frames=args.frames, grid=args.grid, device=args.device)


def _params(args: argparse.Namespace) -> int:
    import torch

    from scd_msc.models import FAMILIES, SIZES, build_model, count_parameters

    print(f"{'size':6s} " + " ".join(f"{f:>12s}" for f in FAMILIES) + "   max/min")
    for size in args.sizes or list(SIZES):
        with torch.device("meta"):  # counts only: no memory, no init time
            counts = [count_parameters(build_model(f"{f}-{size}")) for f in FAMILIES]
        print(f"{size:6s} " + " ".join(f"{c / 1e6:11.2f}M" for c in counts)
              + f"   {max(counts) / min(counts):.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from scd_msc.data.cli import add_make_shards_arguments, run_make_shards
    from scd_msc.training.cli import add_train_arguments, run_train, run_train_ae
    from scd_msc.inference.cli import add_eval_arguments, add_generate_arguments, run_eval, run_generate
    from scd_msc.play.cli import add_play_arguments, run_play

    parser = argparse.ArgumentParser(prog="scd-msc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run one MSC layer on every attention backend")
    demo.add_argument("--frames", type=int, default=8)
    demo.add_argument("--grid", type=int, default=16)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    demo.set_defaults(func=_demo)
    shards = sub.add_parser("make-shards", help="write webdataset shards of video clips")
    add_make_shards_arguments(shards)
    shards.set_defaults(func=run_make_shards)
    generate = sub.add_parser("generate", help="stream a video frame by frame to an mp4 (and/or GIF)")
    add_generate_arguments(generate)
    generate.set_defaults(func=run_generate)
    evaluate = sub.add_parser("eval", help="continuation PSNR/SSIM per horizon step on held-out shards")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)
    train = sub.add_parser("train", help="train a model on webdataset shards (Lightning)")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    train_ae = sub.add_parser("train-ae", help="train the frame autoencoder of latent models (Lightning)")
    add_train_arguments(train_ae)
    train_ae.set_defaults(func=run_train_ae)
    play = sub.add_parser("play", help="steer a model conditioned on actions from a web page (extra play)")
    add_play_arguments(play)
    play.set_defaults(func=run_play)
    params = sub.add_parser("params", help="parameter counts of every preset family per size")
    params.add_argument("sizes", nargs="*", help="sizes to list (default: all)")
    params.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; Ctrl-C that a command does not handle itself (e.g. while
    torch is imported) exits with 130 and one line, not a traceback."""
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        return args.func(args)
    except KeyboardInterrupt:  # a fresh line: the cursor may be after a progress bar or "^C"
        print("\nscd-msc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
