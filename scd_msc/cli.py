"""``scd-msc``: the command line of scd_msc (one subcommand per job)."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> int:
    from scd_msc.demo import run_demo

    return run_demo(frames=args.frames, grid=args.grid, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scd-msc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run one MSC layer on every attention backend")
    demo.add_argument("--frames", type=int, default=8)
    demo.add_argument("--grid", type=int, default=16)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
