"""Every use of a private API of Lightning, jsonargparse or torch, in one place, each with why.

Private names change without notice between releases; pyproject.toml pins the range these were
checked against, and CI runs the tests on the oldest and the newest of that range. Where a public
API does the job, it is used instead. Each use below names the upstream issue it works around (or,
where none was found, the upstream code it depends on), so it can go once a release fixes that.
Two uses live beside the code they serve, as overrides: `ResNetCLI._parse_ckpt_path` (turned
off, resnet_lit.cli) and `TensorBoardLogger._version` (claimed atomically, resnet_lit.runs).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import Trainer

# Lightning's own sampler for DDP evaluation that neither pads nor repeats images: the public
# DistributedSampler pads the data set, so some images would count twice
# (https://github.com/pytorch/pytorch/issues/25162, open). Not exported publicly: it lives in
# lightning/pytorch/overrides/distributed.py (Lightning 2.6); no upstream issue asks to export it.
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

__all__ = [
    "UnrepeatedDistributedSampler",
    "eager",
    "is_compiled",
    "load_pending_loader_states",
    "set_max_steps",
    "set_sigterm",
    "set_subcommand_defaults",
]


def set_subcommand_defaults(cli: Any, subcommand: str, defaults: dict[str, Any]) -> None:
    """Set parser defaults of one subcommand (a checkpoint's settings, for `--ckpt_path X`).

    LightningCLI keeps the subcommands' parsers in `_subcommand_parsers`; there is no public
    accessor, and the top parser's defaults do not reach a subcommand's. Lightning's own
    `--ckpt_path` handling sets a checkpoint's settings over the explicit ones
    (https://github.com/Lightning-AI/pytorch-lightning/issues/20801); the open PR
    https://github.com/Lightning-AI/pytorch-lightning/pull/21455 applies them as parser
    defaults, as this does.
    """
    cli._subcommand_parsers[subcommand].set_defaults(defaults)


def load_pending_loader_states(trainer: Trainer) -> None:
    """Hand the training loader the position a checkpoint recorded, where Lightning has not yet.

    `trainer.estimated_stepping_batches` (which cosine and one-cycle schedules read) builds the
    training loader before the checkpoint is restored, and Lightning then never passes it its
    state; it keeps that state in `fit_loop._combined_loader_states_to_load`
    (https://github.com/Lightning-AI/pytorch-lightning/issues/20550, open; the open PR
    https://github.com/Lightning-AI/pytorch-lightning/pull/21765 would load it).
    """
    load = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
    if load is not None:
        load()


def set_max_steps(trainer: Trainer, value: int) -> None:
    """Set max_steps for a while; `trainer.max_steps` has no setter, the epoch loop's does.

    Lightning 2.6 restores a finished epoch of a run with max_steps as unfinished
    (`resnet_lit.callbacks.ExactResume`), the restart logic of
    https://github.com/Lightning-AI/pytorch-lightning/issues/19617 (open).
    """
    trainer.fit_loop.epoch_loop.max_steps = value


def set_sigterm(trainer: Trainer, received: bool) -> None:
    """Set whether Lightning acts on a SIGTERM it received (`trainer.received_sigterm` has no setter).

    Lightning 2.6 stops a validation inside fit at its next batch on SIGTERM, and a run resumed from
    there never runs that validation again (its best-checkpoint choice and curves lose it), so
    `SaveOnInterrupt` holds the signal back until the validation ends. No upstream issue found:
    the stop is `_EvaluationLoop`'s check of `trainer.received_sigterm` after each batch
    (lightning/pytorch/loops/evaluation_loop.py, Lightning 2.6.6).
    """
    trainer._signal_connector.received_sigterm = received


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `nn.Module.compile` compiled the module in place (torch keeps the compiled call privately)."""
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def eager(module: torch.nn.Module) -> Iterator[None]:
    """Run the modules that `nn.Module.compile` compiled in place eagerly for a while.

    torch.jit.trace (which TensorBoard's graph needs) refuses to trace a dynamo-compiled module
    (https://github.com/pytorch/pytorch/issues/93485, closed: not supported), and the graph of the
    eager module is the same network. torch has no public switch for one module's in-place
    compilation, and no upstream issue asking for one was found: `nn.Module.compile` keeps it in
    `_compiled_call_impl` (torch/nn/modules/module.py, torch 2.14).
    """
    compiled = {m: m._compiled_call_impl for m in module.modules() if is_compiled(m)}
    for m in compiled:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in compiled.items():
            m._compiled_call_impl = impl
