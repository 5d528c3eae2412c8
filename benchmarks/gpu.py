"""On a GPU: time per epoch and time to 94% test accuracy of configs/r18.yaml, without and with the speed options.

    python benchmarks/gpu.py [--data-dir data] [--target 0.94] [--minutes 3.5]
                             [--config configs/r18.yaml] [--epochs N] [--setups plain,fast]

Trains ResNet-18 (configs/r18.yaml: small stem, SGD, batch 128, cosine decay over the config's
30 epochs, crop + flip) on Fashion-MNIST twice, one setup after the other:

- plain: none of the speed options: fp32 (`trainer.precision: 32-true`), batches from a
  DataLoader in pageable memory (`data.on_device: false`, `data.pin_memory: false`), NCHW,
  eager, `trainer.benchmark: false`;
- fast: all of them: `trainer.precision: bf16-mixed`, the data set held on the GPU
  (`data.on_device: true`), `model.channels_last: true`, `model.compile: true`,
  `trainer.benchmark: true` (cuDNN picks its fastest kernels for the fixed shapes).

After every epoch the test set's accuracy is measured with the clock stopped; a setup stops
when it reaches `--target`, or once its training has run `--minutes` (then it says so). The
time to the target counts everything else from the start of training: the epochs, Lightning's
validation of every epoch, checkpointing, TensorBoard logging and, for the fast setup, the
compilation during the first steps. Images/s counts training images over the training part of
an epoch (validation left out), median of the epochs after the first.

The script refuses to run without a CUDA GPU. Fashion-MNIST must be on disk (`--data-dir`
holding FashionMNIST/raw/): the GPU machines here have no internet.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import check_fashion_mnist, quiet_lightning, table
from lightning.pytorch import Callback, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_lit import FashionMNISTDataModule, ResNetClassifier

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "r18.yaml"  # --config
SETUPS = {
    "plain": {
        "trainer": {"precision": "32-true", "benchmark": False},
        "data": {"on_device": False, "pin_memory": False},
        "model": {"channels_last": False, "compile": False},
    },
    "fast": {
        "trainer": {"precision": "bf16-mixed", "benchmark": True},
        "data": {"on_device": True},
        "model": {"channels_last": True, "compile": True},
    },
}


def now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the GPU's queued work belongs to the time before this point
    return time.perf_counter()


@torch.inference_mode()  # as Lightning's validation, so a compiled net reuses its evaluation graph
def test_accuracy(trainer: Trainer, model: ResNetClassifier, data: FashionMNISTDataModule, loader) -> float:
    """Accuracy on the official test set, in the setup's precision, without augmentation."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=model.device)
    total = 0
    with trainer.precision_plugin.forward_context():
        for images, targets in loader:
            images = data.preprocess(images.to(model.device, non_blocking=True))
            targets = targets.to(model.device, non_blocking=True)
            correct += (model(images).argmax(dim=1) == targets).sum()
            total += len(targets)
    model.train()
    return correct.item() / total


class Clock(Callback):
    """Times every epoch, measures test accuracy in between (not timed), stops at the target."""

    def __init__(self, name: str, target: float, data: FashionMNISTDataModule) -> None:
        self.name = name
        self.target = target
        self.data = data
        self.epochs: list[dict[str, float]] = []
        self.reached: tuple[int, float] | None = None
        self._untimed = 0.0
        self._test_loader = None

    def on_train_start(self, trainer: Trainer, pl_module: ResNetClassifier) -> None:
        self._start = now()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: ResNetClassifier) -> None:
        self._epoch_start = now()
        self._val_start = None
        self._batches = 0

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        self._batches += 1

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: ResNetClassifier) -> None:
        if not trainer.sanity_checking and self._val_start is None:
            self._val_start = now()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: ResNetClassifier) -> None:
        end = now()
        train_s = (self._val_start or end) - self._epoch_start
        elapsed = end - self._start - self._untimed
        paused = time.perf_counter()
        if self._test_loader is None:
            self.data.setup("test")
            self._test_loader = self.data.test_dataloader()
        acc = test_accuracy(trainer, pl_module, self.data, self._test_loader)
        epoch = len(self.epochs) + 1
        images = self._batches * self.data.hparams.batch_size
        whole = self._batches == trainer.num_training_batches  # not cut short by --minutes
        self.epochs.append(
            {"train_s": train_s, "epoch_s": end - self._epoch_start, "elapsed": elapsed, "acc": acc, "whole": whole}
        )
        self.epochs[-1]["images_per_s"] = images / train_s
        print(
            f"  {self.name} epoch {epoch}{'' if whole else ' (cut short)'}: {end - self._epoch_start:.2f} s "
            f"({train_s:.2f} s training, {images / train_s:,.0f} images/s), {elapsed:.1f} s so far, "
            f"test acc {acc:.4f}",
            flush=True,
        )
        if acc >= self.target and self.reached is None:
            self.reached = (epoch, elapsed)
            trainer.should_stop = True
        self._untimed += now() - paused


def schedule_length(epochs: int | None) -> dict:
    """Trainer settings for `--epochs`: the schedule's length, in place of the config's."""
    return {} if epochs is None else {"max_epochs": epochs, "max_steps": -1}


def run(name: str, options: dict, args) -> dict[str, str]:
    config = yaml.safe_load(Path(args.config).read_text())
    seed_everything(config["seed_everything"], verbose=False)
    data = FashionMNISTDataModule(
        **{**config["data"]["init_args"], "data_dir": args.data_dir, "download": False, **options["data"]}
    )
    links = {"in_channels": data.in_channels, "num_classes": data.num_classes, "image_size": data.image_size}
    model = ResNetClassifier(**{**config["model"], **links, **options["model"]})
    clock = Clock(name, args.target, data)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            **{**config["trainer"], **schedule_length(args.epochs), **options["trainer"]},
            accelerator=args.accelerator,
            devices=1,
            max_time={"seconds": round(args.minutes * 60)},
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        print(f"{name}: {options}", flush=True)
        trainer.fit(model, data)

    epochs = clock.epochs
    if not epochs:
        raise SystemExit(f"error: {name} finished no epoch in {args.minutes} min; raise --minutes")
    # The first epoch holds the one-off costs (compilation, cuDNN's search); the rest show the pace.
    later = [e for e in epochs[1:] if e["whole"]] or [e for e in epochs if e["whole"]]
    epoch_s = f"{statistics.median(e['epoch_s'] for e in later):.2f}" if later else "-"
    images_per_s = f"{statistics.median(e['images_per_s'] for e in later):,.0f}" if later else "-"
    if clock.reached:
        epochs_to, time_to = str(clock.reached[0]), f"{clock.reached[1]:.1f}"
    else:
        epochs_to, time_to = f"not in {len(epochs)}", f"> {epochs[-1]['elapsed']:.1f}"
    return {
        "setup": name,
        "epoch 1 (s)": f"{epochs[0]['epoch_s']:.2f}",
        "epoch, median of the rest (s)": epoch_s,
        "train images/s": images_per_s,
        f"epochs to {args.target:.0%}": epochs_to,
        f"time to {args.target:.0%} (s)": time_to,
        "best test acc": f"{max(e['acc'] for e in epochs):.4f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="holds FashionMNIST/raw/ (read only)")
    parser.add_argument("--target", type=float, default=0.94, help="test accuracy to reach")
    parser.add_argument("--minutes", type=float, default=3.5, help="training time cap per setup")
    parser.add_argument("--config", default=str(CONFIG), help="the experiment, a config of configs/")
    parser.add_argument("--epochs", type=int, default=None, help="the schedule's length (default: the config's)")
    parser.add_argument("--setups", default=",".join(SETUPS), help="which setups to run, comma-separated")
    parser.add_argument(
        "--accelerator", default="gpu", choices=["gpu", "cpu"], help="cpu: only to check the script (slow, no timing)"
    )
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit(
            "error: benchmarks/gpu.py needs a CUDA GPU and found none; on a CPU run benchmarks/data.py, "
            "benchmarks/framework.py and benchmarks/models.py"
        )
    check_fashion_mnist(args.data_dir)
    quiet_lightning()
    names = args.setups.split(",")
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        raise SystemExit(f"error: unknown setup(s) {unknown}; choose from {list(SETUPS)}")

    config = yaml.safe_load(Path(args.config).read_text())
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU (a check of the script, not a timing)"
    print(f"device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows = [run(name, SETUPS[name], args) for name in names]
    print(f"device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(
        f"{args.config}: {config['model']['arch']}, trainer {config['trainer'] | schedule_length(args.epochs)}; "
        f"stop at {args.target:.0%} test accuracy or after {args.minutes} min of training"
    )
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    key = "epoch, median of the rest (s)"
    if len(rows) == 2 and "-" not in (rows[0][key], rows[1][key]):
        ratio = float(rows[0][key]) / float(rows[1][key])
        print(f"epoch time ratio {rows[0]['setup']} / {rows[1]['setup']}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
