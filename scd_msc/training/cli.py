"""``scd-msc train``: argument parsing and the command itself.

Wiring (in ``scd_msc/cli.py``)::

    sub = subparsers.add_parser("train", help="train a model on webdataset shards")
    add_train_arguments(sub)
    sub.set_defaults(func=run_train)

Examples::

    scd-msc train --config configs/moving_digits_tiny.yaml
    scd-msc train --config configs/moving_digits_tiny.yaml train.lr=1e-3 data.batch_size=4
    scd-msc train --config configs/moving_digits_small.yaml --resume auto
    scd-msc train-ae --config configs/ae_tiny.yaml    (the frame autoencoder: same arguments)
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` arguments to ``parser`` (a subcommand parser)."""
    parser.add_argument("--config", default=None, help="experiment yaml (configs/*.yaml); default: built-in defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.lr=1e-4 data.batch_size=4 preset=causal-dit-tiny")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="checkpoint to resume from; auto: <out_dir>/checkpoints/last.ckpt if present")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Validate the config (before Lightning is imported), train, print where the checkpoint is.

    Exit codes: 0 done; 2 a bad config, shards, ``--resume`` or ``train.out_dir`` (one
    line on stderr; a run that fails before its first step leaves no run folder); 1 a nan
    loss; 130 Ctrl-C and 143 SIGTERM (``last.ckpt`` is written: continue with ``--resume auto``)."""
    from scd_msc.config import load_config, to_yaml

    def train_fn(cfg, resume):
        from scd_msc.training.train import train

        return train(cfg, resume=resume)

    return _run(args, "train", load_config, to_yaml, train_fn, "scd_msc.checkpoint.load_model")


def run_train_ae(args: argparse.Namespace) -> int:
    """``scd-msc train-ae``: as :func:`run_train`, for the frame autoencoder
    (``configs/ae_*.yaml``, :mod:`scd_msc.ae_config`); same exit codes."""
    from scd_msc.ae_config import ae_to_yaml, load_ae_config

    def train_fn(cfg, resume):
        from scd_msc.training.autoencoder import train_ae

        return train_ae(cfg, resume=resume)

    return _run(args, "train-ae", load_ae_config, ae_to_yaml, train_fn, "scd_msc.checkpoint.load_autoencoder")


def _run(args: argparse.Namespace, command: str, load: Callable, dump: Callable, train_fn: Callable,
         loader: str) -> int:
    """The body of ``train`` and ``train-ae``: ``load(config, overrides)`` the config,
    ``dump`` it for ``--print-config``, ``train_fn(cfg, resume)``; ``loader`` names the
    function that loads the checkpoint it prints."""
    try:
        cfg = load(args.config, args.overrides)
    except ValueError as err:
        print(f"scd-msc {command}: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    from lightning.pytorch.utilities import rank_zero_only

    from scd_msc.training.train import TrainingInterrupted

    if logging.getLogger().handlers:  # Lightning adds its own handler: print each message once
        logging.getLogger("lightning").propagate = False
    # Lightning's own Ctrl-C notice would print in the middle of the progress bar line; ours follows
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Detected KeyboardInterrupt" not in record.getMessage())
    try:
        last = train_fn(cfg, args.resume)
    except ValueError as err:
        print(f"scd-msc {command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"scd-msc {command}: error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        rank_zero_only(print)(f"scd-msc {command}: {stop}", file=sys.stderr, flush=True)
        return 128 + stop.signum
    rank_zero_only(print)(f"checkpoint: {last}\n"
                          f"load it with: {loader}({last!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m scd_msc.training.cli --config FILE [key=value ...]``."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="scd-msc train"))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
