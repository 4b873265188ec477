"""Conditioning on actions and class labels in every family (DESIGN.md §7): streaming ==
recompute, causality in the actions, classifier-free guidance, errors, and training on
shards that carry actions (tiny presets, CPU, fp32, weights randomised so that the
conditions matter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from scd_msc import build_model
from scd_msc.config import load_config
from scd_msc.data.shards import clip_sample
from scd_msc.data.sources import Clip
from scd_msc.data.synthetic import moving_digits
from scd_msc.diffusion import null_dropout
from scd_msc.models import randomize_zero_init

FAMILIES = ["scd-msc", "scd-dense", "causal-dit"]
A, Y, B, K, N = 5, 3, 2, 3, 4  # actions, classes, batch, prompt frames, new frames


def tiny(family: str, **kw) -> torch.nn.Module:
    """A tiny conditioned model with every zero-initialised parameter randomised (a fresh
    adaLN-zero model ignores its conditions)."""
    torch.manual_seed(0)
    model = build_model(f"{family}-tiny", backend="reference", **{"actions": A, "classes": Y, **kw}).eval()
    assert randomize_zero_init(model) > 0
    return model


def ids(shape, high, seed) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def conditions(seed: int = 0) -> dict:
    """A prompt with its actions, the actions of the new frames, the labels."""
    g = torch.Generator().manual_seed(seed)
    return {"prompt": torch.rand(B, K, 1, 32, 32, generator=g) * 2 - 1, "prompt_actions": ids((B, K), A, seed + 1),
            "actions": ids((B, N), A, seed + 2), "labels": torch.tensor([0, Y - 1])}


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cond_guidance", [1.0, 2.5])
def test_stream_equals_recompute_with_actions_and_labels(family, cond_guidance):
    model, c = tiny(family), conditions()
    a = model.generate(B, N, 2, generator=gen(), cache=True, cond_guidance=cond_guidance, **c)
    b = model.generate(B, N, 2, generator=gen(), cache=False, cond_guidance=cond_guidance, **c)
    assert a.std() > 0.1 and (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_prompt", [False, True])
def test_changing_the_next_action_changes_only_the_next_frame(family, with_prompt):
    """a_{t+1} leads to frame t+1: frames <= t are bit-identical, frame t+1 changes."""
    model, c = tiny(family), conditions()
    if not with_prompt:
        c = {"actions": c["actions"], "labels": c["labels"]}
    base = model.generate(B, N, 2, generator=gen(), **c)
    for t in range(N - 1):
        other = c["actions"].clone()
        other[:, t + 1] = (other[:, t + 1] + 1) % A
        changed = model.generate(B, N, 2, generator=gen(), **{**c, "actions": other})
        assert torch.equal(changed[:, : t + 1], base[:, : t + 1]), t
        assert (changed[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4, t


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_actions_and_labels_steer_the_new_frames(family):
    model, c = tiny(family), conditions()
    base = model.generate(B, N, 2, generator=gen(), **c)
    other_prompt = {**c, "prompt_actions": (c["prompt_actions"] + 1) % A}
    other_label = {**c, "labels": (c["labels"] + 1) % Y}
    for changed in (other_prompt, other_label):
        assert (model.generate(B, N, 2, generator=gen(), **changed)[:, 0] - base[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["scd-msc", "scd-dense"])
def test_the_context_of_frame_i_sees_actions_before_i_only(family):
    """SCD: c_{i-1} conditions frame i, so changing a_t changes contexts from index t+1 on."""
    model = tiny(family)
    video, a, y = torch.rand(B, 6, 1, 32, 32, generator=gen()) * 2 - 1, ids((B, 6), A, 3), torch.tensor([1, 2])
    with torch.no_grad():
        base = model.contexts(video, None, a, y)
        for t in range(5):
            other = a.clone()
            other[:, t] = (other[:, t] + 1) % A
            ctx = model.contexts(video, None, other, y)
            assert torch.equal(ctx[:, : t + 1], base[:, : t + 1]) and not torch.allclose(ctx[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("family", ["scd-msc", "causal-dit"])
def test_guidance_is_the_documented_mix_of_one_batched_call(family):
    """cond_guidance s: v = v_null + s·(v_cond − v_null), both rows in one call of 2B."""
    model, c = tiny(family), conditions()
    session = model.stream(B, 1, prompt=c["prompt"], prompt_actions=c["prompt_actions"], labels=c["labels"],
                           cond_guidance=3.0)
    calls = []

    def call(x, t, *ids):
        calls.append(x.shape[0])
        return x * (1 + sum(i[:, None, None, None].float() for i in ids))  # depends on the ids

    action = c["actions"][:, 0]
    v = session.guided(call, action)(torch.ones(B, 1, 2, 2), torch.zeros(B))
    null = session.ids(session.null_action, session.null_labels)
    v_c = call(torch.ones(B, 1, 2, 2), None, *session.ids(action, session.labels))
    v_n = call(torch.ones(B, 1, 2, 2), None, *null)
    assert calls[0] == 2 * B and torch.allclose(v, v_n + 3.0 * (v_c - v_n))
    assert not torch.allclose(
        model.generate(B, 2, 2, generator=gen(), cond_guidance=3.0, **{**c, "actions": c["actions"][:, :2]}),
        model.generate(B, 2, 2, generator=gen(), **{**c, "actions": c["actions"][:, :2]}))


def test_context_and_condition_guidance_compose():
    model, c = tiny("scd-msc"), conditions()
    frames = {(g, s): model.generate(B, 2, 2, generator=gen(), guidance=g, cond_guidance=s,
                                     **{**c, "actions": c["actions"][:, :2]})
              for g in (1.0, 2.0) for s in (1.0, 2.0)}
    assert len({tuple(f.flatten()[:50].tolist()) for f in frames.values()}) == 4  # each knob changes the frames


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_or_bad_conditions_raise_one_clear_error(family):
    model, c = tiny(family), conditions()
    cases = [
        (dict(actions=None), r"actions=None: this model is conditioned on 5 actions \(ModelConfig.actions=5\); "
                             r"expected int64 ids \(2, 4\) in \[0, 5\] \(5 = null\)"),
        (dict(actions=torch.full((B, N), 6)), r"actions: ids must be in \[0, 5\] \(5 = null\), got min 6, max 6"),
        (dict(actions=c["actions"].float()), r"actions: expected int64 ids \(2, 4\), got torch.float32"),
        (dict(labels=None), r"labels=None: this model is conditioned on 3 classes"),
        (dict(labels=torch.tensor([0, 3, 1])), r"labels: expected shape \(2,\), got \(3,\)"),
        (dict(prompt_actions=None), r"prompt_actions=None: this model is conditioned on 5 actions"),
        (dict(prompt_actions=c["prompt_actions"][:, :2]), r"prompt_actions: expected shape \(2, 3\), got \(2, 2\)"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            model.generate(B, N, 1, **{**c, **change})
    session = model.stream(B, 1, labels=c["labels"])
    with pytest.raises(ValueError, match=r"action=None: this model is conditioned on 5 actions"):
        session.step()
    with pytest.raises(ValueError, match=r"actions=None: this model is conditioned on 5 actions"):
        model.training_loss(torch.zeros(B, 3, 1, 32, 32), labels=c["labels"])
    plain = build_model(f"{family}-tiny", backend="reference")
    with pytest.raises(ValueError, match=r"actions: this model has no actions \(ModelConfig.actions=0\); "
                                         r"expected None"):
        plain.generate(B, N, 1, actions=c["actions"])
    with pytest.raises(ValueError, match=r"cond_guidance=2.0: expected 1.0; this model has no actions or classes"):
        plain.generate(B, N, 1, cond_guidance=2.0)


def test_null_ids_are_accepted_and_dropout_replaces_about_p():
    model = tiny("causal-dit")
    null = model.generate(B, 2, 1, generator=gen(), actions=torch.full((B, 2), A), labels=torch.full((B,), Y))
    assert torch.isfinite(null).all()
    ids_ = torch.zeros(20_000, dtype=torch.long)
    dropped = null_dropout(ids_, A, 0.1, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, A} and abs((dropped == A).float().mean().item() - 0.1) < 0.01
    assert null_dropout(ids_, A, 0.0) is ids_ and null_dropout(None, A, 0.5) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioned_training_loss_reaches_the_embeddings(family):
    model, c = tiny(family), conditions()
    video = torch.rand(B, 5, 1, 32, 32, generator=gen()) * 2 - 1
    loss = model.training_loss(video, gen(), actions=ids((B, 5), A + 1, 4), labels=c["labels"])["loss"]
    loss.backward()
    tables = [m for m in model.modules() if type(m).__name__ == "ConditionEmbedding"]
    assert torch.isfinite(loss) and tables
    assert all(t.actions.weight.grad is not None and t.classes.weight.grad.abs().sum() > 0 for t in tables)


# ------------------------------------------------------------------ training on shards


def action_shards(path, actions: bool = True) -> str:
    """4 digit clips of 8 frames at 32², with random actions among 4 named ones and 2 classes."""
    with wds.TarWriter(str(path)) as sink:
        for n in range(4):
            frames = moving_digits(8, 32, n)
            clip = Clip(frames, 8.0, "test", {}, np.arange(8) % 4 if actions else None, n % 2 if actions else None,
                        ("noop", "up", "down", "fire") if actions else (), ("a", "b") if actions else ())
            sink.write(clip_sample(f"c{n}", clip, "npy"))
    return str(path)


def test_training_follows_the_shards_actions_and_refuses_shards_without_them(tmp_path):
    from scd_msc.training.preflight import preflight
    from scd_msc.training.train import train

    shards, plain = action_shards(tmp_path / "act.tar"), action_shards(tmp_path / "plain.tar", actions=False)
    base = ["preset=scd-msc-tiny", "runtime.backend=reference", "data.clip_frames=4", "data.batch_size=2",
            "data.num_workers=0", "data.epoch_batches=2", "data.val_batches=1", "data.shuffle_buffer=2",
            "train.max_steps=2", "train.warmup_steps=1", "train.checkpoint_every_n_steps=2",
            "train.val_every_n_steps=0", "train.sample_every_n_steps=2", "train.sample_count=2",
            "train.sample_frames=2", "train.sample_steps=1", "train.progress_bar=false",
            "train.accelerator=cpu", "train.devices=1"]
    cfg = load_config(None, base + [f"data.train_shards={shards}", f"train.out_dir={tmp_path / 'run'}"])
    assert (cfg.model.actions, cfg.model.classes) == (4, 2)  # the model follows what the shards name
    last = train(cfg)
    from scd_msc.checkpoint import load_model

    model = load_model(last)
    assert (model.cfg.actions, model.cfg.classes) == (4, 2) and (tmp_path / "run" / "samples").is_dir()
    explicit = load_config(None, base + [f"data.train_shards={shards}", "model.actions=0", "model.classes=0",
                                         f"train.out_dir={tmp_path / 'run0'}"])
    assert (explicit.model.actions, explicit.model.classes) == (0, 0)
    refused = load_config(None, base + [f"data.train_shards={plain}", "model.actions=4",
                                        f"train.out_dir={tmp_path / 'run1'}"])
    with pytest.raises(ValueError, match=r"model.actions=4: data.train_shards='.*plain.tar' carries no actions "
                                         r"\(no actions; no classes\); expected shards with actions"):
        preflight(refused)
    small = load_config(None, base + [f"data.train_shards={shards}", "model.actions=3",
                                      f"train.out_dir={tmp_path / 'run2'}"])
    with pytest.raises(ValueError, match=r"model.actions=3: data.train_shards=.* names 4 actions; "
                                         r"expected model.actions=4"):
        preflight(small)
