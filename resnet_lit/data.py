"""Data modules: the whole data set as one uint8 tensor in memory, transformed in batches on the device.

torchvision downloads, checksums and parses the files once (`prepare_data`); after that a
training step indexes a tensor (`resnet_lit.batches`: the batch and its augmentation key) and the
DataModule's `on_after_batch_transfer` augments and normalizes the batch where the model runs
(`resnet_lit.transforms`). There is no per-sample PIL work anywhere. Reading files from disk (a
`predict` folder's images, the data set's compressed files) is `resnet_lit.files`'s.
"""

import os
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import CIFAR10, FashionMNIST, VisionDataset

from resnet_lit import files, transforms
from resnet_lit.batches import DeviceBatches, EpochShuffler, TensorImages, loader, unrepeated_sampler
from resnet_lit.errors import BadInput
from resnet_lit.files import MissingDataError
from resnet_lit.idx import check_pair


class InMemoryImageDataModule(LightningDataModule):
    """Shared machinery of the image data modules; subclasses name the data set and its files.

    Its init arguments are documented on `__init__` (where subclasses inherit them, and `--help` finds them).
    """

    classes: tuple[str, ...] = ()
    in_channels: int = 1
    native_size: int = 28
    train_mean: tuple[float, ...] = (0.0,)
    train_std: tuple[float, ...] = (1.0,)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        seed: int | None = None,
        crop_padding: int = 4,
        hflip: bool = True,
        erasing: float = 0.0,
        normalize: bool = True,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        resize: int | None = None,
        predict_dir: str | None = None,
        pin_memory: bool = False,
        on_device: bool = True,
    ) -> None:
        """The data set and how it is fed.

        Args:
            data_dir: folder holding the data set in torchvision's layout (e.g. `FashionMNIST/raw/`).
            download: fetch (and checksum) the files through torchvision where they are missing.
            batch_size: images per batch, for every stage.
            num_workers: DataLoader worker processes. 0 suits data held in memory: a batch is one
                tensor index, which workers would only wrap in inter-process copies.
            val_size: images held out of the official training set for validation.
            split_seed: seed of the train/val split; fixed, so runs with different seeds compare
                on the same validation images.
            seed: seed of the shuffle order and the augmentation draws; None follows the global
                seed (`seed_everything`, which LightningCLI sets).
            crop_padding: random-crop augmentation: pixels of zero padding on each side (0: off).
            hflip: random horizontal flip augmentation.
            erasing: Random Erasing augmentation (Zhong et al. 2020): the probability that a training
                image gets a random rectangle set to the mean (`resnet_lit.transforms.random_erasing`); 0: off.
            normalize: subtract `mean` and divide by `std` (per channel, on [0, 1] pixels);
                False only scales to [0, 1].
            mean: per-channel mean; None: the training set's.
            std: per-channel standard deviation; None: the training set's.
            resize: resize every batch to `resize` x `resize` on the device (None: native size).
            predict_dir: a folder of images to classify with `predict`; None: the test set.
            pin_memory: page-locked host batches, for faster, non-blocking copies to a GPU (where
                the batches come from a DataLoader; see `on_device`).
            on_device: copy the data set to the training device once and cut the training,
                validation and test batches there (`resnet_lit.batches`): no host work per
                batch, and the same batches as a DataLoader's. A DataLoader is used instead with
                `num_workers` > 0, in multi-process runs (where Lightning's distributed sampler
                shards the data) and for `predict`.
        """
        super().__init__()
        _check(batch_size > 0, f"data.batch_size must be positive, got {batch_size}")
        _check(val_size > 0, f"data.val_size must be positive, got {val_size}")
        _check(num_workers >= 0, f"data.num_workers must be 0 or more, got {num_workers}")
        cores = os.cpu_count() or 1
        _check(
            num_workers <= 4 * cores,
            f"data.num_workers {num_workers} is more than 4 a core here ({cores} cores); each worker is a process",
        )
        _check(resize is None or 0 < resize <= 4096, f"data.resize must be from 1 to 4096 pixels, got {resize}")
        side = resize or self.native_size
        _check(
            0 <= crop_padding <= side,
            f"data.crop_padding must be from 0 to the image's side ({side} pixels), got {crop_padding}",
        )
        _check(0 <= erasing <= 1, f"data.erasing is a probability, in [0, 1], got {erasing}")
        for name, stats in (("mean", mean), ("std", std)):
            _check(
                stats is None or len(stats) == self.in_channels,
                f"data.{name} needs {self.in_channels} value(s), one per channel, got {stats}",
            )
        _check(std is None or all(s > 0 for s in std), f"data.std must be positive, got {std}")
        self.save_hyperparameters()
        self.mean = tuple(mean) if mean is not None else self.train_mean
        self.std = tuple(std) if std is not None else self.train_std
        self._normalization: dict[torch.device, tuple[Tensor, Tensor]] = {}  # per device: made once
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None
        self.predict_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Height and width of the batches the model sees."""
        return self.hparams.resize or self.native_size

    # --- what a subclass provides -------------------------------------------------------------

    def _torchvision_dataset(self, train: bool, download: bool) -> VisionDataset:
        raise NotImplementedError

    def _tensors(self, dataset: VisionDataset) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) uint8 images and (N,) int64 targets of a torchvision data set."""
        raise NotImplementedError

    def _missing_message(self) -> str:
        raise NotImplementedError

    # --- Lightning hooks ----------------------------------------------------------------------

    def prepare_data(self) -> None:
        data_dir = Path(self.hparams.data_dir)
        _check(
            not data_dir.is_file(), f"data.data_dir {str(data_dir)!r} is a file: give the folder that holds the data"
        )
        for train in (True, False):
            dataset = self._load(train, download=self.hparams.download)
            stage = self.trainer.state.fn if self.trainer is not None else None
            if train and stage in (TrainerFn.FITTING, TrainerFn.VALIDATING):
                # Here, before the run's log folder exists.
                self._check_val_size(len(dataset), training=stage == TrainerFn.FITTING)
        if self.hparams.predict_dir is not None and self.trainer is not None and self.trainer.predicting:
            self._image_folder(Path(self.hparams.predict_dir))  # refuse bad images before a log folder exists

    def setup(self, stage: str) -> None:
        self._seed = self.hparams.seed if self.hparams.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage in ("fit", "validate") and self.train_set is None:
            full = TensorImages(*self._tensors(self._load(train=True, download=False)))
            val_size = self.hparams.val_size
            self._check_val_size(len(full))
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.hparams.split_seed))
            self.train_set = Subset(full, order[val_size:].tolist())
            self.val_set = Subset(full, order[:val_size].tolist())
        if stage == "test" and self.test_set is None:
            self.test_set = TensorImages(*self._tensors(self._load(train=False, download=False)))
        if stage == "predict" and self.predict_set is None:
            if self.hparams.predict_dir is None:
                self.predict_set = TensorImages(*self._tensors(self._load(train=False, download=False)))
                self.predict_names = [f"test/{i}" for i in range(len(self.predict_set))]
            else:
                self.predict_set, self.predict_names = self._image_folder(Path(self.hparams.predict_dir))

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        # drop_last: every step sees a full batch, as the paper's iterations do; the few images
        # left out change every epoch with the shuffle.
        sampler = EpochShuffler(self.train_set, self._seed)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Each batch comes with its augmentation key (seed, epoch, batch, rank), so a resumed run
        # draws exactly what an uninterrupted one does (resnet_lit.batches.TrainingBatches).
        return self._batches(self.train_set, sampler=sampler, drop_last=True, training=(self._seed, rank))

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._batches(self.val_set, sampler=self._evaluation_sampler(self.val_set))

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._batches(self.test_set, sampler=self._evaluation_sampler(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        # A DataLoader: PredictionWriter needs the batch indices, which only a DataLoader records.
        return self._batches(self.predict_set, host=True)

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Tensor):
            return batch  # the model summary's example_input_array: already model input
        # A training batch carries its augmentation key (resnet_lit.batches); validation, test and
        # predict batches have none. The step gets (images, targets) either way.
        images, targets, *keyed = batch
        hp = self.hparams
        normalization = self._normalization_on(images.device)
        if not keyed:
            return transforms.preprocess(images, normalization, hp.resize), targets
        [key] = keyed
        erasing = hp.get("erasing", 0.0)  # absent from checkpoints older than the option
        return transforms.augment(images, key, hp.crop_padding, hp.hflip, erasing, normalization, hp.resize), targets

    def state_dict(self) -> dict[str, int]:
        # The seed of the shuffle order and the augmentation draws: a resumed run keeps its own.
        return {"seed": self._seed} if hasattr(self, "_seed") else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "seed" in state_dict and state_dict["seed"] != self._seed:
            rank_zero_info(f"Resuming: the data order and augmentation keep the checkpoint's seed {state_dict['seed']}")
        self._seed = state_dict.get("seed", self._seed)

    # --- helpers ------------------------------------------------------------------------------

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 batch to the model's input: scaling, normalization and resize (every stage, no augmentation)."""
        return transforms.preprocess(images, self._normalization_on(images.device), self.hparams.resize)

    def _normalization_on(self, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """The normalization's (scale, shift) on `device`, made once per device; None without `normalize`."""
        if not self.hparams.normalize:
            return None
        if device not in self._normalization:
            self._normalization[device] = transforms.normalization(self.mean, self.std, device)
        return self._normalization[device]

    def _batches(
        self,
        dataset: Dataset | None,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        training: tuple[int, int] | None = None,
        host: bool = False,
    ) -> DataLoader | DeviceBatches:
        """Batches cut on the training device (`on_device`) where that applies, else a DataLoader.

        `training`: (seed, rank) of a training loader, which keys its batches and records its position
        in the epoch for checkpoints (`resnet_lit.batches.loader`).
        """
        if dataset is None:
            raise RuntimeError("the data module was not set up for this stage; call setup() first")
        trainer, hp = self.trainer, self.hparams
        single_process = trainer is None or trainer.world_size == 1
        device = None
        if hp.on_device and hp.num_workers == 0 and single_process and not host:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return loader(dataset, hp.batch_size, sampler, drop_last, training, device, hp.num_workers, hp.pin_memory)

    def _evaluation_sampler(self, dataset: Dataset | None) -> Sampler | None:
        trainer = self.trainer
        return unrepeated_sampler(dataset, trainer.world_size, trainer.global_rank) if trainer is not None else None

    def _check_val_size(self, n_train: int, training: bool = False) -> None:
        val_size, batch_size = self.hparams.val_size, self.hparams.batch_size
        _check(val_size < n_train, f"data.val_size must be smaller than the {n_train} training images, got {val_size}")
        _check(
            not training or n_train - val_size >= batch_size,
            f"data.batch_size {batch_size} is more than the {n_train - val_size} training images left after "
            f"data.val_size {val_size}: not one full batch to train on (a partial last batch is dropped); "
            "lower data.batch_size or data.val_size",
        )

    def _load(self, train: bool, download: bool) -> VisionDataset:
        root = Path(self.hparams.data_dir)
        before = files.folders(root)
        try:
            return self._torchvision_dataset(train=train, download=download)
        except (RuntimeError, OSError) as err:  # torchvision: not found, or the download failed
            files.remove_new_empty_folders(root, before)  # a failed download leaves nothing behind
            raise MissingDataError(f"{self._missing_message()} ({' '.join(str(err).split())})") from err

    def _image_folder(self, folder: Path) -> tuple[TensorImages, list[str]]:
        images, names = files.read_images(folder, self.in_channels, self.native_size)
        targets = torch.full((len(images),), -1, dtype=torch.long)  # unknown labels
        return TensorImages(images, targets), names


class FashionMNISTDataModule(InMemoryImageDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 60k training and 10k test images, 28x28 grayscale, 10 classes.

    The official training set is split into `60000 - val_size` training and `val_size`
    validation images; the official test set is the test set.
    """

    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    in_channels = 1
    native_size = 28
    # Training-set pixel statistics (all 60k images, pixels / 255).
    train_mean = (0.2860,)
    train_std = (0.3530,)
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def _torchvision_dataset(self, train: bool, download: bool) -> VisionDataset:
        raw = Path(self.hparams.data_dir) / "FashionMNIST" / "raw"
        images, labels = (raw / name for name in (self.files[:2] if train else self.files[2:]))
        for name in self.files:  # torchvision wants all four, decompressed, and decompresses only when it downloads
            files.decompress_beside(raw / name)
        if images.is_file() and labels.is_file():
            check_pair(images, labels, self.native_size, self.num_classes)
        return FashionMNIST(self.hparams.data_dir, train=train, download=download)

    def _tensors(self, dataset: FashionMNIST) -> tuple[Tensor, Tensor]:
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()

    def _missing_message(self) -> str:
        folder = Path(self.hparams.data_dir) / "FashionMNIST" / "raw"
        how = "it could not be downloaded" if self.hparams.download else "data.download is false"
        return (
            f"Fashion-MNIST is not in {str(folder)!r} and {how}: put the four files "
            f"{', '.join(self.files)} (or their .gz) there, or point --data.data_dir at the folder "
            "that holds FashionMNIST/raw/, or allow the download with --data.download true on a "
            "machine with internet access"
        )


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50k training and 10k test images, 32x32 RGB, 10 classes.

    The paper's own data set for its depth study (He et al. 2016, Sec. 4.2): the default
    `val_size=5000` is its 45k/5k train/val split; the official test set is the test set.
    """

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    in_channels = 3
    native_size = 32
    # Training-set pixel statistics (all 50k images, pixels / 255, per channel).
    # Deviation: the paper subtracts the per-pixel mean image and does not divide by a std.
    train_mean = (0.4914, 0.4822, 0.4465)
    train_std = (0.2470, 0.2435, 0.2616)
    folder = CIFAR10.base_folder  # cifar-10-batches-py
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

    def _torchvision_dataset(self, train: bool, download: bool) -> VisionDataset:
        return CIFAR10(self.hparams.data_dir, train=train, download=download)

    def _tensors(self, dataset: CIFAR10) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return images, torch.tensor(dataset.targets, dtype=torch.long)

    def _missing_message(self) -> str:
        root = str(self.hparams.data_dir)
        folder = str(Path(root) / self.folder)
        how = "it could not be downloaded" if self.hparams.download else "data.download is false"
        return (
            f"CIFAR-10 is not in {folder!r} (or a file there fails torchvision's md5 check) and {how}: "
            f"extract {CIFAR10.filename} into {root!r} (it unpacks to {self.folder}/ with "
            f"{', '.join(self.files)}), or put {CIFAR10.filename} itself there and run with "
            "--data.download true (a verified tarball is extracted without internet), or point "
            f"--data.data_dir at the folder that holds {self.folder}/"
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise BadInput(message)
