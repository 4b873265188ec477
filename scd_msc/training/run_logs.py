"""Console and CSV output of a training run.

* :class:`RunCSVLogger` writes ``<out_dir>/metrics.csv``, one file per run: a resume
  continues it (rows the killed run logged at or after the resumed step are dropped, so
  no step appears twice) instead of Lightning's new ``version_N`` per start; a fresh
  start in the same folder replaces it. Rows are flushed every ``log_every_n_steps``.
  Lightning logs a step's row after that step's checkpoint callbacks, so a SIGKILL between
  the two loses that one row (the resumed run starts at the step after it).
* :class:`ProgressBar` is Lightning's tqdm bar, closed when training is interrupted,
  so the message that follows starts on a line of its own.
"""

from __future__ import annotations

import csv
import sys
from typing import Any, Optional

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows of an existing ``metrics.csv`` logged
    before ``resume_step`` (``None``: a fresh start, the file is replaced)."""

    def __init__(self, log_dir: str, resume_step: Optional[int]):
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__
        if not self._fs.isfile(self.metrics_file_path):
            return
        if self._resume_step is None:
            self._fs.rm_file(self.metrics_file_path)
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self._resume_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


class RunCSVLogger(CSVLogger):
    """``<save_dir>/metrics.csv``, continued across resumes (see the module docstring).
    Hyperparameters are not written: ``config.yaml`` next to it holds them."""

    def __init__(self, save_dir: str, resume_step: Optional[int], flush_every_n_steps: int):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_every_n_steps)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment

    def log_hyperparams(self, params: Any = None) -> None:
        pass


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, closed on Ctrl-C / SIGTERM / errors before anything else prints."""

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        for bar in (self._val_progress_bar, self._train_progress_bar):
            if bar is not None:
                bar.close()
        sys.stdout.flush()  # the bar's closing newline (tqdm does not flush it) before the stderr message
