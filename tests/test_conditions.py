"""Conditions in shards: actions aligned with frames, class labels, the set's names (DESIGN.md section 7).

Clips here are made so that frame ``i`` *shows* its index (every pixel = a level of
``i``) and ``actions[i] = i``: after any random offset the reader must hand out frames
and actions that still agree.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from scd_msc.data import ClipDataset, Conditions, collate_clips, make_shards, shard_conditions
from scd_msc.data.conditions import clip_conditions
from scd_msc.data.shards import clip_sample, latent_sample, npy_bytes
from scd_msc.data.sources import Clip

F, S, STEP = 12, 16, 16  # stored frames, size, grey-level step between frame indices
NAMES = tuple(f"A{i}" for i in range(40))
CLASSES = ("red", "green", "blue")


def index_clip(n: int, channels: int = 1) -> Clip:
    """Clip ``n``: frame ``i`` is flat grey ``STEP * i``; ``actions[i] = n + i``; label ``n % 3``."""
    frames = np.broadcast_to((np.arange(F) * STEP).astype(np.uint8)[:, None, None, None], (F, S, S, channels))
    return Clip(np.ascontiguousarray(frames), 8.0, "test", {}, np.arange(F) + n, n % 3, NAMES, CLASSES)


def write_index_shards(path, fmt: str) -> str:
    with wds.TarWriter(str(path)) as sink:
        for n in range(6):
            clip = index_clip(n, 3 if fmt == "mp4" else 1)
            if fmt == "latent":
                latent = clip.frames[..., :1].transpose(0, 3, 1, 2)[:, :, ::4, ::4].astype(np.float32)  # (F, 1, 4, 4)
                sink.write(latent_sample(f"c{n}", clip, latent, "test:index"))
            else:
                sink.write(clip_sample(f"c{n}", clip, fmt))
    return str(path)


@pytest.mark.parametrize("fmt", ["npy", "mp4", "latent"])
def test_actions_stay_aligned_with_frames_under_random_offsets(tmp_path, fmt):
    shard = write_index_shards(tmp_path / "index.tar", fmt)
    channels, size = {"npy": (1, S), "mp4": (3, S), "latent": (1, S // 4)}[fmt]
    ds = ClipDataset(shard, 5, channels, size, resampled=True, seed=3, shuffle_buffer=0)
    starts = set()
    for sample in (s for _, s in zip(range(60), ds)):
        n = int(sample["key"][1:])
        level = (sample["video"][:, 0].mean((1, 2)) + 1) * 127.5 if fmt != "latent" else sample["video"][:, 0, 0, 0]
        shown = torch.round(level / STEP).long()                           # (5,) frame index each frame shows
        assert sample["actions"].dtype == torch.int64 and sample["actions"].shape == (5,)
        assert torch.equal(sample["actions"] - n, shown), f"{sample['key']}: actions and frames disagree"
        assert sample["label"].dtype == torch.int64 and int(sample["label"]) == n % 3
        starts.add(int(shown[0]))
    assert len(starts) >= 5, "the offsets are random, so the alignment was tested at many starts"


def test_round_trip_through_make_shards_order_and_batches(tmp_path):
    shard = write_index_shards(tmp_path / "index.tar", "npy")
    out = list(ClipDataset(shard, F, 1, S, resampled=False))
    assert [int(o["label"]) for o in out] == [0, 1, 2, 0, 1, 2]
    assert all(torch.equal(o["actions"], torch.arange(F) + n) for n, o in enumerate(out))
    batch = collate_clips(out[:4])
    assert batch["actions"].shape == (4, F) and batch["actions"].dtype == torch.int64
    assert batch["label"].shape == (4,) and batch["label"].tolist() == [0, 1, 2, 0]
    assert batch["video"].shape == (4, F, 1, S, S)


def test_shards_without_conditions_read_as_before(tmp_path):
    make_shards("moving-digits", tmp_path, 4, S, clips=2, progress=False)
    out = list(ClipDataset(str(tmp_path / "*.tar"), 4, 1, S, resampled=False))
    assert all(not {"actions", "label"} & set(o) and {"video", "key"} <= set(o) for o in out)
    assert not {"actions", "label"} & set(collate_clips(out))
    assert shard_conditions(str(tmp_path / "*.tar")) == Conditions()
    assert str(Conditions()) == "no actions; no classes"


def test_collate_refuses_a_batch_that_mixes_conditions(tmp_path):
    shard = write_index_shards(tmp_path / "index.tar", "npy")
    with_actions = next(iter(ClipDataset(shard, F, 1, S, resampled=False)))
    without = {"video": with_actions["video"], "key": "plain"}
    with pytest.raises(ValueError, match="1 carry 'actions' and the others do not"):
        collate_clips([with_actions, without])


def test_shard_conditions_names_the_set_and_catches_mixed_sets(tmp_path):
    shard = write_index_shards(tmp_path / "a.tar", "npy")
    found = shard_conditions(shard)
    assert found == Conditions(True, True, NAMES, CLASSES)
    assert (found.num_actions, found.num_classes) == (40, 3)
    assert str(found).startswith("40 actions (A0, A1,") and str(found).endswith("3 classes (red, green, blue)")
    make_shards("moving-digits", tmp_path / "plain", 4, S, clips=1, progress=False)
    with pytest.raises(ValueError, match="expected one set of conditions"):
        shard_conditions([shard, str(tmp_path / "plain" / "shard-000000.tar")])


def test_bad_conditions_are_skipped_and_string_labels_ignored(tmp_path):
    frames = index_clip(0).frames
    meta = lambda **kw: json.dumps({"frames": F, **kw})  # noqa: E731
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "short", "frames.npy": npy_bytes(frames), "actions.npy": npy_bytes(np.arange(3)),
                    "json": meta()})
        sink.write({"__key__": "floats", "frames.npy": npy_bytes(frames),
                    "actions.npy": npy_bytes(np.zeros(F, np.float32)), "json": meta()})
        sink.write({"__key__": "negative", "frames.npy": npy_bytes(frames), "json": meta(label=-1)})
        sink.write({"__key__": "caption", "frames.npy": npy_bytes(frames), "json": meta(label="a cat")})
    ds = ClipDataset(str(tmp_path / "bad.tar"), F, 1, S, resampled=False)
    out = list(ds)
    assert [o["key"] for o in out] == ["caption"] and "label" not in out[0]
    assert dict(ds.skipped.counts) == {"decode_error": 3}


@pytest.mark.parametrize("actions, label, message", [
    (np.arange(F - 1), None, r"expected integer ids of shape \(12,\)"),
    (np.full(F, 0.5), None, "expected integer ids"),
    (np.full(F, 40), None, r"expected ids in \[0, 40\)"),
    (None, 3, r"^label=3: expected an integer in \[0, 2\]$"),
    (None, -1, r"^label=-1: expected an integer in \[0, 2\]$"),
])
def test_writer_checks_conditions(actions, label, message):
    with pytest.raises(ValueError, match=message):
        clip_conditions(F, actions, label, NAMES, CLASSES)
