"""A callback the tests add to a subprocess run: it sends the process a signal at a chosen step.

It holds no state and draws no random numbers, so the run is the same as without it until the signal.
"""

import os
import signal

from lightning.pytorch import Callback


class SignalAtStep(Callback):
    """Sends `signal_name` (e.g. SIGTERM, SIGINT) to this process when training reaches `step`."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
