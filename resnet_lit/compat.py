"""Every use of a private API of Lightning, jsonargparse or torch, in one place, each with why.

Private names change without notice between releases; pyproject.toml pins the range these were
checked against (lightning 2.6, jsonargparse < 4.49, torch 2.11 to 2.14), and CI runs the tests
on the oldest and the newest of that range. Where a public API does the job, it is used instead.
Two uses live beside the code they serve, as overrides: `ResNetCLI._parse_ckpt_path` (turned
off, resnet_lit.cli) and `TensorBoardLogger._version` (claimed atomically, resnet_lit.runs).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

# Lightning's own sampler for DDP evaluation that neither pads nor repeats images: the public
# DistributedSampler pads the data set, so some images would count twice. Not exported publicly.
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

__all__ = [
    "UnrepeatedDistributedSampler",
    "eager",
    "is_compiled",
    "load_pending_loader_states",
    "max_steps",
    "save_last_checkpoint",
    "saves_on_train_epoch_end",
    "set_max_steps",
    "set_sigterm",
    "set_subcommand_defaults",
    "training_batch_index",
]


def set_subcommand_defaults(cli: Any, subcommand: str, defaults: dict[str, Any]) -> None:
    """Set parser defaults of one subcommand (a checkpoint's settings, for `--ckpt_path X`).

    LightningCLI keeps the subcommands' parsers in `_subcommand_parsers`; there is no public
    accessor, and the top parser's defaults do not reach a subcommand's.
    """
    cli._subcommand_parsers[subcommand].set_defaults(defaults)


def save_last_checkpoint(checkpoint: ModelCheckpoint, trainer: Trainer) -> None:
    """Write `last.ckpt` now, unless a checkpoint was written at this very step, as ModelCheckpoint would.

    Lightning 2.6 writes last.ckpt only at steps where it also writes a top-k checkpoint (and has no
    public method to write it): `_save_last_checkpoint` with its own file name, state and atomic save.
    """
    if not checkpoint._should_skip_saving_checkpoint(trainer):
        checkpoint._save_last_checkpoint(trainer, checkpoint._monitor_candidates(trainer))


def saves_on_train_epoch_end(checkpoint: ModelCheckpoint, trainer: Trainer) -> bool:
    """Whether ModelCheckpoint saves at the end of the training epoch (no validation) or after validation."""
    return checkpoint._should_save_on_train_epoch_end(trainer)


def load_pending_loader_states(trainer: Trainer) -> None:
    """Hand the training loader the position a checkpoint recorded, where Lightning has not yet.

    `trainer.estimated_stepping_batches` (which cosine and one-cycle schedules read) builds the
    training loader before the checkpoint is restored, and Lightning then never passes it its
    state; it keeps that state in `fit_loop._combined_loader_states_to_load`.
    """
    load = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
    if load is not None:
        load()


def training_batch_index(trainer: Trainer) -> int:
    """The index in its epoch of the training batch being prepared (0-based), before its step starts.

    The hook that augments a batch (`on_after_batch_transfer`) gets no batch index; Lightning's loop
    progress counter has it (`batch_progress` is a loop attribute, not a public API).
    """
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def max_steps(trainer: Trainer) -> int:
    return trainer.fit_loop.epoch_loop.max_steps


def set_max_steps(trainer: Trainer, value: int) -> None:
    """Lightning 2.6 restores a finished epoch of a run with max_steps as unfinished (see
    `resnet_lit.callbacks.ExactResume`); `trainer.max_steps` has no setter, the epoch loop's does."""
    trainer.fit_loop.epoch_loop.max_steps = value


def set_sigterm(trainer: Trainer, received: bool) -> None:
    """Set whether Lightning acts on a SIGTERM it received (`trainer.received_sigterm` has no setter).

    Lightning 2.6 stops a validation inside fit at its next batch on SIGTERM, and a run resumed from
    there never runs that validation again (its best-checkpoint choice and curves lose it), so
    `SaveOnInterrupt` holds the signal back until the validation ends.
    """
    trainer._signal_connector.received_sigterm = received


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `nn.Module.compile` compiled the module in place (torch keeps the compiled call privately)."""
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def eager(module: torch.nn.Module) -> Iterator[None]:
    """Run the modules that `nn.Module.compile` compiled in place eagerly for a while.

    torch.jit.trace (which TensorBoard's graph needs) refuses to trace a dynamo-compiled module,
    and the graph of the eager module is the same network. torch has no public switch for one
    module's in-place compilation.
    """
    compiled = {m: m._compiled_call_impl for m in module.modules() if is_compiled(m)}
    for m in compiled:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in compiled.items():
            m._compiled_call_impl = impl
