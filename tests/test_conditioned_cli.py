"""``generate`` and ``eval`` with a model conditioned on actions and labels (DESIGN.md §7):
random and replayed actions, the prompt clips' own actions, one-line errors, and the
three sets of eval scores (true actions, shuffled actions, repeat-last floor).

The checkpoint comes from a 2-step training run on small action shards (the real path:
the model follows the shards' 4 action and 2 class names), after which every
zero-initialised weight is randomised, so that the conditions visibly change the frames
(an adaLN-zero model 2 steps from init barely reads them)."""

from __future__ import annotations

import itertools
import json

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from scd_msc.cli import main
from scd_msc.data import ClipDataset
from scd_msc.data.shards import clip_sample
from scd_msc.data.sources import Clip
from scd_msc.data.synthetic import moving_digits
from scd_msc.inference.conditions import random_actions
from scd_msc.inference.evaluate import derangement, shuffled_actions
from scd_msc.models import model_from_config

ACTIONS, CLASSES = ("noop", "up", "down", "fire"), ("a", "b")
K, N, CLIP = 3, 4, 8  # eval context and horizon; frames per stored clip


def write_shards(path, actions_of=None, labels: bool = True, count: int = 4) -> str:
    """``count`` grey 32² digit clips of 8 frames; clip ``n`` has ``actions_of(n)`` (8 ids;
    None: no actions) and label ``n % 2``."""
    with wds.TarWriter(str(path)) as sink:
        for n in range(count):
            actions = None if actions_of is None else np.asarray(actions_of(n))
            clip = Clip(moving_digits(CLIP, 32, n), 8.0, "test", {}, actions, n % 2 if labels else None,
                        ACTIONS if actions is not None else (), CLASSES if labels else ())
            sink.write(clip_sample(f"c{n}", clip, "npy"))
    return str(path)


def varied(n: int) -> np.ndarray:
    """Different actions per clip."""
    return np.random.default_rng(n).integers(0, len(ACTIONS), CLIP)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cond")
    return {"varied": write_shards(root / "varied.tar", varied),
            "shifted": write_shards(root / "shifted.tar", lambda n: (varied(n) + 1) % len(ACTIONS)),
            "same": write_shards(root / "same.tar", lambda n: np.arange(CLIP) % len(ACTIONS)),
            "plain": write_shards(root / "plain.tar", labels=False),
            "root": str(root)}


@pytest.fixture(scope="module")
def ckpt(data) -> str:
    from scd_msc.config import load_config
    from scd_msc.training.train import train

    run = f"{data['root']}/run"
    cfg = load_config(None, [
        "preset=scd-msc-tiny", "runtime.backend=reference", f"data.train_shards={data['varied']}",
        "data.clip_frames=4", "data.batch_size=2", "data.num_workers=0", "data.epoch_batches=2",
        "data.shuffle_buffer=2", "train.max_steps=2", "train.warmup_steps=1", "train.ema_decay=0",
        "train.checkpoint_every_n_steps=2", "train.val_every_n_steps=0", "train.sample_every_n_steps=0",
        "train.progress_bar=false", "train.accelerator=cpu", "train.devices=1", f"train.out_dir={run}"])
    assert (cfg.model.actions, cfg.model.classes) == (len(ACTIONS), len(CLASSES))  # from the shards' names
    path = train(cfg)
    state = torch.load(path, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(0)
    for name, init in model_from_config(cfg.model, "reference").state_dict().items():
        if init.is_floating_point() and not init.abs().sum():  # zero at init: 2 steps moved it by ~lr
            state["state_dict"][f"model.{name}"].normal_(0, 0.05, generator=g)
    torch.save(state, path)
    return path


def mp4(path) -> np.ndarray:
    """Decoded frames, uint8 ``(F, H, W)`` grey."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])


def generate(ckpt: str, out, *extra: str) -> int:
    return main(["generate", "--checkpoint", ckpt, "--steps", "2", "--frames", "6", "--no-progress",
                 "--out", str(out), *extra])


def test_random_actions_are_held_and_seeded_per_video():
    a = random_actions(10, 3, 40, seed=5)
    assert a.shape == (3, 40) and a.dtype == torch.long and 0 <= a.min() and a.max() < 10
    assert torch.equal(random_actions(10, 2, 40, seed=5), a[:2])  # a video's actions do not depend on --batch
    assert not torch.equal(random_actions(10, 3, 40, seed=6), a)
    for row in a.tolist():  # runs of one id: 3-9 frames (the first and last may be cut short or merged)
        runs = [len(list(g)) for _, g in itertools.groupby(row)]
        assert all(r >= 3 for r in runs[:-1]) and len(runs) >= 40 // 18


def test_generate_random_actions_then_replay_them_exactly(ckpt, tmp_path, capsys):
    first = tmp_path / "random.mp4"
    assert generate(ckpt, first, "--actions", "random", "--labels", "0,1", "--batch", "2", "--seed", "3") == 0
    saved = tmp_path / "random.actions.npy"
    actions = np.load(saved)
    assert actions.shape == (2, 6) and actions.dtype == np.int64 and 0 <= actions.min() < actions.max() < 4
    assert np.array_equal(actions, random_actions(4, 2, 6, seed=3).numpy())
    out = capsys.readouterr().out
    assert f"wrote {saved}" in out and "labels: 0,1" in out
    frames = mp4(first)
    assert frames.shape == (6, 32, 64)
    replay = tmp_path / "replay.mp4"
    assert generate(ckpt, replay, "--actions", str(saved), "--labels", "0,1", "--batch", "2", "--seed", "3") == 0
    assert np.array_equal(mp4(replay), frames)  # same actions, labels and seed: the same frames
    assert np.array_equal(np.load(tmp_path / "replay.actions.npy"), actions)
    other = tmp_path / "other.npy"
    np.save(other, (actions[0] + 1) % 4)  # (F,): every video
    assert generate(ckpt, tmp_path / "other.mp4", "--actions", str(other), "--labels", "0,1", "--batch", "2",
                    "--seed", "3") == 0
    changed = mp4(tmp_path / "other.mp4")
    assert not np.array_equal(changed, frames)
    guided = tmp_path / "guided.mp4"
    assert generate(ckpt, guided, "--actions", str(saved), "--labels", "0,1", "--batch", "2", "--seed", "3",
                    "--cond-guidance", "3") == 0
    assert not np.array_equal(mp4(guided), frames)


def test_the_prompt_brings_its_own_actions_and_labels(ckpt, data, tmp_path):
    fixed = tmp_path / "fixed.npy"
    np.save(fixed, np.zeros(6, np.int64))
    made = {}
    for name in ("varied", "shifted"):  # the same frames, other actions
        out = tmp_path / f"{name}.mp4"
        assert generate(ckpt, out, "--actions", str(fixed), "--prompt-shards", data[name], "--prompt-frames", "3",
                        "--batch", "2") == 0
        made[name] = mp4(out)
    assert made["varied"].shape == (9, 32, 64)
    assert np.array_equal(made["varied"][:3], made["shifted"][:3])  # the prompt frames themselves
    assert not np.array_equal(made["varied"][3:], made["shifted"][3:])  # made after other prompt actions
    out = tmp_path / "labels.mp4"  # --labels replaces the clips' labels (0, 1)
    assert generate(ckpt, out, "--actions", str(fixed), "--prompt-shards", data["varied"], "--prompt-frames", "3",
                    "--batch", "2", "--labels", "1,0") == 0
    assert not np.array_equal(mp4(out)[3:], made["varied"][3:])


def bad_file(tmp_path, name: str, array) -> str:
    path = tmp_path / name
    if isinstance(array, bytes):
        path.write_bytes(array)
    else:
        np.save(path, array)
    return str(path)


def test_errors_are_one_line_and_exit_2(ckpt, data, tmp_path, capsys):
    ok = ["--actions", "random", "--labels", "0"]
    cases = [
        ([], "--actions: missing; this model is conditioned on 4 actions (ModelConfig.actions=4, ids in [0, 4] "
             "(4 = null)): pass --actions random or --actions FILE.npy"),
        (["--actions", "random"], "--labels: missing; this model is conditioned on 2 classes"),
        (["--actions", "x.txt", "--labels", "0"], "--actions='x.txt': expected random or a .npy file"),
        (["--actions", "NONE", "--labels", "0"], "the file does not exist"),
        (["--actions", bad_file(tmp_path, "junk.npy", b"not numpy"), "--labels", "0"], "not a readable .npy file"),
        (["--actions", bad_file(tmp_path, "float.npy", np.zeros(6)), "--labels", "0"],
         "expected integer action ids, got dtype float64"),
        (["--actions", bad_file(tmp_path, "short.npy", np.zeros(5, int)), "--labels", "0"],
         "expected shape (6,) or (1, 6) (--frames, or --batch × --frames), got (5,)"),
        (["--actions", bad_file(tmp_path, "high.npy", np.full(6, 5)), "--labels", "0"],
         "expected ids in [0, 4] (4 = null) (the model's actions), got min 5, max 5"),
        (["--actions", bad_file(tmp_path, "neg.npy", np.full((1, 6), -1)), "--labels", "0"], "got min -1, max -1"),
        (["--actions", "random", "--labels", "3"], "--labels='3': expected ids in [0, 2] (2 = null)"),
        (["--actions", "random", "--labels", "0,1"], "--labels='0,1': expected 1 or 1 (--batch) ids, got 2"),
        (["--actions", "random", "--labels", "x"], "--labels='x': expected random or comma-separated class ids"),
        (ok + ["--prompt-shards", data["plain"]], "its clips carry no actions, but this model is conditioned on "
                                                   "4 actions (ModelConfig.actions=4)"),
        (ok + ["--cond-guidance", "nan"], "--cond-guidance=nan: expected a finite number"),
    ]
    for extra, message in cases:
        extra = [str(tmp_path / "none.npy") if a == "NONE" else a for a in extra]
        assert generate(ckpt, tmp_path / "v.mp4", *extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("scd-msc generate: error: ") and message in err, (extra, err)
    plain = ["generate", "--preset", "scd-msc-tiny", "--steps", "1", "--frames", "2", "--out", str(tmp_path / "v.mp4")]
    for extra, message in ((["--actions", "random"], "--actions='random': this model has no actions "
                                                     "(ModelConfig.actions=0); drop --actions"),
                           (["--labels", "0"], "--labels='0': this model has no classes"),
                           (["--cond-guidance", "2"], "--cond-guidance=2.0: expected 1.0; this model has no actions or classes")):
        assert main(plain + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*.actions.npy"))
    assert main(["eval", "--checkpoint", ckpt, "--shards", data["plain"], "--context", "2", "--horizon", "2",
                 "--out", str(tmp_path / "e")]) == 2
    assert "--shards=" in capsys.readouterr().err and not (tmp_path / "e").exists()


def by_hand_repeat_last(shards: str, clips: int) -> tuple[list[float], list[float]]:
    """PSNR per horizon step of repeating frame k-1, mean over clips, in numpy; and SSIM
    (torchmetrics on the same prediction)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    videos = [s["video"] for s in ClipDataset(shards, K + N, 1, 32, resampled=False)][:clips]
    x = (torch.stack(videos).clamp(-1, 1).numpy().astype(np.float64) + 1) / 2  # (M, k + n, 1, 32, 32) in [0, 1]
    mse = ((x[:, K:] - x[:, K - 1:K]) ** 2).mean(axis=(2, 3, 4))  # (M, n)
    psnr = (10 * np.log10(1 / mse)).mean(0)
    t = torch.from_numpy(x).float()
    s = [ssim(t[:, K - 1], t[:, K + j], data_range=1.0, reduction="none", kernel_size=11).mean().item()
         for j in range(N)]
    return psnr.tolist(), s


def test_eval_reports_true_shuffled_and_repeat_last(ckpt, data, tmp_path, capsys):
    def evaluate(shards: str, out) -> int:
        return main(["eval", "--checkpoint", ckpt, "--shards", shards, "--context", str(K), "--horizon", str(N),
                     "--clips", "4", "--batch", "2", "--steps", "2", "--out", str(out), "--no-progress"])

    out = tmp_path / "eval"
    assert evaluate(data["varied"], out) == 0
    summary = json.loads((out / "eval.json").read_text())
    printed = capsys.readouterr().out
    for line in ("mean over steps 1..4 (true actions): PSNR", "mean over steps 1..4, shuffled actions: PSNR",
                 "mean over steps 1..4, repeat last context frame: PSNR"):
        assert line in printed, printed
    assert len(summary["per_horizon"]) == N and summary["clips"] == 4  # today's keys: the true actions
    shuffled, floor = summary["shuffled_actions"], summary["repeat_last"]
    for scores in (shuffled, floor):
        assert [r["step"] for r in scores["per_horizon"]] == list(range(1, N + 1)) and scores["clips"] == 4
        assert scores["mean_psnr_1_8"] == pytest.approx(sum(r["psnr"] for r in scores["per_horizon"]) / N)
    assert shuffled["clip_psnr_1_8"] != summary["clip_psnr_1_8"]  # the model hears its actions
    psnr, ssim = by_hand_repeat_last(data["varied"], 4)
    assert [r["psnr"] for r in floor["per_horizon"]] == pytest.approx(psnr, rel=1e-4)
    assert [r["ssim"] for r in floor["per_horizon"]] == pytest.approx(ssim, rel=1e-4)
    md = (out / "eval.md").read_text()
    assert "| step | PSNR (dB) | SSIM | shuffled PSNR | shuffled SSIM | repeat-last PSNR | repeat-last SSIM |" in md
    # the same actions in every clip: the shuffled run replays the true run's noise, so the scores agree
    same = tmp_path / "same"
    assert evaluate(data["same"], same) == 0
    summary = json.loads((same / "eval.json").read_text())
    assert summary["shuffled_actions"]["clip_psnr_1_8"] == summary["clip_psnr_1_8"]
    assert summary["conditions"] == {"actions": 4, "classes": 2, "cond_guidance": 1.0}


def test_eval_teacher_forced_replays_the_noise_and_no_shuffled_skips_a_run(ckpt, data, tmp_path, capsys):
    """Teacher-forced step 1 has the true run's history (the prompt) and noise: the same frame,
    clip by clip; later steps see true frames instead of generated ones, so they differ."""
    out = tmp_path / "tf"
    assert main(["eval", "--checkpoint", ckpt, "--shards", data["varied"], "--context", str(K), "--horizon",
                 str(N), "--clips", "4", "--batch", "2", "--steps", "2", "--out", str(out), "--no-progress",
                 "--teacher-forced", "--no-shuffled"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["shuffled_actions"] is None  # --no-shuffled
    forced = summary["teacher_forced"]
    assert forced["clips"] == 4 and [r["step"] for r in forced["per_horizon"]] == list(range(1, N + 1))
    assert forced["per_horizon"][0]["psnr"] == pytest.approx(summary["per_horizon"][0]["psnr"], abs=1e-4)
    assert [r["psnr"] for r in forced["per_horizon"][1:]] != pytest.approx(
        [r["psnr"] for r in summary["per_horizon"][1:]], abs=1e-4)
    assert "teacher-forced (true history, one frame): PSNR" in capsys.readouterr().out
    colour = summary["mean_colour"]
    assert len(colour["generated"]) == len(colour["data"]) == N and len(colour["ratios"]) == 1
    assert np.load(out / "examples.npz")["generated"].shape == (4, K + N, 32, 32, 1)


def test_shuffled_actions_come_from_other_clips():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 8):
        for _ in range(5):
            perm = derangement(n, g)
            assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()
    actions = torch.arange(12).reshape(4, 3)  # (B, n): four distinct rows
    moved = shuffled_actions(actions, None, torch.Generator().manual_seed(1))
    assert torch.equal(moved, shuffled_actions(actions, None, torch.Generator().manual_seed(1)))  # seeded
    assert all(not torch.equal(moved[i], actions[i]) for i in range(4))
    lone = shuffled_actions(actions[:1], actions[1:], torch.Generator())  # a batch of one: the batch before
    assert lone.shape == (1, 3) and any(torch.equal(lone[0], r) for r in actions[1:])
    assert shuffled_actions(actions[:1], None, torch.Generator()) is None


def test_a_latent_session_passes_the_action_on():
    """``DecodedSession.step(action)`` (latent models) hands the action to the model's session."""
    from scd_msc.inference.latents import DecodedSession, FrameDecoder

    class Session:
        def step(self, action=None):
            self.action = action
            return torch.zeros(2, 4, 8, 8)

    inner, action = Session(), torch.tensor([1, 3])
    pixels = DecodedSession(inner, FrameDecoder("x:y", lambda z: z[:, :3])).step(action)
    assert inner.action is action and pixels.shape == (2, 3, 8, 8)
