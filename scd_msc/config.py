"""The experiment config: one typed dataclass per component, composed and validated.

``ExperimentConfig = preset + model + flow + runtime + data + train``: ``model`` is what
defines the weights, ``flow`` the training objective, ``runtime`` the knobs that change
how a model runs but not its weights (attention backend, sampler), so a resume may
change them. Loading (STYLE.md §4)::

    defaults   OmegaConf.structured(ExperimentConfig(model=preset_config(preset)))
    <- yaml    configs/moving_digits_tiny.yaml
    <- CLI     OmegaConf.from_dotlist(["train.lr=1e-3", "data.batch_size=4"])
    -> OmegaConf.to_object -> plain dataclasses, cross-checked

``preset`` (e.g. ``scd-msc-tiny``) names the :class:`ModelConfig` whose values are the
defaults of ``model``; the yaml's ``model:`` keys then override single fields.

Frame shape: ``data.channels`` / ``data.image_size`` default to ``auto``, read from the
first training sample (:func:`scd_msc.data.probe.probe_shards`), and the model follows
the data unless ``model.channels`` / ``model.image_size`` are set in the yaml or on the
command line. Before the shards exist (``--print-config`` on a fresh clone) ``auto``
takes the model's values. Disagreements and sizes the preset cannot patchify fail in one
line that names the overrides to use (:func:`resolve_frame_shape`). An
unknown key or a value of the wrong type raises a :class:`ValueError` naming the key,
what it expects and what it got, before anything is built (Lightning is not imported).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from scd_msc import checks
from scd_msc.data.config import AUTO, DataConfig
from scd_msc.data.dataset import expand_shards
from scd_msc.data.probe import ShardInfo, probe_shards
from scd_msc.diffusion import FlowConfig, SamplerConfig
from scd_msc.models.config import ModelConfig
from scd_msc.models.presets import PRESETS, preset_config
from scd_msc.ops.backends import BACKENDS

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_PRESET = "scd-msc-tiny"
FRAME_SHAPE = ("channels", "image_size")  # the fields data and model must agree on


@dataclass
class TrainConfig:
    """Optimisation, checkpointing, logging and hardware of one training run.

    Steps are optimizer steps (``trainer.global_step``). ``*_every_n_steps = 0`` turns
    that job off. ``precision="auto"``: ``bf16-mixed`` when CUDA is used, else ``32-true``.
    ``ema_decay = 0``: no EMA. ``ema_warmup``: the EMA's decay ramps up as
    ``min(ema_decay, (1 + n) / (10 + n))`` over its first ``n`` updates, so short runs get a
    usable average (``scd_msc/ema.py``); ``false``: ``ema_decay`` from the first update.
    ``keep_checkpoints``: how many of the newest
    ``checkpoints/step_NNNNNNN.ckpt`` (one every ``checkpoint_every_n_steps``) are kept;
    ``last.ckpt`` is always written and not counted, so ``0`` keeps only it. A ``--resume``
    run keeps counting (older step files are removed); a fresh start in the same ``out_dir``
    leaves earlier step files alone. ``compile``: ``torch.compile`` every transformer block
    (``auto``: when training on CUDA). ``activation_checkpointing``: recompute each block's
    activations in the backward pass (less memory, about a third more compute).
    ``timing_warmup``: steps left out of ``<out_dir>/timing.json`` (step time, loader wait).
    ``lr_schedule``: after the warm-up, ``constant`` or ``cosine`` (down to
    ``lr_min_ratio · lr`` at the end of the run). ``max_minutes``: stop cleanly (``last.ckpt``
    written) after this much training time, resumes included (Lightning's ``max_time``); 0 =
    no limit. With both, the cosine follows whichever of ``max_steps`` and ``max_minutes``
    is closer to running out, so the rate reaches its floor when the run stops.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.0
    max_steps: int = 10_000
    max_minutes: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    accumulate_grad_batches: int = 1
    precision: str = "auto"
    ema_decay: float = 0.0
    ema_warmup: bool = True
    checkpoint_every_n_steps: int = 500
    keep_checkpoints: int = 3
    val_every_n_steps: int = 500
    sample_every_n_steps: int = 1000
    sample_count: int = 4  # clips per sample strip
    sample_frames: int = 16
    sample_steps: int = 20
    log_every_n_steps: int = 10
    out_dir: str = "runs/default"
    seed: int = 0
    devices: Union[int, str] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    compile: Union[bool, str] = "auto"
    activation_checkpointing: bool = False
    progress_bar: bool = True
    timing_warmup: int = 20  # training/timing.py
    cond_dropout: float = 0.1  # conditioned models: each action / label id -> null with this probability

    def __post_init__(self) -> None:
        checks.choice("train.precision", self.precision, PRECISIONS)
        checks.choice("train.strategy", self.strategy, STRATEGIES)
        checks.choice("train.accelerator", self.accelerator, ACCELERATORS)
        checks.choice("train.compile", self.compile, ("auto", True, False))
        checks.choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.number("train.lr_min_ratio", self.lr_min_ratio, low=0, high=1)
        checks.number("train.max_minutes", self.max_minutes, low=0, detail="0 = no time limit")
        for name in ("max_steps", "accumulate_grad_batches", "num_nodes", "sample_count", "sample_frames",
                     "sample_steps", "log_every_n_steps", "checkpoint_every_n_steps"):
            checks.positive_int(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "val_every_n_steps", "sample_every_n_steps", "keep_checkpoints", "seed",
                     "timing_warmup"):
            checks.non_negative_int(f"train.{name}", getattr(self, name))
        checks.number("train.lr", self.lr, low=0, low_open=True)
        checks.number("train.weight_decay", self.weight_decay, low=0)
        checks.number("train.grad_clip", self.grad_clip, low=0, detail="0 turns clipping off")
        if len(self.betas) != 2:
            raise checks.error("train.betas", list(self.betas), "two numbers in [0, 1)")
        for i, beta in enumerate(self.betas):
            checks.number(f"train.betas[{i}]", beta, low=0, high=1, high_open=True)
        checks.number("train.cond_dropout", self.cond_dropout, low=0, high=1, high_open=True)
        checks.number("train.ema_decay", self.ema_decay, low=0, high=1, high_open=True, detail="0 turns the EMA off")
        if not self.out_dir:
            raise ValueError("train.out_dir='': expected a folder for checkpoints and logs")


@dataclass
class RuntimeConfig:
    """How a model runs, not what it is: the attention ``backend`` of every layer
    (``auto`` or one of :data:`scd_msc.ops.BACKENDS`) and the ``sampler``."""

    backend: str = "auto"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        checks.choice("runtime.backend", self.backend, BACKENDS + ("auto",))


@dataclass
class ExperimentConfig:
    """Everything one run needs. ``preset`` gives the defaults of ``model``."""

    preset: str = DEFAULT_PRESET
    model: ModelConfig = field(default_factory=lambda: preset_config(DEFAULT_PRESET))
    flow: FlowConfig = field(default_factory=FlowConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Checks across components (each component checks itself when built)."""
        self.model.validate()
        for name in FRAME_SHAPE:
            d, m = getattr(self.data, name), getattr(self.model, name)
            if d != AUTO and d != m:
                raise ValueError(f"data.{name}={d} but model.{name}={m}: they must agree "
                                 f"(leave data.{name}=auto to follow the shards)")
        if self.train.strategy == "fsdp" and self.train.ema_decay > 0:
            raise ValueError("train.ema_decay > 0 with train.strategy=fsdp: Lightning's EMA callback does not "
                             "support sharded models; set train.ema_decay=0")


# ---------------------------------------------------------------- error messages


def _type_name(tp: Any) -> str:
    """``float``, ``int or str``, ``list of float``, ``int or null``..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _field_type(full_key: str, root: Any) -> Any:
    """The annotated type of ``train.lr`` / ``model.schedule.layers[0].down`` in the
    config dataclass ``root``, or None."""
    tp: Any = root
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", full_key):
        while typing.get_origin(tp) is Union:  # Optional[X] -> X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if part.startswith("["):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        elif dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        else:
            return None
    return tp


def _known_keys(obj_type: Any) -> str:
    if dataclasses.is_dataclass(obj_type):
        return ", ".join(f.name for f in dataclasses.fields(obj_type))
    return "?"


def _friendly(err: OmegaConfBaseException, where: str, root: Any = None) -> ValueError:
    full_key = getattr(err, "full_key", None) or getattr(err, "key", None)
    if isinstance(err, ConfigKeyError) and full_key:
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else "the top level"
        return ValueError(f"unknown config key '{full_key}' in {where} "
                          f"(known under {parent}: {_known_keys(err.object_type)})")
    if isinstance(err, ValidationError) and full_key:
        tp = _field_type(str(full_key), root or ExperimentConfig)
        got = re.match(r"Value '(.*)' (?:of type|is not a valid)", str(err.msg or ""), re.S)
        got_text = f"got '{got.group(1)}'" if got else f"({(err.msg or '').splitlines()[0]})"
        expects = _type_name(tp) if tp is not None else "another type"
        return ValueError(f"config key '{full_key}' in {where} expects {expects}, {got_text}")
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    key = f" key '{full_key}'" if full_key else ""
    return ValueError(f"invalid config{key} in {where}: {msg}")


# ---------------------------------------------------------------- loading


def merge_layer(base: DictConfig, layer: DictConfig, where: str, root: Any = None) -> DictConfig:
    """``layer`` merged onto ``base`` (a structured config of the dataclass ``root``,
    default :class:`ExperimentConfig`), or a one-line ``ValueError`` naming the key."""
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _friendly(err, where, root) from None


def read_layers(path: Optional[str], overrides: Optional[list[str]]) -> tuple[DictConfig, DictConfig]:
    """The yaml at ``path`` (empty when None) and the ``key=value`` overrides, parsed but
    not yet checked against any dataclass; one-line ``ValueError`` when they cannot be."""
    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r}: expected key=value, e.g. train.lr=1e-4")
    try:
        yaml = OmegaConf.load(path) if path else OmegaConf.create()
        dots = OmegaConf.from_dotlist(overrides)
    except FileNotFoundError:
        raise ValueError(f"config file {path!r} does not exist") from None
    except Exception as err:  # yaml syntax errors, bad dotlist syntax
        raise ValueError(f"config {path or ''} {overrides}: could not be parsed: {err}") from None
    if not isinstance(yaml, DictConfig):
        raise ValueError(f"config file {path!r}: expected a mapping at the top level")
    return yaml, dots


def to_config_object(cfg: DictConfig) -> Any:
    """``OmegaConf.to_object`` that runs every ``__post_init__``; their ``ValueError``
    (or a one-line one for what OmegaConf refuses) is raised as it is."""
    try:
        return OmegaConf.to_object(cfg)  # resolves ${...} and runs every __post_init__
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else None
        raise cause or _friendly(err, "the config", OmegaConf.get_type(cfg)) from None


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """The validated :class:`ExperimentConfig` of yaml ``path`` plus ``key=value`` overrides.

    Raises ``ValueError`` naming the key for unknown keys, wrong types and bad values.
    """
    yaml, dots = read_layers(path, overrides)
    preset = dots.get("preset", yaml.get("preset", DEFAULT_PRESET))
    checks.choice("preset", preset, PRESETS)
    cfg = OmegaConf.structured(ExperimentConfig(preset=preset, model=preset_config(preset)))
    cfg = merge_layer(cfg, yaml, f"config file {path!r}")
    cfg = merge_layer(cfg, dots, "the command-line overrides")
    exp = to_config_object(cfg)
    assert isinstance(exp, ExperimentConfig)
    explicit = {n for n in FRAME_SHAPE for layer in (yaml, dots)
                if OmegaConf.select(layer, f"model.{n}") is not None}  # set by the user, not by the preset
    resolve_frame_shape(exp, explicit)
    resolve_conditions(exp, {n for n in ("actions", "classes") for layer in (yaml, dots)
                             if OmegaConf.select(layer, f"model.{n}") is not None})
    exp.validate()
    return exp


# ---------------------------------------------------------------- frame shape


def probe_train_shards(spec: str) -> Optional[ShardInfo]:
    """The first training sample's shape; None while the shards do not exist yet."""
    if not spec:
        return None
    try:
        expand_shards(spec)
    except ValueError:
        return None
    try:
        return probe_shards(spec)
    except ValueError as err:
        raise ValueError(f"data.train_shards: {err}") from None


def _check_against_shards(data: DataConfig, info: ShardInfo) -> None:
    """An explicit ``data.channels`` / ``data.image_size`` must match what the shards hold
    (a pixel size may differ with ``data.resize``: the reader then resizes)."""
    held = f"{data.train_shards} holds {info.describe()}"
    if data.channels not in (AUTO, info.channels):
        raise ValueError(f"data.channels={data.channels} but {held}: drop data.channels={data.channels} "
                         f"(auto follows the shards) or use {_channel_shards(data.channels)}")
    resizable = data.resize and info.kind == "pixels"
    if data.image_size not in (AUTO, info.size) and not resizable:
        fix = "pass data.resize=true" if info.kind == "pixels" else "use latents of that size"
        raise ValueError(f"data.image_size={data.image_size} but {held}: drop data.image_size={data.image_size} "
                         f"(auto follows the shards) or {fix}")


def _channel_shards(channels: int) -> str:
    return {1: "grey shards", 3: "RGB shards"}.get(channels, f"{channels}-channel shards")


def _check_fit(exp: ExperimentConfig, origin: str, remedy: str) -> None:
    """The data's size must patchify into a token grid the preset's windows fit in
    (``ModelConfig.validate``); otherwise name a ``model.patch`` and a size that work."""
    m = exp.model
    need = max(m.decoder_window, m.schedule.base.window)  # tokens per side the attention windows span
    if m.image_size % m.patch == 0 and m.image_size // m.patch >= need:
        return
    patches = [p for p in range(m.patch - 1, 0, -1) if m.image_size % p == 0 and m.image_size // p >= need]
    size = max(need * m.patch, -(-m.image_size // m.patch) * m.patch)
    fixes = [f"pass model.patch={patches[0]}"] if patches else []
    raise ValueError(f"data.image_size={m.image_size}{origin} does not fit {exp.preset}: it must be a multiple "
                     f"of model.patch={m.patch} and span at least {need} patches (the attention windows); "
                     + " or ".join(fixes + [remedy.format(size)]))


def resolve_frame_shape(exp: ExperimentConfig, explicit_model: Collection[str] = ()) -> Optional[ShardInfo]:
    """Resolve ``auto`` in ``exp.data`` from the training shards, make the model follow the
    data (except the fields named in ``explicit_model``), in place. Raises a one-line
    ``ValueError`` naming the overrides to use when data, shards and model disagree or the
    size does not fit the preset. Returns the probed sample (None: no shards yet)."""
    info = probe_train_shards(exp.data.train_shards)
    was_auto = {n for n in FRAME_SHAPE if getattr(exp.data, n) == AUTO}
    if info is not None:
        _check_against_shards(exp.data, info)
        exp.data = exp.data.with_shape_of(info)
    for name in FRAME_SHAPE:
        d, m = getattr(exp.data, name), getattr(exp.model, name)
        if d == AUTO:  # no shards yet: the data follows the model (train then reports the missing shards)
            setattr(exp.data, name, m)
        elif name not in explicit_model:
            setattr(exp.model, name, d)
        elif d != m and info is not None and name in was_auto:
            need = _channel_shards(m) if name == "channels" else f"shards of size {m}"
            raise ValueError(f"data.{name}={d} (from {exp.data.train_shards}) but model.{name}={m}: "
                             f"drop model.{name}={m} or pass data.{name}={m} with {need}")
        elif d != m:
            raise ValueError(f"data.{name}={d} but model.{name}={m}: they must agree; drop model.{name}={m} "
                             f"(the model follows the data) or set data.{name}={m}")
    if "image_size" not in explicit_model:  # the size came from the data: say how to make it fit
        if info is None or "image_size" not in was_auto:
            _check_fit(exp, "", "pass data.image_size={}")
        else:
            remedy = "make the shards with --size {}" if info.kind == "pixels" else "use latents of size {}"
            _check_fit(exp, f" (from {exp.data.train_shards})", remedy)
    return info


def resolve_conditions(exp: ExperimentConfig, explicit_model: Collection[str] = ()) -> None:
    """``model.actions`` / ``model.classes`` follow what the training shards name
    (``action_names``/``class_names``: game shards, DESIGN.md §7) unless set explicitly
    (``model.actions=0`` trains an unconditioned model on them). In place; nothing
    happens while the shards do not exist yet."""
    if not exp.data.train_shards or not set(("actions", "classes")) - set(explicit_model):
        return
    try:
        expand_shards(exp.data.train_shards)
    except ValueError:
        return
    from scd_msc.data.conditions import shard_conditions

    try:
        conds = shard_conditions(exp.data.train_shards)
    except ValueError as err:
        raise ValueError(f"data.train_shards: {err}") from None
    for name, size in (("actions", conds.num_actions), ("classes", conds.num_classes)):
        if name not in explicit_model and size is not None:
            setattr(exp.model, name, size)


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain, yaml-safe dict of the whole config (what checkpoints store)."""
    return dataclasses.asdict(cfg)


# ModelConfig keys of the layout before runtime knobs and the objective moved out
# (checkpoints written before 2026-12): old key -> (section, new key)
_MOVED_MODEL_KEYS = {"backend": ("runtime", "backend"), "flow": ("flow", None),
                     "sampler": ("runtime.sampler", "name"),
                     "guidance_perturb": ("runtime.sampler", "guidance_perturb")}
_NESTED_MODEL_KEYS = {"attention": ("hires_heads", "gating", "upsample"),
                      "schedule.base": ("down", "window", "frames", "stride", "strided_frames")}


def upgrade_config_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict in today's layout: older checkpoints kept the backend, the
    sampler and the objective inside ``model`` and flat attention/schedule fields."""
    d = copy.deepcopy(d)
    model = d.get("model") or {}
    for old, (section, key) in _MOVED_MODEL_KEYS.items():
        if old not in model:
            continue
        value = model.pop(old)
        target = d
        for part in section.split("."):
            target = target.setdefault(part, {})
        if key is None:  # flow: the whole section; its sampling shift went to the sampler
            shift = value.pop("timestep_shift", None)
            target.update(value)
            if shift is not None:
                d.setdefault("runtime", {}).setdefault("sampler", {})["timestep_shift"] = shift
        else:
            target[key] = value
    for section, keys in _NESTED_MODEL_KEYS.items():
        parent, _, leaf = section.rpartition(".")
        holder = model.get(parent, {}) if parent else model
        if not isinstance(holder, dict) or not any(k in holder for k in keys):
            continue
        nested = holder.setdefault(leaf, {})
        nested.update({k: holder.pop(k) for k in keys if k in holder})
    return d


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`config_to_dict` (unknown keys and bad types fail as in
    ``load_config``); older layouts are upgraded first (:func:`upgrade_config_dict`).
    Checkpoint loading uses it too."""
    d = upgrade_config_dict(d)
    preset = d.get("preset", DEFAULT_PRESET)
    base = OmegaConf.structured(ExperimentConfig(preset=preset, model=preset_config(preset)))
    exp = OmegaConf.to_object(merge_layer(base, OmegaConf.create(d), "the stored config"))
    assert isinstance(exp, ExperimentConfig)
    return exp


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))
