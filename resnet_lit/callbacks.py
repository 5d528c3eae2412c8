"""Callbacks the CLI adds to every run."""

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """Writes `predict`'s classes, with their names, to a CSV file.

    One row per image: its index, its source (a file name, or `test/<i>` for the test set),
    the predicted class and its name, the softmax confidence, and the true class where known.

    Args:
        path: the CSV file; None: `predictions.csv` in the run's log folder.
    """

    FIELDS = ("index", "source", "predicted", "class_name", "confidence", "target")

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._file = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("predict writes one file from one process: run it with trainer.devices=1")
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.resolved_path = path
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.FIELDS)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: list[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        datamodule = trainer.datamodule
        names = datamodule.predict_names
        classes = datamodule.classes
        for index, predicted, confidence, target in zip(
            batch_indices,
            prediction["predicted"].tolist(),
            prediction["confidence"].tolist(),
            prediction["target"].tolist(),
            strict=True,
        ):
            known = target if target >= 0 else ""
            self._writer.writerow((index, names[index], predicted, classes[predicted], f"{confidence:.4f}", known))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            rank_zero_info(f"Predictions written to {self.resolved_path}")


class BestAndLastCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is rewritten after every epoch, as its name promises.

    Since Lightning 2.6, a `ModelCheckpoint` with a `monitor` writes `last.ckpt` only at a step
    where it also wrote a top-k checkpoint: an epoch whose `val/acc` is not the best would leave
    `last.ckpt` at an older epoch, and `fit --ckpt_path last` would silently redo (or, at the end
    of a run, lose) the epochs after it. Here `last.ckpt` is written at the end of every epoch
    that did not already write it, with the same file name, state and atomic save as Lightning's.
    """

    @property
    def state_key(self) -> str:
        # Lightning's key for a ModelCheckpoint with these settings: the state (best score and path)
        # in a checkpoint moves between this class and Lightning's own in both directions.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        # Skips where a checkpoint (top-k or last) was written at this very step already.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
