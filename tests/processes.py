"""`python -m resnet_lit` as a subprocess, as users and schedulers run it, and a callback that signals it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).parents[1]


def run_module(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start `python -m resnet_lit ARGS` in `cwd`, importing this checkout (and tests/, for `SignalAtStep`)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_lit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for the process; its stdout and stderr together."""
    output, _ = process.communicate(timeout=timeout)
    return output


class SignalAtStep(Callback):
    """Sends `signal_name` (SIGTERM, SIGINT, SIGKILL) to its own process when training reaches `step`.

    Added with `--trainer.callbacks+=processes.SignalAtStep`. It holds no state and draws no
    random numbers, so the run is the same as without it until the signal.
    """

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class SignalAtBatch(Callback):
    """Sends `signal_name` to its own process at the first batch of validate, test or predict."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        self.signal_name = signal_name

    def _signal(self, *args) -> None:
        os.kill(os.getpid(), getattr(signal, self.signal_name))

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _signal


class SignalThenFail(Callback):
    """At the start of training step `step + 1`: SIGTERM to its own process, then an error in that step.

    What a SIGTERM to the whole process group does while torch.compile compiles: the compiler
    processes die of it, and Inductor raises in the middle of the step.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("C++ compile error: the compiler was killed by a signal")


class RecordMetrics(Callback):
    """Writes each process's `val/loss` and `val/acc` after every validation to `metrics_rank<R>.json`."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: trainer.callback_metrics[k].item() for k in ("val/loss", "val/acc")}
        Path(f"metrics_rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


class SlowSteps(Callback):
    """Sleeps `seconds` after every training step: a run long enough to be interrupted on purpose.

    It holds no state and draws no random numbers, so the weights are those of the run without it.
    """

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
