"""Data layer, part 2: the shard reader and the Lightning data module.

Reliability (bad samples and a truncated tar are skipped and counted), node and worker
splitting, seeding and random offsets, video2dataset-style shards, batches.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import tarfile

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf

from scd_msc.data import ClipDataset, DataConfig, ShardDataModule, encode_mp4, expand_shards, make_shards
from scd_msc.data.shards import npy_bytes
from scd_msc.data.synthetic import bouncing_shapes, moving_digits

F, S = 8, 32


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory) -> str:
    """4 shards x 3 clips of 8 grey 32x32 frames; keys clip000000..clip000011."""
    out = tmp_path_factory.mktemp("digits")
    make_shards("moving-digits", out, F, S, clips=12, shard_size=3, seed=1, progress=False)
    return str(out / "shard-{000000..000003}.tar")


def write_tar(path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def npy_sample(key: str, frames: np.ndarray) -> dict:
    return {"__key__": key, "frames.npy": npy_bytes(frames), "json": json.dumps({"frames": len(frames)})}


@pytest.fixture
def dirty_shards(tmp_path, digit_shards) -> tuple[list[str], set[str]]:
    """A shard of good and bad samples plus a truncated copy of a good shard."""
    good = moving_digits(F, S, 0)
    mixed = write_tar(tmp_path / "mixed.tar", [
        npy_sample("good0", good),
        npy_sample("short", good[:5]),                                    # too short
        npy_sample("rgb", np.repeat(good, 3, axis=-1)),                   # wrong channel count
        npy_sample("big", moving_digits(F, 40, 0)),                       # wrong size
        {"__key__": "badmp4", "mp4": b"\x00\x00\x00\x18ftypisom" + b"garbage" * 50,
         "json": json.dumps({"channels": 1})},                            # undecodable video
        {"__key__": "badnpy", "frames.npy": b"\x93NUMPY broken"},         # undecodable array
        {"__key__": "caption", "txt": "no video here"},                   # missing field
        npy_sample("good1", good),
    ])
    whole = expand_shards(digit_shards)[0]
    with tarfile.open(whole) as tar:
        cut = tar.getmember("clip000001.frames.npy").offset_data + 1000
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(whole, "rb").read()[:cut])               # cut inside the 2nd clip's array
    return [mixed, str(truncated), expand_shards(digit_shards)[1]], {"good0", "good1"}


def test_bad_samples_and_truncated_tar_are_skipped_and_counted(dirty_shards, caplog):
    shards, good = dirty_shards
    ds = ClipDataset(shards, F, 1, S, resampled=False)
    with caplog.at_level(logging.WARNING):
        keys = [s["key"] for s in ds]
    # mixed: good0, good1; truncated shard: its first clip; last shard: all 3 clips
    assert keys == ["good0", "good1", "clip000000", "clip000003", "clip000004", "clip000005"]
    counts = dict(ds.skipped.counts)
    assert counts.pop("read_error") >= 1
    assert counts == {"too_short": 1, "wrong_channels": 1, "wrong_size": 1, "decode_error": 2, "missing_field": 1}
    assert "skipped sample short" in caplog.text and "too_short" in caplog.text


def test_resampled_reader_keeps_going_over_bad_shards(dirty_shards):
    shards, _ = dirty_shards
    ds = ClipDataset(shards, F, 1, S, resampled=True, seed=0, shuffle_buffer=0)
    samples = list(itertools.islice(ds, 40))
    assert len(samples) == 40 and ds.skipped.total > 0
    assert {s["video"].shape for s in samples} == {(F, 1, S, S)}


def test_nothing_usable_raises_instead_of_spinning(dirty_shards):
    ds = ClipDataset(dirty_shards[0][:1], 2 * F, 1, S, resampled=True, max_consecutive_skips=20)
    with pytest.raises(RuntimeError, match="in a row were unusable"):
        next(iter(ds))


@pytest.mark.parametrize("resampled", [False, True])
def test_two_ranks_read_different_samples(digit_shards, resampled):
    keys = []
    for rank in (0, 1):
        ds = ClipDataset(digit_shards, F, 1, S, rank=rank, world_size=2, resampled=resampled, seed=5)
        keys.append({s["key"] for s in itertools.islice(ds, 30)})
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    if not resampled:
        assert keys[0] | keys[1] == {f"clip{i:06d}" for i in range(12)}


def test_workers_split_shards_in_finite_mode(digit_shards):
    ds = ClipDataset(digit_shards, F, 1, S, resampled=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["key"] for s in loader]
    assert sorted(keys) == [f"clip{i:06d}" for i in range(12)]


def stored_offset(sample: dict, seed_clip: int) -> int:
    """Which start frame of clip ``seed_clip`` (stored with seed 1) the sample was cut at."""
    full = torch.from_numpy(moving_digits(F, S, np.random.default_rng([1, seed_clip]))).permute(0, 3, 1, 2)
    full = full.float() / 127.5 - 1
    n = sample["video"].shape[0]
    return next(o for o in range(F - n + 1) if torch.equal(full[o:o + n], sample["video"]))


def test_seeding_offsets_and_epochs(digit_shards):
    def first(seed, epoch=None, n=12):
        ds = ClipDataset(digit_shards, 3, 1, S, seed=seed)
        if epoch is not None:
            ds.set_epoch(epoch)
        return list(itertools.islice(ds, n))

    a, b, c = first(0), first(0), first(1)
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b, strict=True))
    assert [s["key"] for s in a] != [s["key"] for s in c]
    assert [s["key"] for s in first(0, epoch=1)] != [s["key"] for s in a]
    offsets = {stored_offset(s, int(s["key"][4:])) for s in a + c}
    assert len(offsets) > 1 and offsets <= set(range(F - 3 + 1))
    finite = ClipDataset(digit_shards, 3, 1, S, resampled=False)
    assert {stored_offset(s, int(s["key"][4:])) for s in finite} == {0}


def test_video2dataset_style_shard(tmp_path):
    clips = [bouncing_shapes(12, 48, i) for i in range(2)]
    shard = write_tar(tmp_path / "v2d-00000.tar", [
        {"__key__": f"{i:09d}", "mp4": encode_mp4(c, fps=24), "txt": "a caption",
         "json": json.dumps({"url": "http://x", "status": "success", "width": 48, "height": 48})}
        for i, c in enumerate(clips)])
    strict = ClipDataset(shard, F, 3, S, resampled=False)
    assert list(strict) == [] and strict.skipped["wrong_size"] == 2
    out = list(ClipDataset(shard, F, 3, S, resampled=False, resize=True))
    assert [s["key"] for s in out] == ["000000000", "000000001"]
    assert out[0]["video"].shape == (F, 3, S, S)
    resampled = list(itertools.islice(ClipDataset(shard, F, 3, S, resize=True), 6))
    assert len(resampled) == 6


def test_expand_shards(digit_shards, tmp_path):
    assert len(expand_shards(digit_shards)) == 4
    folder = digit_shards.rsplit("/", 1)[0]
    assert expand_shards(folder + "/*.tar") == expand_shards(digit_shards)
    with pytest.raises(ValueError, match="matched none"):
        expand_shards(str(tmp_path / "*.tar"))
    with pytest.raises(ValueError, match="does not exist"):
        expand_shards(folder + "/shard-{000000..000009}.tar")
    with pytest.raises(ValueError, match=r"^rank=2: expected an integer in \[0, 1\]; world_size=2$"):
        ClipDataset(digit_shards, F, 1, S, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"^world_size=0: expected an integer >= 1$"):
        ClipDataset(digit_shards, F, 1, S, rank=0, world_size=0)
    with pytest.raises(ValueError, match=r"^clip_frames=0: expected an integer >= 1$"):
        ClipDataset(digit_shards, 0, 1, S)
    with pytest.raises(ValueError, match=r"^seed=-1: expected an integer >= 0$"):
        ClipDataset(digit_shards, F, 1, S, seed=-1)
    one = expand_shards(digit_shards)[:1]  # fewer shards than ranks: no rank is left empty
    assert len(list(ClipDataset(one, F, 1, S, rank=1, world_size=2, resampled=False))) == 3


def make_module(digit_shards, **overrides) -> ShardDataModule:
    base = OmegaConf.structured(DataConfig)
    merged = OmegaConf.merge(base, {"train_shards": digit_shards, "val_shards": digit_shards, "clip_frames": 4,
                                    "image_size": S, "channels": 1, "batch_size": 3, "num_workers": 0,
                                    "epoch_batches": 4, "val_batches": None, **overrides})
    return ShardDataModule(OmegaConf.to_object(merged))


def test_datamodule_batches(digit_shards):
    dm = make_module(digit_shards, num_workers=2)
    train = dm.train_dataloader()
    assert len(train) == 4
    epochs = [list(train) for _ in range(2)]
    assert [len(e) for e in epochs] == [4, 4]
    batch = epochs[0][0]
    assert set(batch) == {"video", "key", "skipped"} and batch["video"].shape == (3, 4, 1, S, S)
    assert batch["skipped"]["worker"] in (0, 1) and batch["skipped"]["used"] >= 3
    assert batch["video"].dtype == torch.float32 and -1 <= batch["video"].min() <= batch["video"].max() <= 1
    assert isinstance(batch["key"], list) and len(batch["key"]) == 3
    assert [b["key"] for b in epochs[0]] != [b["key"] for b in epochs[1]], "each epoch draws anew"
    val = [k for b in dm.val_dataloader() for k in b["key"]]
    assert sorted(val) == [f"clip{i:06d}" for i in range(12)]


def test_skip_counts_reach_the_main_process_from_a_worker(dirty_shards):
    """One ordered pass in a DataLoader worker process (num_workers=1): the counts that
    the batches carry to the main process equal those of the same pass read in-process."""
    from scd_msc.training.skips import SkipLog

    shards, _ = dirty_shards
    local = ClipDataset(shards, F, 1, S, resampled=False)
    used = len(list(local))
    dm = ShardDataModule(DataConfig(train_shards="::".join(shards), val_shards="::".join(shards), clip_frames=F,
                                    image_size=S, channels=1, batch_size=2, num_workers=1, val_batches=None))
    tally = SkipLog()
    try:
        for batch in dm.val_dataloader():
            tally.update("val", batch)
    finally:
        dm.teardown("fit")
    assert list(tally.latest["val"]) == [0]  # one worker
    assert tally.totals("val") == {"used": used, **local.skipped.counts}
    assert tally.totals("val")["decode_error"] == 2 and used == 6
    summary = tally.summary({"train": tally.totals("val"), "val": tally.totals("val")})
    read = used + local.skipped.total
    assert summary.startswith(f"skipped samples: read_error={local.skipped['read_error']}, missing_field=1, "
                              f"decode_error=2, too_short=1, wrong_channels=1, wrong_size=1 (of {read} read)")


class EpochProbe(torch.utils.data.IterableDataset):
    """Yields, from the process that iterates it, its epoch and whether SIGINT and SIGTERM are ignored."""

    def __init__(self):
        super().__init__()
        self.epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        yield [self.epoch, *(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM))]


def test_epoch_loader_sets_the_epoch_per_pass_and_its_workers_ignore_signals():
    """Pass k reads epoch k in fresh workers that ignore SIGINT/SIGTERM (the main process
    handles them and saves last.ckpt) and are gone when the pass ends."""
    import multiprocessing

    from scd_msc.data.datamodule import EpochLoader

    loader = EpochLoader(EpochProbe(), batch_size=None, num_workers=1)
    passes = [list(loader) for _ in range(3)]
    assert passes == [[[k, True, True]] for k in range(3)]
    assert multiprocessing.active_children() == []
    in_process = EpochLoader(EpochProbe(), batch_size=None, num_workers=0)
    # the process's own handlers are kept (ignored already when pytest was started in the background)
    ignored = [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)]
    assert [x for _ in range(2) for x in in_process] == [[0, *ignored], [1, *ignored]]


def test_epochs_of_a_fit_draw_other_clips_and_a_rerun_the_same(digit_shards):
    """Fresh loader workers every epoch: each epoch's shard draws and offsets differ (the
    epoch is pickled into the workers), and a second identical fit reads the same clips."""
    class Record(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).append((batch["key"], batch["video"].sum().item()))
            return (batch["video"].mean() - self.w) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit() -> dict[int, list]:
        probe = Record()
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(probe, datamodule=make_module(digit_shards, num_workers=2, val_shards=""))
        return probe.seen

    first, again = fit(), fit()
    assert sorted(first) == [0, 1, 2] and all(len(first[e]) == 4 for e in first)
    assert first[0] != first[1] and first[1] != first[2] and first[0] != first[2]
    assert again == first


def test_skip_counts_add_up_over_passes(dirty_shards):
    """Workers start from zero every pass; the tally adds each worker's finished passes."""
    from scd_msc.training.skips import SkipLog

    shards, _ = dirty_shards
    dm = ShardDataModule(DataConfig(train_shards="::".join(shards), val_shards="::".join(shards), clip_frames=F,
                                    image_size=S, channels=1, batch_size=2, num_workers=1, val_batches=None))
    one, two = SkipLog(), SkipLog()
    loader = dm.val_dataloader()
    for batch in loader:
        one.update("val", batch)
    for _ in range(2):
        for batch in loader:
            two.update("val", batch)
    assert one.totals("val")["decode_error"] == 2
    assert two.totals("val") == {k: 2 * n for k, n in one.totals("val").items()}


def test_datamodule_in_a_trainer(digit_shards):
    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: list[str] = []

        def training_step(self, batch, _):
            self.seen += batch["key"]
            return (batch["video"].mean() - self.w) ** 2

        def validation_step(self, batch, _):
            self.log("val", batch["video"].mean(), batch_size=len(batch["key"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, datamodule=make_module(digit_shards, val_batches=2))
    assert len(probe.seen) == 2 * 4 * 3 and trainer.global_step == 8


@pytest.mark.parametrize("field, value", [("clip_frames", 0), ("batch_size", -1), ("num_workers", -1),
                                          ("val_batches", 0)])
def test_data_config_errors(field, value):
    with pytest.raises(ValueError, match=f"data.{field}={value}"):
        DataConfig(train_shards="x", **{field: value})
    with pytest.raises(ValueError, match="train_shards"):
        ShardDataModule(DataConfig())
