"""Stand-in data sets written in torchvision's exact on-disk layout, so the real loading code runs."""

import hashlib
import os
import pickle
import struct
import sys
from pathlib import Path

import pytest
import torch
from torchvision.datasets import CIFAR10

FASHION_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An IDX file (LeCun's MNIST format) of unsigned bytes: magic, big-endian dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def standin_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 28x28 images: class k is a centred square of side 6 + 2k and brightness 110 + 16k on noise.

    Size and brightness survive the 4-pixel random crop and the flip, so a net learns them in a
    few epochs, as it learns Fashion-MNIST's shapes.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for i, k in enumerate(labels.tolist()):
        side = 6 + 2 * k
        lo = 14 - side // 2
        level = 110 + 16 * k
        images[i, lo : lo + side, lo : lo + side] = torch.randint(level - 10, level + 10, (side, side), generator=g)
    return images.to(torch.uint8), labels


def write_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = standin_images(n, seed=int(train))
        write_idx(raw / FASHION_FILES[train][0], images)
        write_idx(raw / FASHION_FILES[train][1], labels)
    return root


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    """A folder holding a stand-in FashionMNIST/raw/ (600 training, 200 test images)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def data_args(fashion_root) -> list[str]:
    """CLI arguments that point a run at the stand-in data, small enough for a test."""
    return [
        f"--data.data_dir={fashion_root}",
        "--data.download=false",
        "--data.val_size=100",
        "--data.batch_size=50",
    ]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, fashion_root) -> Path:
    """A folder in which one short fit ran: lightning_logs/version_0 with config, events and checkpoints.

    Shared by many tests: copy it before changing anything in it.
    """
    from resnet_lit.cli import ResNetCLI

    root = tmp_path_factory.mktemp("trained")
    cwd = Path.cwd()
    os.chdir(root)
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.log_every_n_steps=1", f"--data.data_dir={fashion_root}"]
    argv, sys.argv = sys.argv, ["resnet_lit"]  # before the per-test fixture that does the same
    try:
        ResNetCLI(args=[*args, "--data.download=false", "--data.val_size=100", "--data.batch_size=50"])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return root


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI would read pytest's own arguments from sys.argv otherwise."""
    monkeypatch.setattr(sys, "argv", ["resnet_lit"])


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so lightning_logs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- CIFAR-10 -----------------------------------------------------------------------------------

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def standin_rgb_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 32x32 RGB images (N, 3, 32, 32): `standin_images`' squares, tinted per class."""
    gray, labels = standin_images(n, seed)
    images = torch.nn.functional.pad(gray, (2, 2, 2, 2)).unsqueeze(1).repeat(1, 3, 1, 1)
    tint = torch.tensor([[1.0, 0.8, 0.6], [0.6, 1.0, 0.8], [0.8, 0.6, 1.0]])[labels % 3]  # (N, 3)
    return (images * tint[:, :, None, None]).to(torch.uint8), labels


def write_cifar10(root: Path, n_train: int = 600, n_test: int = 200) -> tuple[Path, dict[str, str]]:
    """cifar-10-batches-py/ as the official tarball unpacks it, and the md5 of each file.

    Each batch is a pickled dict (protocol 2, as the originals were written by Python 2) with
    `data`: (n, 3072) uint8 rows holding the red, green and blue 32x32 planes, and `labels`.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = standin_rgb_images(n_train, seed=1)
    for name, rows in zip(CIFAR_TRAIN_BATCHES, torch.arange(n_train).chunk(5), strict=True):
        _write_cifar_batch(folder / name, name, images[rows], labels[rows])
    images, labels = standin_rgb_images(n_test, seed=0)
    _write_cifar_batch(folder / "test_batch", "test_batch", images, labels)
    meta = {"num_cases_per_batch": n_train // 5, "label_names": CIFAR_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return root, md5


def _write_cifar_batch(path: Path, name: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    entry = {
        "batch_label": name,
        "labels": labels.tolist(),
        "data": images.reshape(len(images), -1).numpy(),
        "filenames": [f"standin_{i}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.fixture(scope="session")
def _cifar10_files(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def cifar10_root(_cifar10_files, monkeypatch) -> Path:
    """A folder holding a stand-in cifar-10-batches-py/ (600 training, 200 test images).

    torchvision checks every file against the md5 of the real data set (`CIFAR10._check_integrity`),
    which no stand-in can match: for the test's duration the expected checksums are the
    stand-in's own, so the check still runs (and still rejects a damaged file).
    """
    root, md5 = _cifar10_files
    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5[name]] for name in CIFAR_TRAIN_BATCHES])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root
