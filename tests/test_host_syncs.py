"""The training step reads nothing back to the host between logging steps (a GPU never waits on the host).

On a GPU each such read (`.item()`, `bool(t)`, `.tolist()`, a copy to the CPU, an operation whose
output size depends on the values) stalls the host until the GPU has caught up, and each tensor
made from host data is a copy the other way. `HostReads` records both kinds of call on the CPU,
so the test runs in CI: a short `fit` through the CLI, and no such call in any step that is not
a logging step or an epoch's first or last.
"""

from collections import defaultdict

import pytest
from host_reads import HostReads
from lightning.pytorch import Callback

from resnet_lit.cli import ResNetCLI

LOG_EVERY = 5
STEPS_PER_EPOCH = 10  # 500 training images of the stand-in, batches of 50
EPOCHS = 2


class StepWindows(Callback):
    """Labels what `HostReads` records with the step being taken (1-based), from one step's start to the next."""

    def __init__(self, reads: HostReads) -> None:
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.reads.label = trainer.global_step + 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.reads.label = None


def quiet_steps() -> set[int]:
    """Steps that neither log (a multiple of LOG_EVERY) nor start or end an epoch."""
    steps = range(1, EPOCHS * STEPS_PER_EPOCH + 1)
    return {s for s in steps if s % LOG_EVERY and s % STEPS_PER_EPOCH not in (0, 1)}


# The paper's ResNet-110 warm-up, held for the whole run (its error bound 0 is never reached):
# the training error it watches is read at logging steps only.
WARMING_UP = ["--model.warmup_lr=0.01", "--model.warmup_until_error=0"]


@pytest.mark.parametrize(
    ("bar", "extra"),
    [("progress bar", []), ("no progress bar", []), ("no progress bar", WARMING_UP)],
    ids=["progress bar", "no progress bar", "warming up"],
)
def test_no_host_reads_between_logging_steps(in_tmp, data_args, bar, extra):
    args = ["--model.arch=resnet8", f"--trainer.max_epochs={EPOCHS}", f"--trainer.log_every_n_steps={LOG_EVERY}"]
    args += [f"--trainer.enable_progress_bar={bar == 'progress bar'}", *extra, *data_args]
    cli = ResNetCLI(args=args, run=False)  # what `fit` builds; then its call, watched
    reads = HostReads()
    cli.trainer.callbacks.insert(0, StepWindows(reads))  # first, so every hook of a step is in its window
    with reads:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == EPOCHS * STEPS_PER_EPOCH

    by_step = defaultdict(list)
    for step, kind, name, where in reads.events:
        by_step[step].append(f"{kind} {name} at {where}")
    assert by_step[LOG_EVERY], "no read at a logging step: the counter saw nothing"
    quiet = {step: calls for step, calls in by_step.items() if step in quiet_steps()}
    assert not quiet, quiet
