"""From in-memory tensors to an epoch of batches: the one module a batch passes through on its way to the step.

The data modules (`resnet_lit.data`) hold a data set as one uint8 tensor of images and one of
targets. Here:

- `TensorImages` serves whole batches with one index (a DataLoader's `__getitems__`), and
  `EpochShuffler` orders an epoch as a function of (seed, epoch) alone;
- `loader` builds an epoch's batches either on the training device itself (`DeviceBatches`, with
  `data.on_device`: no host work per batch) or from a DataLoader, and for training one that hands
  out each batch with its augmentation key and records its position, so a run stopped mid-epoch
  resumes at the next batch (`TrainingBatches`);
- `unrepeated_sampler` gives each process of a DDP run a disjoint share of the evaluation
  images, so each is counted exactly once.

A training batch is (images, targets, key); every other batch is (images, targets). The data
modules' `on_after_batch_transfer` augments a batch that has a key (`resnet_lit.transforms.augment`,
seeded with it), preprocesses one that has none, and hands the step (images, targets).

How `DeviceBatches` sits in Lightning's loop: it is an iterable with a length, which Lightning
accepts wherever it accepts a DataLoader. `batch_to_device` finds the batch on its device
already; `on_after_batch_transfer` augments and normalizes it as any batch. Lightning calls
`set_epoch` on a loader's `sampler` every epoch, so the shuffle comes from the very sampler a
DataLoader would use: the batches are the same, in the same order, with `data.on_device: false`.
Fashion-MNIST's 60k images are 47 MB of uint8 and CIFAR-10's 150 MB: either fits on any GPU.
"""

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from resnet_lit.compat import UnrepeatedDistributedSampler
from resnet_lit.errors import BadInput
from resnet_lit.transforms import seeded_generator


class TensorImages(Dataset):
    """Images (N, C, H, W) uint8 and targets (N,) int64, fetched a whole batch per index call.

    `__getitems__` lets a DataLoader take a batch with one tensor index instead of stacking
    `batch_size` single samples; its `collate_fn` must then pass the batch through unchanged.
    """

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        if len(images) != len(targets):
            raise BadInput(f"{len(images)} images but {len(targets)} labels: the data files disagree")
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.targets[index]


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn for `TensorImages.__getitems__`, whose batches are already stacked."""
    return batch


class EpochShuffler(RandomSampler):
    """A random order that is a function of (seed, epoch) only, so a resumed run repeats it.

    Lightning calls `set_epoch` at the start of every epoch. It is a `RandomSampler`, so under
    DDP Lightning replaces it with a `DistributedSampler(shuffle=True, seed=<global seed>)`,
    which is deterministic in the same way.
    """

    def __init__(self, data_source: Sequence, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = seeded_generator(torch.device("cpu"), self.seed, self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class DeviceBatches:
    """Batches of `images` and `targets`, in the order of `sampler` (None: in order).

    Args:
        images: (N, C, H, W), on the device the batches are for.
        targets: (N,), on the same device.
        batch_size: images per batch.
        sampler: yields the positions 0..N-1 in the order of one epoch; `set_epoch` is called
            on it by Lightning (as on a DataLoader's `sampler`).
        drop_last: leave out the last, partial batch.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(images) != len(targets):
            raise BadInput(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.batch_size = batch_size
        self.sampler = sampler
        self.batch_sampler = None  # as a DataLoader with a `sampler`; Lightning looks at both
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        size = self.batch_size
        if self.sampler is None:
            for start in range(0, len(self) * size, size):
                yield self.images[start : start + size], self.targets[start : start + size]
            return
        # One small host-to-device copy per epoch (the order), none per batch.
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device, non_blocking=True)
        for start in range(0, len(self) * size, size):
            index = order[start : start + size]
            yield self.images[index], self.targets[index]


def to_device(dataset: Dataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """The images and targets of an in-memory data set (or a `Subset` of one), copied to `device`.

    Args:
        dataset: has `images` and `targets` tensors (the data modules' `TensorImages`), or is a
            `Subset` of such a data set.
        device: where the copies go.
    """
    if isinstance(dataset, Subset):
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        images, targets = dataset.dataset.images[index], dataset.dataset.targets[index]
    else:
        images, targets = dataset.images, dataset.targets
    return images.to(device), targets.to(device)


class TrainingBatches:
    """A training loader: each batch comes with its augmentation key, and a stopped run resumes at the next batch.

    Mixed into a loader class (a DataLoader, or `DeviceBatches` for data on the device) whose
    `sampler` has an `epoch`: `EpochShuffler`, or the `DistributedSampler` Lightning puts in its
    place under DDP.

    - The key: each batch is yielded as (images, targets, key), key = (seed, epoch, batch, rank):
      the data module's seed, the sampler's epoch (the one its order is keyed on), the batch's index
      in the epoch and the process's rank. `on_after_batch_transfer` seeds the batch's augmentation
      with it, so a resumed run draws exactly what an uninterrupted one does. Where the sampler has
      no epoch (Lightning's `overfit_batches` puts a `SequentialSampler` in its place: the same
      batches every epoch), the epoch is 0.
    - The position: Lightning saves a training loader's `state_dict()` in every checkpoint and
      hands it back through `load_state_dict` when it resumes from one; a plain loader would start
      the epoch over. The sampler's order is a function of (seed, epoch), so skipping the batches
      already trained on reproduces the rest of the epoch exactly. A checkpoint from the end of an
      epoch skips nothing: the resumed run starts the next epoch, whose number differs.

    Args (besides the loader's own):
        seed: the first element of every key (the data module's seed).
        rank: the last element of every key (the process's global rank).
    """

    def __init__(self, *args: Any, seed: int = 0, rank: int = 0, **kwargs: Any) -> None:
        # Keyword arguments: Lightning rebuilds a DataLoader from the arguments it was made with
        # (to put a DistributedSampler in under DDP), so the seed and rank survive that.
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.rank = rank

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, tuple[int, int, int, int]]]:
        return self._batches()

    def state_dict(self) -> dict[str, Any]:
        return dict(getattr(self, "_position", {"epoch": None, "batches": 0}))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_at = dict(state_dict)

    def _batches(self) -> Iterator[tuple[Tensor, Tensor, tuple[int, int, int, int]]]:
        # A generator: the epoch is read at the first batch, after Lightning's `set_epoch`.
        epoch = getattr(self.sampler, "epoch", None)
        resume, self._resume_at = getattr(self, "_resume_at", None), None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self._position = {"epoch": epoch, "batches": 0}
        for index, (images, targets) in enumerate(super().__iter__()):
            if index < skip:
                continue  # trained on before the interruption
            # The exact mid-epoch resume relies on Lightning not fetching ahead: its
            # `_PrefetchDataFetcher` prefetches nothing from a loader with a length (both loaders
            # have one), so when a checkpoint is written the batches yielded here are exactly the
            # ones trained on, and the position saved is the next batch's. A batch fetched ahead
            # would be counted, and skipped untrained by the resumed run.
            self._position["batches"] = index + 1
            yield images, targets, (self.seed, 0 if epoch is None else epoch, index, self.rank)


class ResumableLoader(TrainingBatches, DataLoader):
    """A DataLoader for training: keyed batches, resumes mid-epoch (see `TrainingBatches`)."""


class ResumableDeviceBatches(TrainingBatches, DeviceBatches):
    """Batches cut on the device (`data.on_device`) for training: keyed, resume mid-epoch (see `TrainingBatches`)."""


def unrepeated_sampler(dataset: Dataset, world_size: int, rank: int) -> Sampler | None:
    """For evaluation under DDP: each process takes a disjoint share, no image repeated or dropped.

    Lightning's default `DistributedSampler` pads the data set to a multiple of the number of
    processes, so some images would count twice in `val/acc` and `test/acc`; the shares here
    differ by at most one image, and torchmetrics sums the exact counts across processes.
    None on a single process (Lightning's sequential order).
    """
    if world_size <= 1:
        return None
    if len(dataset) < world_size:
        raise BadInput(
            f"{len(dataset)} evaluation images cannot be shared by {world_size} processes: "
            "use more images (data.val_size) or fewer devices"
        )
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


def loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    training: tuple[int, int] | None = None,
    device: torch.device | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader | DeviceBatches:
    """An epoch's batches of an in-memory data set (`TensorImages`, or a `Subset` of one).

    Args:
        sampler: the order of an epoch (None: in order).
        drop_last: leave out the last, partial batch.
        training: (seed, rank) for a training loader, whose batches come with their augmentation
            keys and which records its position in the epoch for checkpoints (`TrainingBatches`);
            None: plain (images, targets) batches.
        device: cut the batches on this device, from a copy of the data set made there
            (`DeviceBatches`); None: a DataLoader on the host.
        num_workers, pin_memory: the DataLoader's.
    """
    keys = {} if training is None else {"seed": training[0], "rank": training[1]}
    if device is not None:
        batches = DeviceBatches if training is None else ResumableDeviceBatches
        return batches(*to_device(dataset, device), batch_size, sampler, drop_last, **keys)
    return (DataLoader if training is None else ResumableLoader)(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=keep_batch,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        **keys,
    )
