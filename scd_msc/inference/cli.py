"""``scd-msc generate`` and ``scd-msc eval``: argument parsing and the commands.

Wiring (in ``scd_msc/cli.py``)::

    gen = subparsers.add_parser("generate", help="stream a video to an mp4/GIF frame by frame")
    add_generate_arguments(gen)
    gen.set_defaults(func=run_generate)

Every argument is checked before any work (model build, generation, files); a bad one
prints ``scd-msc <command>: error: <argument>=<value>: expected ...`` and exits with 2.

Examples::

    scd-msc generate --preset scd-msc-tiny --frames 64 --steps 8 --out out/tiny.mp4 --gif
    scd-msc generate --checkpoint run/last.ckpt --frames 500 --steps 20 --out long.mp4 \\
        --prompt-shards 'shards/val/*.tar' --prompt-frames 4 --batch 4
    scd-msc eval --checkpoint run/last.ckpt --shards 'shards/val/*.tar' --context 4 --horizon 12 \\
        --clips 64 --steps 20 --out eval/scd-msc
    scd-msc generate --checkpoint runs/doom_tiny/checkpoints/last.ckpt --frames 32 --steps 10 \\
        --actions random --labels 0 --out doom.mp4   # a conditioned model: conditions.py
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from scd_msc.checks import error, number, positive_int
from scd_msc.config import RuntimeConfig
from scd_msc.diffusion import Sampler
from scd_msc.ema import WeightChoice
from scd_msc.inference import conditions, inputs, latents
from scd_msc.inference.codec import AutoencoderCodec
from scd_msc.inference.generate import stream_to_sinks
from scd_msc.inference.writers import open_sinks
from scd_msc.media import check_output_path, check_writable_folder
from scd_msc.models import ModelConfig


def add_model_arguments(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """The arguments that pick and run a model (generate, eval, play); ``--no-progress``
    only with ``progress``."""
    parser.add_argument("--checkpoint", default=None, help="training checkpoint (.ckpt) to load")
    parser.add_argument("--preset", default=None, help="a preset with random weights (smoke tests), "
                        "e.g. scd-msc-tiny; exactly one of --checkpoint/--preset")
    parser.add_argument("--weights", default="auto", metavar="{auto,ema,trained}",
                        help="which weights of --checkpoint: trained, ema (the moving average), or auto "
                        "(default): the EMA once it has seen 10/(1 - train.ema_decay) updates (1000 at "
                        "0.99), else the trained weights; the choice is printed")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (and init seed of --preset; default 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", choices=inputs.DTYPES,
                        help="weights and activations: auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--context-noise", type=float, default=0.0, metavar="T_C",
                        help="commit every context frame (prompt too) noised to level T_C in [0, 1) "
                        "(default 0: clean); for models trained with flow.context_noise_max > 0")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--cond-guidance", type=float, default=1.0, metavar="S",
                        help="classifier-free guidance on the actions and labels of a conditioned model: "
                        "v_null + S·(v_cond − v_null) (default 1.0: off)")
    parser.add_argument("--eager", action="store_true", help="opt out of the fast path (on CUDA the "
                        "per-step calls are compiled and replayed from CUDA graphs by default)")
    parser.add_argument("--decoder", default=None, metavar="MODULE:FUNCTION",
                        help="for models trained on latent shards of an outside --encoder: maps latents (N, c, h, w) "
                        "to pixels (N, C, H, W) in [-1, 1], frame by frame (the twin of make-shards --encoder; "
                        "modules in the working folder are found)")
    parser.add_argument("--autoencoder", default=None, metavar="AE.ckpt",
                        help="for models trained on latent shards of make-shards --autoencoder: the train-ae "
                        "checkpoint they decode through (default: the path the checkpoint recorded; its sha256 "
                        "must match the record). Pixel shards are then encoded through it")


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``generate`` arguments to ``parser`` (a subcommand parser)."""
    add_model_arguments(parser)
    parser.add_argument("--frames", type=int, required=True, help="frames to generate (after the prompt)")
    parser.add_argument("--steps", type=int, required=True, help="denoising steps per frame (S)")
    parser.add_argument("--out", required=True, help="output video: .mp4 (or .gif for a GIF only)")
    parser.add_argument("--gif", action="store_true", help="also write a GIF next to the mp4")
    parser.add_argument("--prompt-shards", default=None, help="shards (glob/brace pattern) whose first "
                        "clip(s) give the prompt frames; the video starts with them")
    parser.add_argument("--prompt-frames", type=int, default=None,
                        help="frames k of each prompt clip (default 1; needs --prompt-shards)")
    parser.add_argument("--batch", type=int, default=1, help="videos made at once, tiled side by side")
    parser.add_argument("--actions", default=None, metavar="random|FILE.npy",
                        help="the actions of the generated frames, for a model conditioned on actions: random "
                        "(each id held for 3-9 frames, seeded by --seed) or a .npy of integer ids, shape "
                        "(--frames,) or (--batch, --frames); actions[:, i] leads to frame i. They are saved "
                        "next to the video as OUT.actions.npy. The prompt's actions come from --prompt-shards")
    parser.add_argument("--labels", default=None, metavar="ID[,ID...]|random",
                        help="class ids of a class-conditioned model: one for every video, one per video, or "
                        "random (default: the prompt clips' own labels)")
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="CFG by perturbing the context (SCD families; 1.0 = off)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole history every frame (slow reference)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the files (default 8)")
    parser.add_argument("--report", default=None, metavar="FILE.json",
                        help="also write the per-frame latency and the fast path's setup time as JSON")
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` arguments to ``parser`` (a subcommand parser)."""
    add_model_arguments(parser)
    parser.add_argument("--shards", required=True, help="held-out shards (glob/brace pattern); a conditioned "
                        "model gets each clip's own actions and label, and is also scored with the actions "
                        "shuffled across clips")
    parser.add_argument("--context", type=int, required=True, help="prompt frames k given to the model")
    parser.add_argument("--horizon", type=int, required=True, help="frames n generated and scored")
    parser.add_argument("--clips", type=int, default=16, help="clips scored (the first M; default 16)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per frame (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="clips generated at once (default 8)")
    parser.add_argument("--examples", type=int, default=4, help="clips shown in the strip (default 4)")
    parser.add_argument("--out", default="eval", help="folder for eval.md/json, strip.png/gif, examples.npz "
                        "(default eval)")
    parser.add_argument("--teacher-forced", action="store_true", help="also score next-frame prediction from "
                        "the true history: horizon frame j denoised after the true frames before it (the same noise)")
    parser.add_argument("--no-shuffled", action="store_true", help="skip the run with shuffled actions (a "
                        "conditioned model; e.g. for a long rollout, where it would double the time)")
    return parser


@dataclass
class _Prepared:
    model: nn.Module
    device: torch.device
    source: inputs.ModelSource
    runtime: RuntimeConfig  # the checkpoint's backend and sampler (defaults for a preset)
    weights: Optional[WeightChoice] = None  # None for --preset

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.runtime.sampler)


def _prepare_model(args: argparse.Namespace, clip_frames: Optional[int], clip_count: int,
                   shards: Optional[str], shards_arg: str,
                   decoder: Optional[latents.FrameDecoder] = None) -> tuple[_Prepared, Optional[dict]]:
    """Model source, device, checkpoint and the first clips (a batch, checked against the
    model's channels and size; pixel clips of a latent model encoded through its
    ``decoder``'s autoencoder); a preset is only built once the clips are known good."""
    source = inputs.ModelSource(args.checkpoint, args.preset, args.weights)
    source.check()
    device = inputs.resolve_device(args.device)
    dtype = inputs.resolve_dtype(args.dtype, device)
    if device.type == "cuda":  # the command's process setting: TF32 matmuls, as in training (train.py)
        torch.set_float32_matmul_precision("high")
    loaded = inputs.load(source, device, args.seed, dtype) if source.checkpoint else None
    if loaded is not None:
        print(loaded.weights.line())  # weights: trained (EMA has 40 updates; auto uses it from 1000)
    cfg = loaded.model.cfg if loaded is not None else inputs.preset_cfg(source)
    clips = None
    if shards is not None and clip_frames is not None:
        clips = latents.read_clips(shards, shards_arg, clip_frames, clip_count, cfg, decoder)
    if loaded is None:
        loaded = inputs.load(source, device, args.seed, dtype)
    return _Prepared(loaded.model, device, source, loaded.runtime, loaded.weights), clips


def _check_common(args: argparse.Namespace) -> None:
    for name in ("steps", "batch"):
        positive_int(f"--{name}", getattr(args, name))
    number("--context-noise", args.context_noise, low=0, high=1, high_open=True)
    number("--cond-guidance", args.cond_guidance)


def _check_cond_guidance(args: argparse.Namespace, cfg: ModelConfig) -> None:
    if args.cond_guidance != 1.0 and not (cfg.actions or cfg.classes):
        raise error("--cond-guidance", args.cond_guidance, "1.0",
                    "this model has no actions or classes to guide on (model.actions=0, model.classes=0)")


def run_generate(args: argparse.Namespace) -> int:
    """Validate, stream the frames to the file(s), print a summary. Returns the exit code."""
    try:
        _check_common(args)
        positive_int("--frames", args.frames)
        if args.prompt_frames is not None:  # None: not given
            positive_int("--prompt-frames", args.prompt_frames)
            if args.prompt_shards is None:
                raise ValueError(f"--prompt-frames={args.prompt_frames}: needs --prompt-shards")
        number("--guidance", args.guidance)
        number("--fps", args.fps, low=0, low_open=True)
        out = check_output_path(args.out)
        k = (args.prompt_frames or 1) if args.prompt_shards else None
        decoder = latents.decoder_from_args(args)
        prep, clips = _prepare_model(args, k, args.batch, args.prompt_shards, "--prompt-shards", decoder)
        cfg = prep.model.cfg
        latents.check_frames(cfg, decoder, prep.device)
        if args.guidance != 1.0 and cfg.family == "causal-dit":
            raise ValueError(f"--guidance={args.guidance}: the causal-dit family has no context to "
                             "perturb; expected 1.0")
        _check_cond_guidance(args, cfg)
        conds = conditions.for_generate(cfg, args.actions, args.labels, args.batch, args.frames, args.seed,
                                        clips, args.prompt_shards)
        generator = torch.Generator(prep.device).manual_seed(args.seed)
        dtype = next(prep.model.parameters()).dtype
        prompt = None if clips is None else clips["video"]  # (B, k, C, H, W)
        device_prompt = None if prompt is None else prompt.to(prep.device, dtype)
        session = prep.model.stream(args.batch, args.steps, prompt=device_prompt, generator=generator,
                                    compile=False if args.eager else None,
                                    cache=not args.no_cache, guidance=args.guidance,
                                    context_noise=args.context_noise, sampler=prep.sampler,
                                    **conditions.stream_kwargs(conds.prompt_actions, conds.labels,
                                                            args.cond_guidance))
        if decoder is not None:  # frames and prompt are latents: write their pixels
            session = latents.DecodedSession(session, decoder)
            prompt = None if device_prompt is None else decoder.clip(device_prompt)  # (B, k, C, H, W)
        actions = conds.actions
        if actions is not None:  # saved before the first frame: an interrupted run can be replayed too
            saved = conditions.save_actions(actions, out)
    except ValueError as err:
        print(f"scd-msc generate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scd-msc generate: interrupted before the first frame; nothing written", file=sys.stderr)
        return 130
    report = stream_to_sinks(session, args.frames, open_sinks(out, args.gif, args.fps), prompt=prompt,
                             progress=not args.no_progress, actions=actions)
    print(report.summary())
    if actions is not None:
        print(f"wrote {saved}: the actions {tuple(actions.shape)} of the generated frames "
              f"(replay: --actions {saved} --seed {args.seed})")
    if conds.labels is not None:
        print(f"labels: {','.join(str(i) for i in conds.labels.tolist())}")
    if args.report is not None:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report.exit_code


def _model_info(prep: _Prepared) -> dict[str, Any]:
    cfg = prep.model.cfg
    return {"family": cfg.family, "preset": prep.source.preset, "checkpoint": prep.source.checkpoint,
            "parameters": sum(p.numel() for p in prep.model.parameters()), "channels": cfg.channels,
            "image_size": cfg.image_size, "sampler": prep.runtime.sampler.name,
            "backend": prep.runtime.backend,
            "dtype": str(next(prep.model.parameters()).dtype).removeprefix("torch."),
            "weights": None if prep.weights is None else prep.weights.as_dict()}


def run_eval(args: argparse.Namespace) -> int:
    """Validate, score continuations clip by clip, write the report. Returns the exit code."""
    from scd_msc.inference.evaluate import evaluate
    from scd_msc.inference.report import fmt, mean_lines, write_report

    try:
        _check_common(args)
        for name in ("context", "horizon", "clips", "examples"):
            positive_int(f"--{name}", getattr(args, name))
        out = check_writable_folder(args.out, "--out")
        frames = args.context + args.horizon
        decoder = latents.decoder_from_args(args)
        prep, first = _prepare_model(args, frames, 1, args.shards, "--shards", decoder)
        cfg = prep.model.cfg
        latents.check_frames(cfg, decoder, prep.device)
        _check_cond_guidance(args, cfg)
        conditions.clip_conditions(cfg, first, "--shards", args.shards)  # the clips carry what the model takes
        conditions.check_shard_names(cfg, args.shards, "--shards")
        batches = latents.clip_batches(args.shards, frames, cfg, min(args.batch, args.clips), decoder)
    except ValueError as err:
        print(f"scd-msc eval: error: {err}", file=sys.stderr)
        return 2
    try:
        generator = torch.Generator(prep.device).manual_seed(args.seed)
        result = evaluate(prep.model, batches, args.context, args.steps, args.clips, generator,
                          examples=args.examples, progress=not args.no_progress,
                          context_noise=args.context_noise, decoder=decoder, sampler=prep.sampler,
                          cond_guidance=args.cond_guidance, shuffle_seed=args.seed,
                          compile=False if args.eager else None, shuffle=not args.no_shuffled,
                          teacher_forced=args.teacher_forced)
    except KeyboardInterrupt:
        print("scd-msc eval: interrupted before the first clip was scored; no report written", file=sys.stderr)
        return 130
    if result.clips < args.clips and not result.interrupted:
        print(f"scd-msc eval: warning: the shards hold only {result.clips} usable clips "
              f"(--clips {args.clips})", file=sys.stderr)
    info = {"model": _model_info(prep), "family": prep.model.cfg.family, "preset": args.preset,
            "checkpoint": args.checkpoint, "shards": args.shards, "steps": args.steps, "seed": args.seed,
            "batch": args.batch, "context_noise": args.context_noise, "device": str(prep.device),
            "clips_requested": args.clips, "decoder": args.decoder if decoder is None else decoder.spec,
            "conditions": {"actions": cfg.actions, "classes": cfg.classes, "cond_guidance": args.cond_guidance}}
    summary = write_report(result, info, Path(out))
    rows = ", ".join(f"{r['step']}: {fmt(r['psnr'], 2)}" for r in summary["per_horizon"])
    print(f"scored {result.clips} clips (context {args.context}, horizon {args.horizon}); PSNR per step {rows}")
    for line in mean_lines(summary):
        print(line)
    if isinstance(decoder, AutoencoderCodec) and result.ceiling is None:
        print("autoencoder ceiling: n/a (latent shards, scored against their decoded latents; pass the pixel "
              "shards they were made from as --shards to score against the true frames)")
    print(f"wrote {out / 'eval.md'}, {out / 'eval.json'}, {out / 'strip.png'}, {out / 'strip.gif'}, "
          f"{out / 'examples.npz'}")
    if result.interrupted:
        print(f"scd-msc eval: interrupted after {result.clips} of {args.clips} clips; the report covers those",
              file=sys.stderr)
        return 128 + (result.signum or signal.SIGINT)
    return 0
