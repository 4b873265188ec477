"""The experiment config: presets as defaults, yaml and CLI overrides, loud and fast errors."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from scd_msc.ae_config import AEExperimentConfig, load_ae_config
from scd_msc.config import ExperimentConfig, config_from_dict, config_to_dict, load_config
from scd_msc.models import preset_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
CONFIGS = [p for p in ALL_CONFIGS if not os.path.basename(p).startswith("ae_")]  # ae_*: scd-msc train-ae
AE_CONFIGS = [p for p in ALL_CONFIGS if p not in CONFIGS]


def load_any(path: str):
    """``configs/ae_*.yaml`` with the autoencoder's loader, the others with load_config."""
    return load_ae_config(path, []) if path in AE_CONFIGS else load_config(path, [])


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_file_loads(path):
    cfg = load_config(path, [])
    assert isinstance(cfg, ExperimentConfig)
    family = cfg.preset.rsplit("-", 1)[0]
    assert cfg.model.family == family
    expected = {"moving_digits": "scd-msc", "causal_dit": "causal-dit", "scd_dense": "scd-dense", "videos": "scd-msc",
                "doom": "scd-msc", "atari": "scd-msc"}
    name = os.path.basename(path)
    assert any(name.startswith(k) and family == v for k, v in expected.items()), (name, family)
    assert (cfg.data.image_size, cfg.data.channels) == (cfg.model.image_size, cfg.model.channels)
    assert cfg.data.train_shards and cfg.train.out_dir.startswith("runs/")
    assert cfg.data.val_shards or cfg.train.val_every_n_steps == 0  # no validation without held-out shards


@pytest.mark.parametrize("path", AE_CONFIGS, ids=os.path.basename)
def test_every_autoencoder_config_file_loads(path):
    cfg = load_ae_config(path, [])
    assert isinstance(cfg, AEExperimentConfig) and cfg.data.channels == cfg.model.channels == 3
    assert cfg.data.train_shards and cfg.data.val_shards and cfg.train.out_dir.startswith("runs/ae_")
    with pytest.raises(ValueError, match="^unknown config key 'model.preset' in the command-line overrides"):
        load_ae_config(path, ["model.preset=1"])


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_config_lists_the_make_shards_commands_of_its_shards(path):
    """The `scd-msc make-shards` lines at the top write the train and val shards the config
    reads (as many as a brace pattern names), the val shards from another seed. Latent
    shards made ``--from`` pixel shards count the clips of those, made by a line above."""
    from braceexpand import braceexpand

    from scd_msc.cli import build_parser

    lines = re.findall(r"^#\s+(scd-msc make-shards .*)$", open(path).read(), re.M)
    made = {os.path.normpath(a.out): a for a in (build_parser().parse_args(shlex.split(x)[1:]) for x in lines)}

    def origin(args):  # the pixel shards behind latents made --from them
        return origin(made[os.path.normpath(os.path.dirname(args.from_shards))]) if args.from_shards else args

    cfg = load_any(path)
    used = {"train": cfg.data.train_shards, "val": cfg.data.val_shards}
    for split, pattern in used.items():
        if not pattern:
            continue
        folder = os.path.normpath(os.path.dirname(pattern))
        assert folder in made, (split, pattern, sorted(made))
        names = list(braceexpand(pattern))
        if len(names) > 1:
            args = made[folder]
            assert len(names) == -(-origin(args).clips // args.shard_size), (split, pattern)
    if used["val"]:
        train, val = (origin(made[os.path.normpath(os.path.dirname(used[k]))]) for k in ("train", "val"))
        same = ("source", "frames", "size", "channels", "games", "scenarios")
        assert val.seed != train.seed and all(getattr(val, k) == getattr(train, k) for k in same)


def test_config_files_cover_the_three_sizes_and_families():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"moving_digits_tiny.yaml", "moving_digits_small.yaml", "moving_digits_base.yaml",
            "causal_dit_tiny.yaml", "causal_dit_small.yaml", "scd_dense_small.yaml"} <= names


def test_preset_gives_model_defaults_and_overrides_win(tmp_path):
    cfg = load_config(None, ["preset=causal-dit-small", "model.dim=192", "train.lr=1e-4"])
    small = preset_config("causal-dit-small")
    assert cfg.model.family == "causal-dit" and cfg.model.dim == 192 and cfg.model.enc_depth == small.enc_depth
    assert cfg.train.lr == 1e-4 and cfg.data.image_size == small.image_size  # data follows the model
    yaml = tmp_path / "x.yaml"
    yaml.write_text("preset: scd-dense-tiny\nmodel:\n  heads: 2\ntrain:\n  devices: 2\n")
    cfg = load_config(str(yaml), ["model.heads=8"])  # the command line beats the file
    assert cfg.model.family == "scd-dense" and cfg.model.heads == 8 and cfg.train.devices == 2


def test_round_trip_through_a_plain_dict():
    cfg = load_config(None, ["preset=scd-msc-small", "train.betas=[0.8,0.95]", "data.val_batches=null"])
    d = config_to_dict(cfg)
    assert isinstance(d["model"], dict) and isinstance(d["model"]["schedule"], dict)
    assert config_from_dict(d) == cfg


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", ["unknown config key 'train.lrr'", "known under train: lr,"]),
    ("modle.dim=3", ["unknown config key 'modle'", "model"]),
    ("model.schedule.base.windw=3", ["'model.schedule.base.windw'", "window"]),
    ("train.lr=abc", ["'train.lr'", "expects float", "got 'abc'"]),
    ("model.schedule.base.window=big", ["'model.schedule.base.window'", "expects int", "got 'big'"]),
    ("train.betas=[0.9,x]", ["'train.betas[1]'", "expects float"]),
    ("train.compile=maybe", ["train.compile='maybe'", "expected one of auto, True, False"]),
    ("train.ema_warmup=1.5", ["'train.ema_warmup'", "expects bool, got '1.5'"]),
    ("data.val_batches=many", ["'data.val_batches'", "expects int or null"]),
    ("train.precision=fp8", ["train.precision='fp8': expected one of auto, 32-true, bf16-mixed, "]),
    ("train.strategy=deepspeed", ["train.strategy='deepspeed': expected one of auto, ddp, fsdp"]),
    ("data.batch_size=0", ["data.batch_size=0: expected an integer >= 1"]),
    ("data.image_size=30", ["data.image_size=30 does not fit scd-msc-tiny", "model.patch=4",
                            "pass model.patch=3 or pass data.image_size=32"]),
    ("data.channels=grey", ["data.channels='grey': expected an integer >= 1 or auto"]),
    ("preset=huge", ["preset='huge': expected one of scd-msc-tiny, "]),
    ("train.lr", ["key=value"]),
])
def test_bad_values_name_the_key_and_the_expectation(override, words):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=0"], "train.lr=0.0: expected a number > 0"),
    (["train.lr=nan"], "train.lr=nan: expected a number > 0"),
    (["train.max_steps=0"], "train.max_steps=0: expected an integer >= 1"),
    (["train.seed=-1"], "train.seed=-1: expected an integer >= 0"),
    (["train.betas=[0.9,1.0]"], "train.betas[1]=1.0: expected a number in [0, 1)"),
    (["train.betas=[0.9]"], "train.betas=[0.9]: expected two numbers in [0, 1)"),
    (["train.ema_decay=1.0"], "train.ema_decay=1.0: expected a number in [0, 1); 0 turns the EMA off"),
    (["data.val_batches=0"], "data.val_batches=0: expected an integer >= 1 or None"),
    (["data.num_workers=-1"], "data.num_workers=-1: expected an integer >= 0"),
    (["flow.context_noise_max=2"], "flow.context_noise_max=2.0: expected a number in [0, 1]"),
    (["runtime.sampler.name=dpm"], "runtime.sampler.name='dpm': expected one of euler, heun"),
    (["runtime.backend=cudnn"], "runtime.backend='cudnn': expected one of reference, flex, natten, auto"),
    (["model.family=unet"], "model.family='unet': expected one of scd-msc, scd-dense, causal-dit"),
    (["model.dim=60"], "model.dim=60: expected a multiple of 8·model.heads=32; so that the head dim dim/heads "
                       "is a multiple of 8 (3-D RoPE)"),
    (["model.attention.gating=soft"], "model.attention.gating='soft': expected one of branch, head, off"),
    (["model.attention.hires_heads=5"],
     "model.attention.hires_heads=5: expected an integer in [0, 4] or None; the layers have 4 heads"),
    (["model.schedule.base.window=4"], "model.schedule.base.window=4: expected an odd integer >= 1"),
    (["model.schedule.name=explicit", "model.schedule.layers=[{down: 2}, {stride: 0}]"],
     "model.schedule.layers[1].stride=0: expected an integer >= 1"),
    (["model.decoder_window=4"], "model.decoder_window=4: expected an odd integer in [1, 8]; token grid 8×8"),
    (["model.image_size=30", "data.image_size=30"], "model.image_size=30: expected a multiple of model.patch=4"),
])
def test_bad_values_fail_in_one_phrasing(overrides, message):
    """``key=value: expected what``, the key named by its config path, nested ones too."""
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert str(err.value) == message


def test_the_grid_is_checked_once_the_size_is_known():
    """``model.patch=3`` (the fix ``data.image_size=30`` suggests) must not be checked against
    the preset's image_size 32 before the model follows the data's 30."""
    cfg = load_config(None, ["data.image_size=30", "model.patch=3"])
    assert (cfg.model.image_size, cfg.model.patch, cfg.model.grid) == (30, 3, 10)


def test_a_typo_in_the_yaml_names_the_file(tmp_path):
    yaml = tmp_path / "bad.yaml"
    yaml.write_text("train:\n  max_step: 10\n")
    with pytest.raises(ValueError, match=r"unknown config key 'train.max_step' in config file .*bad.yaml"):
        load_config(str(yaml), [])
    with pytest.raises(ValueError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"), [])


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["-m", "scd_msc.cli", "train", "--config", "configs/moving_digits_tiny.yaml", "train.lrr=1"],
     "unknown config key 'train.lrr'"),
    (["-m", "scd_msc.cli", "train", "train.lr=abc"],
     "config key 'train.lr' in the command-line overrides expects float, got 'abc'"),
])
def test_cli_fails_fast_on_a_typo_before_importing_lightning(args, message):
    """The config is checked before the trainer's modules are imported: ``-X importtime``
    lists every module the process imported, and neither Lightning nor the training
    package may be among them when a key is wrong."""
    proc = _run([sys.executable, "-X", "importtime"] + args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
    assert imported & {"torch", "scd_msc.config"}, "importtime listed nothing: the check below would be empty"
    trainer = {"scd_msc.training.train", "scd_msc.training.module", "scd_msc.training.callbacks"}
    assert not {m for m in imported if m.split(".")[0] == "lightning" or m in trainer}


def test_cli_prints_the_resolved_config():
    proc = _run(["scd-msc", "train", "--config", "configs/causal_dit_tiny.yaml", "--print-config",
                    "train.max_steps=7"])
    assert proc.returncode == 0, proc.stderr
    assert "family: causal-dit" in proc.stdout and "max_steps: 7" in proc.stdout
