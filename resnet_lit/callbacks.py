"""Callbacks the CLI adds to every run."""

import csv
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException


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
        # Written beside the target and renamed at the end: an interrupted predict leaves no half file.
        self._partial = path.with_name(f".{path.name}.partial")
        self._file = self._partial.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.FIELDS)
        self._rows = 0

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
        if trainer.received_sigterm:
            raise SIGTERMException  # Lightning's predict loop would go on to the end (test and fit stop)
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
            self._rows += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._partial.replace(self.resolved_path)
            print(f"predict: {self._rows} predictions written to {self.resolved_path}")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._partial.unlink(missing_ok=True)


class LoggedValuesProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss and accuracy as they were last logged.

    A value logged with `prog_bar=True` is read on the host after every batch, whether or not
    a bar shows it (Lightning issue #21232): on a GPU, a stall every step. The training step
    logs without it, and this bar reads `train/loss` and `train/acc` only at the steps where
    Lightning writes them to the loggers (every `trainer.log_every_n_steps`), so the numbers it
    shows are at most that many steps old.
    """

    KEYS = ("train/loss", "train/acc")

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self._logged: dict[str, float] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:
            metrics = trainer.callback_metrics
            self._logged = {key: metrics[key].item() for key in self.KEYS if key in metrics}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **self._logged}


class EpochLines(Callback):
    """One line per training epoch on stdout, for logs without a progress bar (sweeps, batch jobs).

    `epoch 3/15, step 1287/6435: train/loss 0.512, val/loss 0.421, val/acc 0.8812 (34 s)`
    """

    KEYS = ("train/loss", "val/loss", "val/acc")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        metrics = trainer.callback_metrics
        values = ", ".join(f"{key} {metrics[key].item():.4g}" for key in self.KEYS if key in metrics)
        seconds = time.monotonic() - getattr(self, "_start", time.monotonic())
        print(
            f"epoch {trainer.current_epoch + 1}{epochs}, step {trainer.global_step}{steps}: {values} ({seconds:.0f} s)",
            flush=True,
        )


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

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # resolves `dirpath`, before a checkpoint's state is loaded
        self._stage = stage
        self._trainer = trainer  # its ckpt_path is known once the checkpoint is being restored

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if getattr(self, "_stage", "fit") != "fit":
            return  # validate, test and predict write no checkpoints: nothing of this state applies
        saved, here = state_dict.get("dirpath"), self.dirpath
        ckpt_path = self._trainer.ckpt_path
        resumed = Path(ckpt_path).resolve().parent if ckpt_path else None
        if saved and here and saved != here and resumed == Path(here).resolve():
            # The run folder was moved or renamed since: its checkpoints are the ones beside the one
            # resumed. Lightning would forget them (and write last-v1.ckpt beside a stale last.ckpt).
            state_dict = _moved(state_dict, saved, here)
        super().load_state_dict(state_dict)

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


def _moved(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A ModelCheckpoint state with every path under the folder `old` moved to the folder `new`."""

    def move(path: Any) -> Any:
        if isinstance(path, str) and path and Path(path).parent == Path(old):
            return str(Path(new) / Path(path).name)
        return path

    state = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = move(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    return state
