"""``scd-msc make-shards``: argument parsing and the command itself.

Wiring (in ``scd_msc/cli.py``)::

    sub = subparsers.add_parser("make-shards", help="write webdataset shards of video clips")
    add_make_shards_arguments(sub)
    sub.set_defaults(func=run_make_shards)

Examples::

    scd-msc make-shards moving-digits --out shards/digits --frames 16 --size 64 --clips 10000
    scd-msc make-shards videos --path my_videos/ --out shards/vids --frames 16 --size 128 --format mp4
    scd-msc make-shards latents --encoder my_pkg.vae:encode --out shards/lat --frames 16 --size 256
    scd-msc make-shards latents --autoencoder runs/ae_doom/checkpoints/last.ckpt \
        --from 'shards/doom_128/train/*.tar' --out shards/doom_latent/train
    scd-msc make-shards atari --games breakout,pong --out shards/atari --frames 32 --size 64 --clips 1000
    scd-msc make-shards doom --scenario basic,my_way_home --out shards/doom --frames 32 --size 64 --clips 1000
"""

from __future__ import annotations

import argparse
import sys

from .games.workers import EngineFailed
from .shards import FORMATS, check_out_dir, make_shards, validate
from .sources import GAME_SOURCES, PIXEL_SOURCES, SOURCES


def add_make_shards_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``make-shards`` arguments to ``parser`` (a subcommand parser)."""
    parser.add_argument("source", help=f"where clips come from: {', '.join(SOURCES)}")
    parser.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar files")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (F; required, except with --from)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame height and width in pixels (required, except with --from)")
    parser.add_argument("--clips", type=int, default=None,
                        help="number of clips (default 1000 for generators, every clip for videos and --from)")
    parser.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic generators (default 0)")
    parser.add_argument("--format", dest="fmt", default="npy", help=f"sample format: {', '.join(FORMATS)}")
    parser.add_argument("--channels", type=int, default=None, help="1 (grey) or 3 (RGB); default per source")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate stored for synthetic clips (default 8); videos: resample every file "
                        "to this rate, dropping or repeating frames by timestamp (default: each file's own)")
    parser.add_argument("--path", default=None, help="folder of video files (source videos)")
    parser.add_argument("--stride", type=int, default=None,
                        help="frames between clip starts in a video (default --frames, no overlap)")
    parser.add_argument("--encoder", default=None, help="latents: an outside encoder, module:function mapping "
                        "(F, C, H, W) in [-1, 1] to (F, c, h, w), one clip per call")
    parser.add_argument("--autoencoder", default=None, metavar="AE.ckpt",
                        help="latents: a scd-msc train-ae checkpoint, run over --batch clips at a time; the shards "
                        "name it (path and sha256) and its latent scaling")
    parser.add_argument("--from", dest="from_shards", default=None, metavar="PIXEL_SHARDS",
                        help="latents: encode these pixel shards (glob/brace pattern), each clip whole, keeping "
                        "its key, actions, label and the action/class names (no --frames/--size/--pixels)")
    parser.add_argument("--pixels", default=None,
                        help=f"latents: pixel source fed to the encoder instead of --from: {', '.join(PIXEL_SOURCES)} "
                        "(default moving-digits)")
    parser.add_argument("--device", default=None, help="latents with --autoencoder: auto (default: cuda if present), "
                        "cpu or cuda[:N]")
    parser.add_argument("--batch", type=int, default=None,
                        help="latents with --autoencoder: clips encoded per call (default 16)")
    parser.add_argument("--latent-dtype", default="float16", help="float16 or float32 (latents)")
    parser.add_argument("--games", default=None,
                        help="comma-separated ALE ROM ids (atari; default breakout,pong,space_invaders)")
    parser.add_argument("--scenario", "--scenarios", dest="scenarios", default=None,
                        help="comma-separated ViZDoom scenarios or freedoom2_mapNN levels (doom; default "
                             "basic,defend_the_center,health_gathering,my_way_home,deadly_corridor)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes playing the games (atari, doom; default: CPU count)")
    parser.add_argument("--clips-per-rollout", type=int, default=None,
                        help="clips recorded from one engine run (atari, doom; default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _source_kwargs(args: argparse.Namespace) -> dict:
    """Only the options that apply to the chosen source (others are rejected by ``validate``)."""
    pixels = (args.pixels or "moving-digits") if args.source == "latents" else args.source
    kwargs: dict = {}
    if args.source == "latents":
        latent = {"encoder": args.encoder, "autoencoder": args.autoencoder, "from_shards": args.from_shards,
                  "pixels": args.pixels, "device": args.device, "batch": args.batch}
        kwargs.update({k: v for k, v in latent.items() if v is not None}, latent_dtype=args.latent_dtype)
    if pixels == "videos":
        kwargs.update(path=args.path, stride=args.stride)
    game_options = {"games": args.games, "scenarios": args.scenarios, "workers": args.workers,
                    "clips_per_rollout": args.clips_per_rollout}
    kwargs.update({k: v for k, v in game_options.items() if v is not None})
    if args.channels is not None:
        kwargs["channels"] = args.channels
    if args.fps is not None:
        kwargs["fps"] = args.fps
    return kwargs


def _check_unused(args: argparse.Namespace) -> None:
    pixels = (args.pixels or "moving-digits") if args.source == "latents" else args.source
    if args.from_shards is not None:
        pixels = "shards"
    for flag in ("frames", "size"):
        if getattr(args, flag) is None and args.from_shards is None:
            raise ValueError(f"--{flag}: required (except for latents --from pixel shards)")
    if pixels != "videos" and (args.path is not None or args.stride is not None):
        raise ValueError(f"--path/--stride: only used by the videos source, not {pixels!r}")
    for flag in ("encoder", "autoencoder", "from_shards", "pixels", "device", "batch"):
        if args.source != "latents" and getattr(args, flag) is not None:
            name = "--from" if flag == "from_shards" else f"--{flag}"
            raise ValueError(f"{name}: only used by the latents source, not {args.source!r}")
    for flag, value, users in (("--games", args.games, ("atari",)), ("--scenario", args.scenarios, ("doom",)),
                               ("--workers", args.workers, GAME_SOURCES),
                               ("--clips-per-rollout", args.clips_per_rollout, GAME_SOURCES)):
        if value is not None and pixels not in users:
            raise ValueError(f"{flag}: only used by the {' and '.join(users)} source{'s' * (len(users) > 1)}, "
                             f"not {pixels!r}")


def run_make_shards(args: argparse.Namespace) -> int:
    """Validate every argument, write the shards, print a summary. Returns the exit code."""
    clips = args.clips
    if clips is None:
        every = args.source == "videos" or (args.source == "latents" and (args.pixels == "videos" or args.from_shards))
        clips = None if every else 1000
    try:
        _check_unused(args)
        kwargs = _source_kwargs(args)
        validate(args.source, args.frames, args.size, clips, args.shard_size, args.fmt, **kwargs)
        check_out_dir(args.out, args.overwrite)
        summary = make_shards(args.source, args.out, args.frames, args.size, clips=clips,
                              shard_size=args.shard_size, seed=args.seed, fmt=args.fmt,
                              overwrite=args.overwrite, progress=not args.no_progress, **kwargs)
    except (ValueError, ImportError) as exn:  # ImportError: an optional package, with its install hint
        print(f"scd-msc make-shards: error: {exn}", file=sys.stderr)
        return 2
    except EngineFailed as exn:
        print(f"scd-msc make-shards: error: {exn}", file=sys.stderr)
        return 1
    print(summary)
    if summary.clips and (args.source in GAME_SOURCES or args.pixels in GAME_SOURCES or args.from_shards):
        from .conditions import shard_conditions

        print(f"conditions: {shard_conditions(summary.shards)}")
    if summary.clips == 0:
        print("scd-msc make-shards: error: no clip was written (videos too short or undecodable?)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m scd_msc.data.cli SOURCE --out DIR ...``."""
    parser = add_make_shards_arguments(argparse.ArgumentParser(prog="scd-msc make-shards"))
    return run_make_shards(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
