"""Batches cut from a data set that lives in the training device's memory (`data.on_device`).

Fashion-MNIST's 60k images are 47 MB of uint8, CIFAR-10's 150 MB: either fits on any GPU many
times over. Copied there once, an epoch needs no host work per batch: no sampler yielding Python
ints, no collation, no pinned staging buffer, no host-to-device copy. A batch is one index (or
slice) into tensors that are already where the model runs.

How this sits in Lightning's loop: a `DeviceBatches` is an iterable with a length, which
Lightning accepts wherever it accepts a DataLoader. `batch_to_device` then finds the batch on its
device already, and `Tensor.to` returns it as it is; `on_after_batch_transfer` augments and
normalizes it as it does any batch. Lightning calls `set_epoch` on a loader's `sampler` at the
start of every epoch, so the shuffle order comes from the very sampler the DataLoader would use,
and the batches are the same ones, in the same order, as with `data.on_device: false`.
"""

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, Subset


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
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
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
