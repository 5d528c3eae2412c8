"""Callbacks that keep a run's work safe: stop at a non-finite loss, save when interrupted.

The CLI adds both to every run.
"""

import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


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
    (Resuming from just before the blow-up would only repeat it; the fix is a lower learning
    rate.) With an optimizer that cannot skip on the device (not fused), the loss is read every
    step instead and training stops before the bad step's update. Under DDP the flag is
    all-reduced, so every process skips and stops together.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, Tensor, Tensor, list]] = []  # (step, epoch, bad, loss, lrs)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = []

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        loss = loss.detach()
        bad = (~torch.isfinite(loss)).float()
        if trainer.world_size > 1 and dist.is_initialized():
            # Queued on the device like the gradients' all-reduce (Lightning's strategy.reduce would
            # add a barrier, which waits on the host).
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        lr = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
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
        checkpoint = trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
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
        if threading.current_thread() is threading.main_thread() and self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    # validate, test and predict stop the same way (with nothing to save).
    on_validation_start = on_test_start = on_predict_start = on_train_start

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        exception.signal_name = self._signal_name  # the exit status main() reports
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
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
