"""Training batches per second: our DataModule against the textbook torchvision pipeline.

    python benchmarks/data.py [--data-dir data] [--workers 0] [--on-device true]
                              [--batches 50] [--repeats 5]

Both sides deliver the same thing, batches of 128 normalized Fashion-MNIST training images with
a random 4-pixel-padded crop and a random horizontal flip per image, on the CPU:

- textbook: torchvision's `FashionMNIST` dataset with `RandomCrop(28, padding=4)`,
  `RandomHorizontalFlip()`, `ToTensor()` and `Normalize()` per sample (through PIL), batched by
  a shuffling `DataLoader`;
- resnet_lit: `FashionMNISTDataModule.train_dataloader()` with its defaults, each batch passed
  through the hooks Lightning calls on it (`on_before_batch_transfer`, the move to the device,
  `on_after_batch_transfer`, which crops, flips and normalizes the whole batch at once).

Same batch size, same number of DataLoader workers (`--workers`, our default 0). A timed run is
`--batches` batches of the textbook pipeline or a whole epoch of ours (with what an epoch costs
once: the shuffle), a few seconds each here. The two are timed in turns (`--repeats` rounds,
alternating who goes first); the table shows medians, and the ratio is the median of the
rounds' ratios (each round's two runs shared the machine's load).
"""

import sys
from pathlib import Path

import torch
from common import (
    DEFAULT_DATA_DIR,
    arguments,
    check_fashion_mnist,
    interleaved,
    machine,
    median,
    paired_ratios,
    quiet_lightning,
    set_threads,
    spread,
    table,
    timed,
)
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_lit import FashionMNISTDataModule

TARGET = 10.0  # issue 5: at least 10x the textbook pipeline's images/s on the CPU


def textbook_loader(data_dir: str, batch_size: int, workers: int) -> DataLoader:
    mean, std = FashionMNISTDataModule.train_mean, FashionMNISTDataModule.train_std
    augment = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = FashionMNIST(data_dir, train=True, download=False, transform=augment)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def our_batches(data_dir: str, workers: int, on_device: bool):
    """The DataModule's training batches, through the hooks as Lightning's training loop calls them."""
    data = FashionMNISTDataModule(data_dir=data_dir, download=False, num_workers=workers, on_device=on_device, seed=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    data.trainer = trainer
    data.setup("fit")
    loader = data.train_dataloader()
    device = trainer.strategy.root_device

    def batches():
        for batch in loader:
            batch = data.on_before_batch_transfer(batch, 0)
            batch = move_data_to_device(batch, device)
            yield data.on_after_batch_transfer(batch, 0)

    return loader, batches


def images_per_second(batches, n_batches: int, batch_size: int) -> float:
    def run() -> None:
        taken = 0
        images = None
        for images, _ in batches():  # noqa: B007 (the last batch is checked below)
            taken += 1
            if taken == n_batches:
                break
        assert taken == n_batches, f"only {taken} batches in an epoch"
        assert images.shape == (batch_size, 1, 28, 28) and images.dtype == torch.float32

    return n_batches * batch_size / timed(run)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="holds FashionMNIST/raw/ (read only)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides (ours: default 0)")
    parser.add_argument(
        "--on-device", choices=["true", "false"], default="true", help="our data.on_device (default: true, as ours)"
    )
    parser.add_argument("--batches", type=int, default=50, help="batches per timed run of the textbook pipeline")
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_lightning()
    check_fashion_mnist(args.data_dir)

    loader, ours = our_batches(args.data_dir, args.workers, args.on_device == "true")
    batch_size = loader.batch_size
    textbook = textbook_loader(args.data_dir, batch_size, args.workers)
    measures = {
        "textbook: torchvision FashionMNIST + per-sample transforms + DataLoader": lambda: images_per_second(
            lambda: iter(textbook), args.batches, batch_size
        ),
        f"resnet_lit: FashionMNISTDataModule ({type(loader).__name__}) + on_after_batch_transfer": lambda: (
            images_per_second(ours, len(loader), batch_size)
        ),
    }
    for measure in measures.values():  # warm-up: first touches of the data, lazy initialisation
        measure()
    rates = interleaved(measures, args.repeats)

    textbook_rates, our_rates = rates.values()
    ratios = paired_ratios(our_rates, textbook_rates)
    ratio = median(ratios)
    print(f"machine: {machine()}")
    print(
        f"training batches of {batch_size}, {args.workers} DataLoader worker(s); a run: {args.batches} batches "
        f"(textbook), a whole epoch of {len(loader)} (resnet_lit); median of {args.repeats} interleaved runs"
    )
    rows = [[name, f"{median(r):,.0f}", spread(r, ",.0f")] for name, r in rates.items()]
    rows.append(["ratio resnet_lit / textbook (median of the rounds' ratios)", f"{ratio:.1f}x", spread(ratios, ".1f")])
    print(table(["pipeline", "images/s", "range"], rows))
    print(
        f"ratio resnet_lit / textbook: {ratio:.1f}x (target >= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
