"""Data modules: the whole data set as one uint8 tensor in memory, transformed in batches on the device.

torchvision downloads, checksums and parses the files once (`prepare_data`); after that a
training step indexes a tensor and the DataModule's `on_after_batch_transfer` augments and
normalizes the batch where the model runs. There is no per-sample PIL work anywhere.
"""

import contextlib
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import CIFAR10, FashionMNIST, VisionDataset

from resnet_lit import compat
from resnet_lit.batches import DeviceBatches, EpochShuffler, TensorImages, augment, loader, unrepeated_sampler
from resnet_lit.errors import BadInput
from resnet_lit.idx import check_pair
from resnet_lit.transforms import normalization, normalize, resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class MissingDataError(BadInput):
    """The data set's files are not on disk and could not be downloaded."""


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
        return self._batches(self.train_set, sampler=sampler, drop_last=True, resumable=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._batches(self.val_set, sampler=self._evaluation_sampler(self.val_set))

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._batches(self.test_set, sampler=self._evaluation_sampler(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        # A DataLoader: PredictionWriter needs the batch indices, which only a DataLoader records.
        return self._batches(self.predict_set, host=True)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Tensor):
            return batch  # the model summary's example_input_array: already model input
        images, targets = batch
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # Keyed on (seed, epoch, batch, rank): a resumed run draws exactly what an uninterrupted one does.
            keys = (self._seed, trainer.current_epoch, compat.training_batch_index(trainer), trainer.global_rank)
            hp = self.hparams
            return augment(images, keys, hp.crop_padding, hp.hflip, hp.get("erasing", 0.0), self.preprocess), targets
        return self.preprocess(images), targets

    def state_dict(self) -> dict[str, int]:
        # The seed of the shuffle order and the augmentation draws: a resumed run keeps its own.
        return {"seed": self._seed} if hasattr(self, "_seed") else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "seed" in state_dict and state_dict["seed"] != self._seed:
            rank_zero_info(f"Resuming: the data order and augmentation keep the checkpoint's seed {state_dict['seed']}")
        self._seed = state_dict.get("seed", self._seed)

    # --- helpers ------------------------------------------------------------------------------

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 batch to the model's input: scaling, normalization and resize (every stage)."""
        if self.hparams.normalize:
            if images.device not in self._normalization:
                self._normalization[images.device] = normalization(self.mean, self.std, images.device)
            images = normalize(images, *self._normalization[images.device])
        else:
            images = images.float().div_(255)
        if self.hparams.resize:
            images = resize(images, self.hparams.resize)
        return images

    def _batches(
        self,
        dataset: Dataset | None,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        resumable: bool = False,
        host: bool = False,
    ) -> DataLoader | DeviceBatches:
        """Batches cut on the training device (`on_device`) where that applies, else a DataLoader.

        `resumable`: the loader records its position in the epoch for checkpoints (training).
        """
        if dataset is None:
            raise RuntimeError("the data module was not set up for this stage; call setup() first")
        trainer, hp = self.trainer, self.hparams
        single_process = trainer is None or trainer.world_size == 1
        device = None
        if hp.on_device and hp.num_workers == 0 and single_process and not host:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return loader(dataset, hp.batch_size, sampler, drop_last, resumable, device, hp.num_workers, hp.pin_memory)

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
        folders = _folders(root)
        try:
            return self._torchvision_dataset(train=train, download=download)
        except (RuntimeError, OSError) as err:  # torchvision: not found, or the download failed
            _remove_new_empty_folders(root, folders)  # a failed download leaves nothing behind
            raise MissingDataError(f"{self._missing_message()} ({' '.join(str(err).split())})") from err

    def _image_folder(self, folder: Path) -> tuple[TensorImages, list[str]]:
        if not folder.is_dir():
            raise MissingDataError(f"data.predict_dir {str(folder)!r} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingDataError(f"data.predict_dir {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        expected = (self.in_channels, self.native_size, self.native_size)
        images = []
        for path in files:
            try:
                with Image.open(path) as pil:
                    image = torch.from_numpy(_pixels(pil, self.in_channels, path))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if isinstance(err, ImageModeError):
                    raise
                raise BadInput(f"cannot read image {str(path)!r}: {err}") from err
            image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)  # (C, H, W)
            if tuple(image.shape) != expected:
                c, h, w = image.shape
                raise BadInput(
                    f"image {str(path)!r} is {w}x{h} with {c} channel(s); this model expects "
                    f"{self.native_size}x{self.native_size} with {self.in_channels} channel(s)"
                )
            images.append(image)
        targets = torch.full((len(images),), -1, dtype=torch.long)  # unknown labels
        return TensorImages(torch.stack(images), targets), [str(p) for p in files]


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
            _decompress_beside(raw / name)
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


def _decompress_beside(path: Path) -> None:
    """Write `path` from `path.gz` where only the compressed file is there (atomically: a temporary file, renamed)."""
    packed = path.with_name(path.name + ".gz")
    if path.exists() or not packed.is_file():
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        with gzip.open(packed, "rb") as source, partial.open("wb") as target:
            shutil.copyfileobj(source, target)
        partial.replace(path)
    except (OSError, EOFError) as err:  # a read-only folder, or a damaged .gz
        partial.unlink(missing_ok=True)
        raise MissingDataError(
            f"could not decompress {str(packed)!r} into {str(path)!r} ({err}): decompress it there yourself, or "
            "copy the four files to a folder you can write to and point --data.data_dir at it"
        ) from err


def _folders(root: Path) -> set[Path]:
    """`root`, its ancestors, and every folder below it, as they exist now."""
    below = {p for p in root.rglob("*") if p.is_dir()} if root.is_dir() else set()
    return below | {p for p in (root, *root.parents) if p.is_dir()}


def _remove_new_empty_folders(root: Path, before: set[Path]) -> None:
    """Remove the folders under (and up to) `root` that were made since `before` and hold nothing."""
    for folder in sorted(_folders(root) - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: keep it
            folder.rmdir()


class ImageModeError(BadInput):
    """An image whose pixels cannot be read as the grey levels or RGB values the model was trained on."""


def _pixels(image: Image.Image, channels: int, path: Path) -> np.ndarray:
    """An image's pixels as uint8 grey levels (H, W) or RGB values (H, W, 3), converted from its mode.

    A palette image ("P") becomes the colours its indices stand for (not the indices); a 1-bit
    image 0 and 255. Refused: several frames, 16-bit, 32-bit and float pixels (their scale is
    unknown), transparent pixels (their colour is undefined). A colour image for a grey model,
    or the other way round, comes back with its channels, for the caller's shape check to refuse
    (a palette image whose colours are all grey counts as grey).
    """
    name = f"image {str(path)!r}"
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageModeError(f"{name} is animated ({frames} frames): save the frame to classify as an image of its own")
    if image.mode.startswith(("I", "F")):
        raise ImageModeError(
            f"{name} holds {image.mode} pixels (16-bit, 32-bit or float), whose scale to 0..255 is unknown: "
            "save it as an 8-bit image"
        )
    palette = image.mode in ("P", "PA")
    if palette:
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("LA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            raise ImageModeError(
                f"{name} has transparent pixels, whose grey level or colour is undefined: flatten it onto a "
                "background first"
            )
        image = image.convert("L" if image.mode in ("LA", "La") else "RGB")
    if image.mode == "1":
        image = image.convert("L")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    pixels = np.array(image, dtype=np.uint8, copy=True)
    if palette and channels == 1 and pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]  # a palette of greys: the grey levels it stands for
    return pixels


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise BadInput(message)
