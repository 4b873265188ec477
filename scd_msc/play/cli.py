"""``scd-msc play``: the command's arguments, its checks, and the start of the server.

Every argument is checked before the model is loaded, and the port is bound before
too, so a busy port costs no model load; a bad one prints
``scd-msc play: error: <argument>=<value>: expected ...`` and exits with 2. A model
must be conditioned on actions (``ModelConfig.actions > 0``): a preset has none unless
``--preset-actions N`` gives it ``N`` (random weights: for trying the page).

The action names shown on the page come from ``--prompt-shards``, else from the
checkpoint's training shards when they are still there, else ``action 0 .. N-1``.

Examples::

    scd-msc play --checkpoint runs/doom/checkpoints/last.ckpt --prompt-shards 'shards/doom_val/*.tar'
    scd-msc play --preset scd-msc-tiny --preset-actions 4 --record play.mp4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional

import torch

from scd_msc.checks import error, integer, number, positive_int
from scd_msc.config import RuntimeConfig
from scd_msc.diffusion import Sampler
from scd_msc.inference import conditions, inputs, latents
from scd_msc.inference.cli import add_model_arguments
from scd_msc.media import check_output_path
from scd_msc.models import ModelConfig, model_from_config, preset_config, seeded_init
from scd_msc.play.game import Game, Prompts
from scd_msc.play.keys import bind_keys


def add_play_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``play`` arguments to ``parser`` (a subcommand parser)."""
    add_model_arguments(parser, progress=False)
    parser.add_argument("--preset-actions", type=int, default=None, metavar="N",
                        help="with --preset: condition its random weights on N actions")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per frame (default 8)")
    parser.add_argument("--prompt-shards", default=None, help="held-out shards (glob/brace pattern): reset "
                        "re-prompts from their first clips in turn; without them every start is blank")
    parser.add_argument("--prompt-frames", type=int, default=1, help="frames of each prompt clip (default 1)")
    parser.add_argument("--prompt-clips", type=int, default=8, help="clips read from --prompt-shards (default 8)")
    parser.add_argument("--labels", default=None, metavar="ID",
                        help="the class id of a class-conditioned model (default: 0)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    parser.add_argument("--record", default=None, metavar="OUT.mp4",
                        help="write every frame the page shows (prompt frames too, across resets) to an mp4")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of --record (default 8)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "prompt_frames", "prompt_clips"):
        positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    positive_int("--preset-actions", args.preset_actions, allow_none=True)
    if args.preset_actions is not None and args.preset is None:
        raise error("--preset-actions", args.preset_actions, "no value without --preset",
                    "a checkpoint's model has its own actions")
    integer("--port", args.port, low=0, high=65535)
    number("--fps", args.fps, low=0, low_open=True)
    number("--context-noise", args.context_noise, low=0, high=1, high_open=True)
    number("--cond-guidance", args.cond_guidance)
    if args.record is not None:
        check_output_path(args.record, "--record", (".mp4",))


def _load(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, RuntimeConfig]:
    """The model and its runtime knobs; a preset gets ``--preset-actions``."""
    source = inputs.ModelSource(args.checkpoint, args.preset, args.weights)
    source.check()
    dtype = inputs.resolve_dtype(args.dtype, device)
    if source.checkpoint is not None:
        loaded = inputs.load(source, device, args.seed, dtype)
        print(loaded.weights.line())
        return loaded.model, loaded.runtime
    cfg = dataclasses.replace(preset_config(args.preset), actions=args.preset_actions or 0)
    runtime = RuntimeConfig()
    with seeded_init(args.seed):
        model = model_from_config(cfg, runtime.backend)
    return model.to(device=device, dtype=dtype).eval(), runtime


def _check_actions(args: argparse.Namespace, cfg: ModelConfig) -> None:
    if cfg.actions:
        return
    if args.preset is not None:
        raise error("--preset", args.preset, "a model conditioned on actions",
                    "presets have none: add --preset-actions N")
    raise error("--checkpoint", args.checkpoint, "a model conditioned on actions (model.actions > 0)",
                "this one has model.actions=0, so no key could steer it")


def action_names(cfg: ModelConfig, prompt_shards: Optional[str], checkpoint: Optional[str]) -> tuple[str, ...]:
    """The names of ids ``0 .. N-1``: from the prompt shards, the checkpoint's training
    shards (if still there), or ``action i``."""
    from scd_msc.data import shard_conditions

    candidates = [prompt_shards]
    if checkpoint is not None:
        from scd_msc.checkpoint import read_checkpoint, stored_config

        candidates.append(stored_config(read_checkpoint(checkpoint, mmap=True), checkpoint).data.train_shards)
    for shards in filter(None, candidates):
        try:
            names = shard_conditions(shards).action_names
        except ValueError:  # training shards gone or moved: try the next source
            continue
        if len(names) == cfg.actions:
            return names
    return tuple(f"action {i}" for i in range(cfg.actions))


def _prompts(args: argparse.Namespace, cfg: ModelConfig, model: torch.nn.Module,
             decoder: Optional[latents.FrameDecoder]) -> Optional[Prompts]:
    if args.prompt_shards is None:
        return None
    clips = latents.read_clips(args.prompt_shards, "--prompt-shards", args.prompt_frames, args.prompt_clips,
                               cfg, decoder, exact=False)  # pixel clips of a latent model: encoded
    conditions.check_shard_names(cfg, args.prompt_shards, "--prompt-shards")
    actions, _ = conditions.clip_conditions(cfg, clips, "--prompt-shards", args.prompt_shards, labels=False)
    param = next(model.parameters())
    return Prompts(clips["video"].to(param.device, param.dtype), None if actions is None else actions.to(param.device))


def build_game(args: argparse.Namespace) -> Game:
    """The checked arguments as a :class:`Game` (ValueError naming the argument)."""
    decoder = latents.decoder_from_args(args)
    device = inputs.resolve_device(args.device)
    model, runtime = _load(args, device)
    cfg = model.cfg
    _check_actions(args, cfg)
    latents.check_frames(cfg, decoder, device)
    labels = None
    if cfg.classes:
        labels = conditions.parse_labels(args.labels or "0", cfg.classes, 1, args.seed)
    elif args.labels is not None:
        raise error("--labels", args.labels, "no value", "this model has no classes (model.classes=0)")
    return Game(model, bind_keys(action_names(cfg, args.prompt_shards, args.checkpoint)), args.steps, args.seed,
                prompts=_prompts(args, cfg, model, decoder), sampler=Sampler(runtime.sampler), labels=labels,
                record=args.record, fps=args.fps, decode=decoder, compile=False if args.eager else None,
                context_noise=args.context_noise, cond_guidance=args.cond_guidance)


def run_play(args: argparse.Namespace) -> int:
    """Check, bind the port, load the model, serve until Ctrl-C. Returns the exit code."""
    from scd_msc.play import server

    sock = None
    try:
        _check_args(args)
        server.import_web()
        sock = server.bind(args.host, args.port)
        game = build_game(args)
        app = server.make_app(game)
    except (ValueError, ImportError) as err:
        if sock is not None:
            sock.close()
        print(f"scd-msc play: error: {err}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    where = f"[{host}]" if ":" in host else host
    print(f"playing {game.model.cfg.family} ({game.num_actions} actions, {game.steps} steps/frame) on "
          f"http://{where}:{port}/  (Ctrl-C stops)", flush=True)
    server.serve(app, sock)
    return 0
