"""The EMA: its warm-up decay against a hand-written average, the ``auto`` rule and its
errors, ``load_checkpoint``/``load_model`` picking ``model.*`` or ``ema_model.*``, and
``--weights`` of ``scd-msc generate``/``eval`` (printed line, eval.json, errors).
The training run that checks ``auto`` against validation losses is in test_training.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from scd_msc.checkpoint import load_checkpoint, load_model
from scd_msc.cli import main
from scd_msc.data import make_shards
from scd_msc.ema import choose_weights, ema_update_fn, min_ema_updates, warmup_decay
from scd_msc.models import build_model

TINY = "scd-msc-tiny"


def reference_ema(values: list[torch.Tensor], decay: float, warmup: bool) -> torch.Tensor:
    """The average after one update per value, in float64, written out: the first update
    copies, update number n + 1 (n earlier ones) decays by min(decay, (1+n)/(10+n))."""
    avg = values[0].double()
    for n, v in enumerate(values[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        avg = d * avg + (1 - d) * v.double()
    return avg


@pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "constant"])
def test_averaged_model_follows_the_reference_average(warmup):
    gen = torch.Generator().manual_seed(0)
    net = nn.Linear(5, 3)
    values = [torch.randn(3, 5, generator=gen) for _ in range(30)]
    avg = AveragedModel(net, multi_avg_fn=ema_update_fn(0.9, warmup), use_buffers=True)
    for v in values:
        with torch.no_grad():
            net.weight.copy_(v)
        avg.update_parameters(net)
    torch.testing.assert_close(avg.module.weight.double(), reference_ema(values, 0.9, warmup),
                               rtol=1e-5, atol=1e-6)
    assert int(avg.n_averaged) == 30


def test_warmup_decay_ramps_to_the_decay_and_stays():
    assert warmup_decay(0.99, 1).item() == pytest.approx(2 / 11)
    # (1 + n) / (10 + n) reaches 0.99 at n = 9 / (1 - 0.99) - 10 = 890
    assert warmup_decay(0.99, 889).item() < 0.99 and warmup_decay(0.99, 890).item() == pytest.approx(0.99)
    assert warmup_decay(0.99, torch.tensor(10**6)).item() == pytest.approx(0.99)
    with pytest.raises(ValueError, match=r"^decay=1.0: expected a number in \[0, 1\)$"):
        ema_update_fn(1.0)


def test_auto_uses_the_ema_from_ten_windows():
    assert [min_ema_updates(d) for d in (0.9, 0.99, 0.995, 0.999, 0.9999)] == [100, 1000, 2000, 10000, 100000]
    before, at = choose_weights("auto", True, 999, 0.99), choose_weights("auto", True, 1000, 0.99)
    assert before.weights == "trained" and at.weights == "ema"
    assert before.line() == "weights: trained (EMA has 999 updates; auto uses it from 1000)"
    assert choose_weights("auto", False).line() == "weights: trained (the checkpoint has no EMA weights)"
    unknown = choose_weights("auto", True, None, 0.99)  # an EMA without its update count
    assert unknown.weights == "trained" and "does not record" in unknown.reason
    forced = choose_weights("ema", True, 40, 0.99)
    assert (forced.weights, forced.reason) == ("ema", "requested; EMA has 40 updates, auto uses it from 1000")
    assert choose_weights("trained", True, 5000, 0.99).weights == "trained"


def test_choose_weights_errors():
    with pytest.raises(ValueError, match=r"^weights='best': expected one of auto, ema, trained$"):
        choose_weights("best", True, 10, 0.99)
    with pytest.raises(ValueError, match=r"^weights='ema': the checkpoint holds no EMA weights .*expected auto "
                                         r"or trained$"):
        choose_weights("ema", False)


def ema_checkpoint(path: Path, updates: Optional[int], decay: float = 0.99, train_config: bool = True) -> Path:
    """A checkpoint in the layout of scd_msc/checkpoint.py whose trained weights (seed 0)
    and EMA weights (seed 1) differ; ``updates=None``: no EMA at all."""
    torch.manual_seed(0)
    trained = build_model(TINY)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    ckpt = {"hyper_parameters": {"config": {"model": dataclasses.asdict(trained.cfg)}}}
    if train_config:
        ckpt["hyper_parameters"]["config"]["train"] = {"ema_decay": decay if updates is not None else 0.0}
    if updates is not None:
        torch.manual_seed(1)
        state.update({f"ema_model.{k}": v for k, v in build_model(TINY).state_dict().items()})
        ckpt["averaging_state"] = {"n_averaged": torch.tensor(updates)}
    ckpt["state_dict"] = state
    torch.save(ckpt, path)
    return path


def which(model: nn.Module, path: Path) -> str:
    """``trained`` or ``ema``: whose weights ``model`` holds."""
    state = torch.load(path, weights_only=False)["state_dict"]
    for prefix in ("model.", "ema_model."):
        if torch.equal(model.start, state[prefix + "start"]):
            return "trained" if prefix == "model." else "ema"
    raise AssertionError("neither the trained nor the EMA weights")


def test_load_checkpoint_picks_the_weights(tmp_path):
    young, old = ema_checkpoint(tmp_path / "young.ckpt", 40), ema_checkpoint(tmp_path / "old.ckpt", 1500)
    none = ema_checkpoint(tmp_path / "none.ckpt", None)
    assert which(load_model(str(young)), young) == "trained"  # auto: 40 < 1000 updates
    assert which(load_model(str(old)), old) == "ema"
    assert which(load_model(str(young), weights="ema"), young) == "ema"
    assert which(load_model(str(old), weights="trained"), old) == "trained"
    loaded = load_checkpoint(str(young))
    assert loaded.weights.line() == "weights: trained (EMA has 40 updates; auto uses it from 1000)"
    assert load_checkpoint(str(none)).weights.weights == "trained"
    no_train = ema_checkpoint(tmp_path / "no_train.ckpt", 1500, train_config=False)  # decay unknown
    assert which(load_model(str(no_train)), no_train) == "trained"
    with pytest.raises(ValueError, match=r"weights='ema': checkpoint '.*none.ckpt' holds no EMA weights"):
        load_model(str(none), weights="ema")
    with pytest.raises(ValueError, match=r"weights='average': expected one of auto, ema, trained"):
        load_model(str(young), weights="average")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("digits")
    make_shards("moving-digits", folder, 4, 32, clips=2, channels=1, progress=False)
    return str(folder / "*.tar")


def generate(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--checkpoint", str(ckpt), "--frames", "1", "--steps", "1", "--out", str(out),
                 "--no-progress", *extra])


def test_generate_prints_the_weights_it_uses(tmp_path, capsys):
    young = ema_checkpoint(tmp_path / "young.ckpt", 40)
    assert generate(young, tmp_path / "a.mp4") == 0
    assert "weights: trained (EMA has 40 updates; auto uses it from 1000)\n" in capsys.readouterr().out
    assert generate(young, tmp_path / "b.mp4", "--weights", "ema") == 0
    assert "weights: ema (requested; EMA has 40 updates, auto uses it from 1000)\n" in capsys.readouterr().out


def test_eval_records_the_weights(tmp_path, shards, capsys):
    old = ema_checkpoint(tmp_path / "old.ckpt", 1500)
    out = tmp_path / "report"
    argv = ["eval", "--checkpoint", str(old), "--shards", shards, "--context", "2", "--horizon", "2",
            "--clips", "1", "--steps", "1", "--examples", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "weights: ema (EMA has 1500 updates; auto uses it from 1000)" in capsys.readouterr().out
    weights = json.loads((out / "eval.json").read_text())["model"]["weights"]
    assert weights == {"weights": "ema", "requested": "auto", "ema_updates": 1500, "auto_from": 1000,
                       "reason": "EMA has 1500 updates; auto uses it from 1000"}
    assert "ema weights (EMA has 1500 updates; auto uses it from 1000)" in (out / "eval.md").read_text()


@pytest.mark.parametrize("source, weights, message", [
    ("young", "best", "--weights='best': expected one of auto, ema, trained"),
    ("none", "ema", "--weights='ema': checkpoint '{none}' holds no EMA weights (trained with train.ema_decay=0); "
                    "expected auto or trained"),
    ("preset", "ema", f"--weights='ema': --preset {TINY} has random weights and no EMA; expected auto or trained"),
], ids=["unknown", "no-ema", "preset"])
def test_weights_errors_exit_2(tmp_path, capsys, source, weights, message):
    paths = {"young": ema_checkpoint(tmp_path / "young.ckpt", 40),
             "none": ema_checkpoint(tmp_path / "none.ckpt", None)}
    model = ["--preset", TINY] if source == "preset" else ["--checkpoint", str(paths[source])]
    argv = ["generate", *model, "--weights", weights, "--frames", "1", "--steps", "1",
            "--out", str(tmp_path / "v.mp4"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"scd-msc generate: error: {message.format(none=paths['none'])}\n"
    assert not (tmp_path / "v.mp4").exists()


def test_sample_strips_switch_to_the_ema_when_auto_does(tmp_path):
    """decay 0.5: auto uses the EMA from 20 updates; the strip's network follows."""
    from scd_msc.config import load_config
    from scd_msc.training.callbacks import EMA, SampleStrip
    from scd_msc.training.module import SCDLitModule

    module = SCDLitModule(load_config(None, ["train.ema_decay=0.5"]))
    ema = EMA(0.5)
    ema.setup(None, module, "fit")  # builds the AveragedModel, as Trainer.fit does
    strip = SampleStrip(str(tmp_path), 1, 1, 1, 1, ema=ema)
    picked = []
    for step in range(1, 22):
        ema.average.update_parameters(module)
        net, weights = strip.pick_network(step, module)
        assert net is (ema.network if weights == "ema" else module.model)
        picked.append(weights)
    assert picked == ["trained"] * 19 + ["ema"] * 2
    no_ema = SampleStrip(str(tmp_path), 1, 1, 1, 1)
    assert no_ema.pick_network(1, module) == (module.model, "trained")


def test_ema_callback_validates_on_the_average_and_saves_both(tmp_path):
    """One update per optimizer step; validation runs on the average and gets the trained
    weights back after it, also when interrupted mid-validation; a checkpoint holds the
    trained weights under model.*, the average under ema_model.* and its update count,
    and loading it restores the average and the count."""
    import types

    from scd_msc.config import load_config
    from scd_msc.training.callbacks import EMA
    from scd_msc.training.module import SCDLitModule

    def weights(net: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in net.state_dict().items()}

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    cfg = load_config(None, ["train.ema_decay=0.5"])
    module, ema = SCDLitModule(cfg), EMA(0.5)
    ema.setup(None, module, "fit")
    trainer = types.SimpleNamespace(global_step=0)
    for step in range(1, 4):
        with torch.no_grad():  # an optimizer step
            for p in module.parameters():
                p.add_(0.1 * step)
        trainer.global_step = step
        ema.on_train_batch_end(trainer, module, None, None, step)
    ema.on_train_batch_end(trainer, module, None, None, 4)  # a batch without an optimizer step (accumulation)
    assert int(ema.average.n_averaged) == 3
    trained, average = weights(module.model), weights(ema.network)
    assert not same(trained, average)

    ema.on_validation_epoch_start(trainer, module)
    assert same(weights(module.model), average)
    ema.on_validation_epoch_end(trainer, module)
    assert same(weights(module.model), trained) and same(weights(ema.network), average)
    ema.on_validation_epoch_start(trainer, module)
    ema.on_exception(trainer, module, KeyboardInterrupt())  # Ctrl-C mid-validation
    assert same(weights(module.model), trained) and same(weights(ema.network), average)
    ema.on_exception(trainer, module, KeyboardInterrupt())  # not validating: nothing to give back
    assert same(weights(module.model), trained)

    ckpt = {"state_dict": module.state_dict()}
    ema.on_save_checkpoint(trainer, module, ckpt)
    assert same({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}, trained)
    assert same({k[len("ema_model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema_model.")},
                average)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 3 and ema.state_dict() == {"latest_update_step": 3}

    torch.manual_seed(1)
    resumed, ema2 = SCDLitModule(cfg), EMA(0.5)
    ema2.setup(None, resumed, "fit")
    resumed.on_load_checkpoint(ckpt)  # as Trainer.fit(ckpt_path=...) does: the module, then the callback
    resumed.load_state_dict(ckpt["state_dict"])
    ema2.on_load_checkpoint(None, resumed, ckpt)
    ema2.load_state_dict({"latest_update_step": 3})
    assert same(weights(resumed.model), trained) and same(weights(ema2.network), average)
    assert int(ema2.average.n_averaged) == 3
