"""Callbacks that keep a run's work safe: stop at a non-finite loss, save when interrupted.

The CLI adds both to every run.
"""

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first step whose loss is NaN or infinite, before it changes the weights.

    Nothing is saved after that: the checkpoints on disk stay the last good ones. (Resuming from
    the state just before the blow-up would only repeat it; the fix is a lower learning rate.)
    Under DDP every process stops together, whichever one saw the bad loss. The check costs one
    device-to-host sync of the loss per step (and under DDP a one-element all-reduce).
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        lrs = sorted({group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups})
        lr = ", ".join(f"{value:g}" for value in lrs)
        checkpoint = trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        kept = "no checkpoint was saved yet"
        if last and Path(last).is_file():
            kept = f"the last good checkpoint, {last}, is kept"
        raise NonFiniteLossError(
            f"the training loss is {loss.item() if bad else 'not finite on another process'} at step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}) with lr {lr}: training stopped before that "
            f"step changed the weights; {kept}; lower --model.lr, or warm up with --model.warmup_lr"
        )


class SaveOnInterrupt(Callback):
    """On SIGTERM or a first Ctrl-C, finish the current step, save `last.ckpt`, say where, exit.

    Lightning turns SIGTERM into a stop after the current training step (`SIGTERMException`)
    but saves nothing itself. A first Ctrl-C is turned into the same graceful stop; a second one
    aborts at once and saves nothing. The saved state resumes exactly with `fit --ckpt_path last`,
    mid-epoch included (the training loader records its position: `resnet_lit.loaders`).
    """

    def __init__(self) -> None:
        self._previous_handler: Any = None
        self._signal_name = "SIGTERM"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Installed once Lightning's own SIGTERM handler is in place, which the first Ctrl-C triggers.
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if not isinstance(exception, SIGTERMException) or not fitting:
            return
        exception.signal_name = self._signal_name  # the exit status main() reports
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
            return
        path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        # Recorded in the checkpoint, so the resumed run's ModelCheckpoint goes on writing this file
        # (it would write last-v1.ckpt beside a last.ckpt it does not know).
        checkpoint.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"{self._signal_name}: stopped at epoch {trainer.current_epoch}, step {trainer.global_step} and saved "
                f"{path}; continue with the same command and --ckpt_path last",
                file=sys.stderr,
                flush=True,
            )

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._signal_name == "Ctrl-C":
            raise KeyboardInterrupt  # the second one: abort now
        self._signal_name = "Ctrl-C"
        print("Ctrl-C: saving after this step (press Ctrl-C again to abort without saving)", file=sys.stderr)
        signal.raise_signal(signal.SIGTERM)
