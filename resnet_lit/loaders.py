"""DataLoaders for runs that stop and resume, and for runs spread over several processes."""

from collections.abc import Iterator
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from resnet_lit.device_data import DeviceBatches


class ResumesMidEpoch:
    """Records how far into the epoch a training loader got, so a run stopped mid-epoch resumes at the next batch.

    Mixed into a loader class (a DataLoader, or `DeviceBatches` for data on the device) whose
    `sampler` has an `epoch`. Lightning saves a training loader's `state_dict()` in every
    checkpoint and hands it back through `load_state_dict` when it resumes from one; a plain
    loader would start the epoch over. The sampler's order is a function of (seed, epoch), so
    skipping the batches already trained on reproduces the rest of the epoch exactly. A
    checkpoint from the end of an epoch skips nothing: the resumed run starts the next epoch,
    whose number differs.
    """

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def state_dict(self) -> dict[str, Any]:
        return dict(getattr(self, "_position", {"epoch": None, "batches": 0}))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_at = dict(state_dict)

    def _batches(self) -> Iterator[Any]:
        # A generator: the epoch is read at the first batch, after Lightning's `set_epoch`.
        epoch = getattr(self.sampler, "epoch", None)
        resume, self._resume_at = getattr(self, "_resume_at", None), None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self._position = {"epoch": epoch, "batches": 0}
        for index, batch in enumerate(super().__iter__()):
            if index < skip:
                continue  # trained on before the interruption
            self._position["batches"] = index + 1
            yield batch


class ResumableLoader(ResumesMidEpoch, DataLoader):
    """A DataLoader that resumes mid-epoch (see `ResumesMidEpoch`)."""


class ResumableDeviceBatches(ResumesMidEpoch, DeviceBatches):
    """Batches cut on the device (`data.on_device`) that resume mid-epoch (see `ResumesMidEpoch`)."""


def unrepeated_sampler(dataset: Dataset, trainer: Trainer | None) -> Sampler | None:
    """For evaluation under DDP: each process takes a disjoint share, no image repeated or dropped.

    Lightning's default `DistributedSampler` pads the data set to a multiple of the number of
    processes, so some images would count twice in `val/acc` and `test/acc`; the shares here
    differ by at most one image, and torchmetrics sums the exact counts across processes.
    None on a single process (Lightning's sequential order).
    """
    if trainer is None or trainer.world_size <= 1:
        return None
    if len(dataset) < trainer.world_size:
        raise ValueError(
            f"{len(dataset)} evaluation images cannot be shared by {trainer.world_size} processes: "
            "use more images (data.val_size) or fewer devices"
        )
    rank, world_size = trainer.global_rank, trainer.world_size
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


class RestoreLoaderPosition(Callback):
    """Hands the training loader its saved position where Lightning built the loader too early to do so.

    `trainer.estimated_stepping_batches` (which the cosine and one-cycle schedules read in
    `configure_optimizers`) sets up the training data before the checkpoint is restored, and
    Lightning then never passes the loader its state: the epoch would start over. Loading the
    pending state at the start of training is what Lightning does in the usual order; where it
    already has, there is nothing pending and this does nothing.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning 2.6 restores a checkpoint written at the end of an epoch as "not restarting"
        # (the next epoch starts afresh), except when max_steps is set: then it treats the finished
        # epoch as unfinished, runs it again with no batch left and counts it, so the resumed run
        # is one epoch short and keys every later epoch's shuffle and augmentation one epoch off
        # (FitLoop.restarting and FitLoop.on_run_start test `_iteration_based_training()`). The
        # loops are restored between this hook and on_train_start: without max_steps for that
        # while, they take the same path as a run without it, which resumes exactly.
        if trainer.ckpt_path is not None and trainer.fit_loop.epoch_loop.max_steps != -1:
            self._max_steps = trainer.fit_loop.epoch_loop.max_steps
            trainer.fit_loop.epoch_loop.max_steps = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_max_steps(trainer)
        load_pending = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if load_pending is not None:
            load_pending()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_max_steps(trainer)  # where the run ended before training started

    def _restore_max_steps(self, trainer: Trainer) -> None:
        max_steps = getattr(self, "_max_steps", None)
        if max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = max_steps
            self._max_steps = None
