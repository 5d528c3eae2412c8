"""Every callback a run gets, and the switch that turns each off.

`python -m resnet_lit` (resnet_lit.cli) gives every run these; all but the last three are here.

- `BestCheckpoint`: the best checkpoint by `val/acc` (the "checkpoint" option group), and
  `LastCheckpoint`: `last.ckpt` after every epoch (the one writer of last.ckpt besides the save on
  a signal; off alone: `--checkpoint.save_last false`). Both off: `--trainer.enable_checkpointing false`.
- `StopOnNonFiniteLoss`: stop at a NaN or infinite loss, whose step changes no weight. Off (with
  a warning): `--stop_on_nan.enabled false`.
- `SaveOnInterrupt`: on SIGTERM or Ctrl-C, finish the step, save last.ckpt, exit. Off (with a
  warning): `--save_on_interrupt.enabled false`.
- `ExactResume`: resumes continue exactly where Lightning 2.6 would not. Always on.
- `LoggedValuesProgressBar`: the progress bar, reading values on the host only where they are
  logged. Off: `--trainer.enable_progress_bar false`, which gives `EpochLines` instead: a line per
  epoch, for logs.
- `PredictionWriter`: predict's CSV file (`--predictions.path`).
- `Insight` (resnet_lit.insight): per-class accuracy, confusion matrix, confident mistakes, model
  graph. Off: `--insight.enabled false`.
- Lightning's `LearningRateMonitor` (the `lr` curve; off with `--trainer.logger false`) and
  `ModelSummary` at depth 2 (the shape walk; off with `--trainer.enable_model_summary false`).
"""

import csv
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from resnet_lit import compat
from resnet_lit.errors import BadInput, NonFiniteLossError


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

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._validated = False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._validated = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        metrics = trainer.callback_metrics
        # The validation values only where this epoch validated (a run that stops at max_steps
        # mid-epoch does not): older ones would pass for this epoch's.
        keys = self.KEYS if self._validated else self.KEYS[:1]
        values = ", ".join(f"{key} {metrics[key].item():.4g}" for key in keys if key in metrics)
        seconds = time.monotonic() - self._start
        print(
            f"epoch {trainer.current_epoch + 1}{epochs}, step {trainer.global_step}{steps}: {values} ({seconds:.0f} s)",
            flush=True,
        )


class BestCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` for the best checkpoint by `val/acc` (the "checkpoint" option group).

    It never writes `last.ckpt`: `LastCheckpoint` does, after every epoch. Since Lightning 2.6, a
    `ModelCheckpoint` with a `monitor` writes last.ckpt only at a step where it also wrote a top-k
    checkpoint: an epoch whose `val/acc` is not the best would leave last.ckpt at an older epoch,
    and `fit --ckpt_path last` would silently redo (or, at the end of a run, lose) the epochs
    after it. The command line hands `LastCheckpoint` this group's `save_last`, `dirpath` and
    `save_on_train_epoch_end` (resnet_lit.cli).

    Args:
        save_last: whether the run keeps a `last.ckpt`, rewritten after every epoch (default);
            False: none. "link" is refused (`LastCheckpoint`).
        **kwargs: Lightning's `ModelCheckpoint` arguments.
    """

    def __init__(self, *, save_last: bool | Literal["link"] | None = True, **kwargs: Any) -> None:
        # `save_last` is LastCheckpoint's (the command line links it there); Lightning's own
        # last.ckpt writes stay off here (its save_last None).
        super().__init__(**kwargs)

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
            # resumed. Lightning would forget them.
            state_dict = _moved(state_dict, saved, here)
        super().load_state_dict(state_dict)


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt`, rewritten after every epoch: the run's newest state, for `fit --ckpt_path last`.

    Lightning's own `ModelCheckpoint`, keeping one file named `last` with no version counter (the
    same file every time, never `last-v1.ckpt`). It "monitors" the step, so it writes only once
    the step has moved on, and `best_model_score` is the step last.ckpt holds. It saves where the
    best checkpoint does (its folder; at the end of the training epoch or after validation, by
    Lightning's rule for both) and after it (Lightning keeps ModelCheckpoints in their order), so
    last.ckpt records the best checkpoint as of its own epoch: `--ckpt_path best` reads it there.

    It keeps no state of its own in the checkpoint (its one file is always `last.ckpt`): only the
    best checkpoint's state is there, under Lightning's key, as before this callback existed.

    Args:
        dirpath: the folder (None: the run's `checkpoints/`, as the best checkpoint's).
        save_on_train_epoch_end: as ModelCheckpoint's; the best checkpoint's.
        save_last: False: no last.ckpt (this callback writes nothing). "link" is refused: a link to
            the newest top-k checkpoint would be the best epoch's, not the newest one's.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        save_on_train_epoch_end: bool | None = None,
        save_last: bool | Literal["link"] | None = True,
    ) -> None:
        if save_last == "link":
            raise BadInput(
                "--checkpoint.save_last link is not supported: last.ckpt is a file of its own, rewritten after "
                "every epoch (a link would point at the best epoch, not the newest); use true or false"
            )
        self.enabled = bool(save_last)
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor="step",
            mode="max",
            save_top_k=1 if self.enabled else 0,
            enable_version_counter=False,
            every_n_epochs=1,
            save_on_train_epoch_end=save_on_train_epoch_end,
        )

    @property
    def path(self) -> Path:
        return Path(self.format_checkpoint_name({}))

    def save_now(self, trainer: Trainer) -> Path:
        """Write last.ckpt at this step (SIGTERM, Ctrl-C), unless it was written at this very step; returns its path."""
        if self.best_model_score is None or int(self.best_model_score) != trainer.global_step:
            trainer.save_checkpoint(self.path)  # the trainer's CheckpointIO: atomic (resnet_lit.checkpointing)
        return self.path

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing to keep: Lightning stores no entry for it


def last_checkpoint(trainer: Trainer) -> LastCheckpoint | None:
    """The run's `LastCheckpoint` where it writes last.ckpt (None: none, or turned off)."""
    found = [c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint) and c.enabled]
    return found[0] if found and found[0].dirpath is not None else None


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


class StopOnNonFiniteLoss(Callback):
    """Stops training at a NaN or infinite loss; the step with that loss does not change the weights.

    Reading the loss on the host every step would stall a GPU at every step, so the guard works
    in two halves:

    - every step, on the device: whether the loss is finite. A fused optimizer (what
      `ResNetClassifier` builds on CPUs and GPUs) gets the answer as its `found_inf` flag and
      skips its update on the device when it is set, as it does for `torch.amp.GradScaler`: the
      weights and the optimizer's state stay as they were.
    - on the host, at every logging step (`trainer.log_every_n_steps`), at the end of an epoch,
      before validation and before any checkpoint is written: if a step had a non-finite loss,
      stop, naming that step, its loss and its learning rate.

    Nothing is saved after the bad step, so the checkpoints on disk stay the last good ones.
    Only the weights (and the optimizer's state, from the second step on) are kept as they were
    in memory: the bad step's forward pass already moved BatchNorm's running statistics, the
    weight average follows them, and at the very first step the fused SGD's momentum buffers
    are made uninitialised before the skipped update. None of it reaches a checkpoint.
    (Resuming from just before the blow-up would only repeat it; the fix is a lower learning
    rate.) With an optimizer that cannot skip on the device (not fused), the loss is read every
    step instead and training stops before the bad step's update. Under DDP the flag is
    all-reduced, so every process skips and stops together. Under "16-mixed", GradScaler hands the
    fused optimizer its own `found_inf` (inf or NaN in the unscaled gradients, which a non-finite
    loss always makes) in place of the guard's, skips the step with it and halves its scale; the
    guard then only names the step and stops, as above.

    Args:
        enabled: False turns it off (with a warning): a non-finite loss then updates the weights
            and training goes on.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pending: list[tuple[int, int, Tensor, Tensor, list]] = []  # (step, epoch, bad, loss, lrs)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = []
        if not self.enabled:
            rank_zero_warn("stop_on_nan.enabled is false: a NaN or infinite loss updates the weights; training goes on")

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        if not self.enabled:
            return
        loss = loss.detach()
        bad = (~torch.isfinite(loss)).float()
        if trainer.world_size > 1 and dist.is_initialized():
            # Queued on the device like the gradients' all-reduce (Lightning's strategy.reduce would
            # add a barrier, which waits on the host).
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        lr = [group["lr"] for each in trainer.optimizers for group in each.param_groups]
        if optimizer is not None and optimizer.defaults.get("fused"):
            optimizer.found_inf = bad  # the fused update is skipped on the device where it is 1
            self._pending.append((trainer.global_step, trainer.current_epoch, bad, loss, lr))
            return
        self._pending = [(trainer.global_step, trainer.current_epoch, bad, loss, lr)]
        self._check(trainer)  # no way to skip the update on the device: look now, before it happens

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        # Lightning writes to the loggers after the batches that end on a multiple of
        # log_every_n_steps, and reads the logged values on the host there anyway.
        if trainer.log_every_n_steps and trainer.global_step % trainer.log_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)  # raising here writes nothing: the last good checkpoint stays

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)
        for optimizer in trainer.optimizers:
            if hasattr(optimizer, "found_inf"):
                del optimizer.found_inf

    def _check(self, trainer: Trainer) -> None:
        """One host read of every step's flag since the last check; stops at the first bad step."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.stack([bad for _, _, bad, _, _ in pending]).cpu()
        if not flags.any():
            return
        step, epoch, _, loss, lrs = pending[int(flags.argmax())]
        lr = ", ".join(f"{value:g}" for value in sorted({float(v) for v in lrs}))
        writer = last_checkpoint(trainer)
        last = str(writer.path) if writer is not None and writer.path.is_file() else ""
        last = last or getattr(trainer.checkpoint_callback, "best_model_path", "")
        kept = "no checkpoint was saved yet"
        if last and Path(last).is_file():
            kept = f"the last good checkpoint, {last}, is kept"
        value = loss.item()
        raise NonFiniteLossError(
            f"the training loss is {value if not math.isfinite(value) else 'not finite on another process'} at "
            f"step {step} (epoch {epoch}) with lr {lr}: that step did not change the weights and training "
            f"stopped; {kept}; lower --model.lr, or warm up with --model.warmup_lr"
        )


class SaveOnInterrupt(Callback):
    """On SIGTERM or a first Ctrl-C, finish the current step, save `last.ckpt`, say where, exit.

    A validation in progress inside fit runs to its end first, so the resumed run has it.

    Lightning turns SIGTERM into a stop after the current training step (`SIGTERMException`)
    but saves nothing itself. A first Ctrl-C is turned into the same graceful stop; a second one
    aborts at once and saves nothing. The saved state resumes exactly with `fit --ckpt_path last`,
    mid-epoch included (the training loader records its position: `resnet_lit.batches`).

    Args:
        enabled: False turns it off (with a warning): SIGTERM then stops the run without saving.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._previous_handler: Any = None
        self._signal_name = "SIGTERM"
        self._held = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            if trainer.state.fn == TrainerFn.FITTING:
                rank_zero_warn("save_on_interrupt.enabled is false: SIGTERM and Ctrl-C stop the run without saving")
            return
        # Installed once Lightning's own SIGTERM handler is in place, which the first Ctrl-C triggers.
        if threading.current_thread() is threading.main_thread() and self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    # validate, test and predict stop the same way (with nothing to save).
    on_validation_start = on_test_start = on_predict_start = on_train_start

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # A validation inside fit runs to its end before the stop: Lightning would stop it at the
        # next batch, and the resumed run would never validate that epoch (compat.set_sigterm).
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if self.enabled and fitting and trainer.received_sigterm:
            compat.set_sigterm(trainer, False)
            self._held = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._held:
            self._held = False
            compat.set_sigterm(trainer, True)  # acted on after this step, as any other SIGTERM

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Another error once the signal came is the signal's doing too: the same SIGTERM to the
        # process group ends torch.compile's compiler processes, and Inductor fails on them.
        by_signal = isinstance(exception, Exception) and trainer.received_sigterm
        if not self.enabled or not (isinstance(exception, SIGTERMException) or by_signal):
            return
        exception.signal_name = self._signal_name  # the exit status main() reports
        if trainer.state.fn != TrainerFn.FITTING:
            return
        writer = last_checkpoint(trainer) if not trainer.fast_dev_run else None  # fast_dev_run saves nothing
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking and writer is not None:
            path = writer.save_now(trainer)
            said = f"stopped at epoch {trainer.current_epoch}, step {trainer.global_step} and saved {path}; "
            said += "continue with the same command and --ckpt_path last"
        else:
            # Before the first step (the sanity check, where the first compilation happens), or in the
            # middle of one: the loops are not at a step's end, so nothing is saved. (Or no last.ckpt
            # is kept: --checkpoint.save_last false.)
            where = f"during step {trainer.global_step + 1}"
            if isinstance(exception, SIGTERMException):
                where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
            where = "before the first training step" if trainer.sanity_checking else where
            last = str(writer.path) if writer is not None else ""
            since = trainer.ckpt_path if trainer.sanity_checking and trainer.ckpt_path else None
            if since:
                kept = f"nothing trained since {since}; continue with the same command"
            elif last and Path(last).is_file():
                kept = f"nothing saved after {last}; continue with the same command and --ckpt_path last"
            else:
                kept = "nothing was saved and its run folder is removed; start it again with the same command"
            said = f"stopped {where}; {kept}"
        if trainer.is_global_zero:
            print(f"{self._signal_name}: {said}", file=sys.stderr, flush=True)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._signal_name == "Ctrl-C":
            raise KeyboardInterrupt  # the second one: abort now
        self._signal_name = "Ctrl-C"
        print("Ctrl-C: saving after this step (press Ctrl-C again to abort without saving)", file=sys.stderr)
        signal.raise_signal(signal.SIGTERM)


class ExactResume(Callback):
    """Makes a resumed run continue exactly where the checkpoint left off (two gaps in Lightning 2.6).

    - Lightning 2.6 restores a checkpoint written at the end of an epoch as "not restarting" (the
      next epoch starts afresh), except when max_steps is set: then it treats the finished epoch
      as unfinished, runs it again with no batch left and counts it, so the resumed run is one
      epoch short and keys every later epoch's shuffle and augmentation one epoch off
      (`FitLoop.restarting` and `FitLoop.on_run_start` test `_iteration_based_training()`). The
      loops are restored between on_fit_start and on_train_start: without max_steps for that
      while, they take the same path as a run without it, which resumes exactly.
    - `trainer.estimated_stepping_batches` (which the cosine and one-cycle schedules read) builds
      the training loader before the checkpoint is restored, and Lightning then never hands the
      loader its position in the epoch: the epoch would start over. It is handed over at the
      start of training; where Lightning already did, nothing is pending and nothing happens.
    """

    def __init__(self) -> None:
        self._max_steps: int | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is not None and trainer.max_steps != -1:
            self._max_steps = trainer.max_steps
            compat.set_max_steps(trainer, -1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_max_steps(trainer)
        compat.load_pending_loader_states(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_max_steps(trainer)  # where the run ended before training started

    def _restore_max_steps(self, trainer: Trainer) -> None:
        if self._max_steps is not None:
            compat.set_max_steps(trainer, self._max_steps)
            self._max_steps = None
