"""Skipped-sample counts of the shard readers, brought from the loader workers to the logs.

The readers count unusable samples per reason (``scd_msc.data.decode.REASONS``) in
their DataLoader worker processes, from zero in every pass over the loader (workers are
not persistent: a training epoch or a validation run starts fresh ones). Every batch
carries its worker's counts so far in its pass (``batch["skipped"]``, see
``scd_msc/data/dataset.py``); :class:`SkipLog` keeps the newest per worker and stage,
adds a worker's counts to the finished passes when its next pass begins, and logs the
sums each step (``metrics.csv``, TensorBoard)::

    data/train_used, data/train_skipped, data/train_skipped_<reason>   (on_step)
    data/val_used,   data/val_skipped,   data/val_skipped_<reason>     (per validation)

When training ends it prints one line, summed over ranks::

    skipped samples: decode_error=3, too_short=1 (of 4200 read)

Counts are cumulative over the run's start (a resume counts from zero) and as of each
worker's newest batch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from scd_msc.data.decode import REASONS


def _counts(snapshot: dict[str, int]) -> dict[str, int]:
    """The counts of a ``batch["skipped"]`` snapshot, without its worker and pass ids."""
    return {k: v for k, v in snapshot.items() if k not in ("worker", "pass")}


class SkipLog(L.Callback):
    """Log the readers' skip counts per stage; print a summary when training ends."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[int, dict[str, int]]] = {"train": {}, "val": {}}
        self.finished: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}  # ended passes

    def update(self, stage: str, batch: Any) -> None:
        """Keep ``batch["skipped"]`` (if any) as the newest counts of its worker; a new
        pass of that worker adds the counts of its previous one to the finished passes."""
        counts = batch.get("skipped") if isinstance(batch, dict) else None
        if counts:
            worker = int(counts["worker"])
            previous = self.latest[stage].get(worker)
            if previous is not None and previous.get("pass") != counts.get("pass"):
                self.finished[stage].update(_counts(previous))
            self.latest[stage][worker] = counts

    def totals(self, stage: str) -> Counter[str]:
        """``used`` and per-reason counts, summed over the stage's workers and passes."""
        total: Counter[str] = Counter(self.finished[stage])
        for counts in self.latest[stage].values():
            total.update(_counts(counts))
        return total

    def metrics(self, stage: str) -> dict[str, float]:
        total = self.totals(stage)
        skipped = {r: total[r] for r in REASONS if total[r]}
        out = {f"data/{stage}_used": float(total["used"]), f"data/{stage}_skipped": float(sum(skipped.values()))}
        out.update({f"data/{stage}_skipped_{r}": float(n) for r, n in skipped.items()})
        return out

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.update("train", batch)
        if self.latest["train"]:
            pl_module.log_dict(self.metrics("train"), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.update("val", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.latest["val"] and not trainer.sanity_checking:
            pl_module.log_dict(self.metrics("val"), on_step=False, on_epoch=True, batch_size=1)

    def summary(self, totals: dict[str, Counter[str]]) -> str:
        """``skipped samples: decode_error=3 (of 4200 read)[; validation: ...]``."""
        parts = []
        for stage, name in (("train", "skipped samples"), ("val", "validation")):
            total = totals[stage]
            skipped = {r: total[r] for r in REASONS if total[r]}
            read = total["used"] + sum(skipped.values())
            if stage == "val" and not read:  # no validation in this run
                continue
            listed = ", ".join(f"{r}={n}" for r, n in skipped.items()) or "none"
            parts.append(f"{name}: {listed} (of {read} read)")
        return "; ".join(parts)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_fit_end: after the progress bar is closed, so the line stands on its own
        keys = ("used",) + REASONS
        totals = {}
        for stage in ("train", "val"):
            local = self.totals(stage)
            counts = torch.tensor([float(local[k]) for k in keys], device=pl_module.device)
            if trainer.world_size > 1:  # every rank reaches on_fit_end: the collective is safe
                counts = trainer.strategy.reduce(counts, reduce_op="sum")
            totals[stage] = Counter({k: int(v) for k, v in zip(keys, counts.tolist())})
        rank_zero_only(print)(self.summary(totals), flush=True)
