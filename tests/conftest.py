"""Stand-in data sets written in torchvision's exact on-disk layout, so the real loading code runs."""

import struct
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so lightning_logs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
