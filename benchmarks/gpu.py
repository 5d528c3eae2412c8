"""On a GPU: where the time of a training step goes, and how long configs/gpu/r18.yaml takes to 94% test accuracy.

    python benchmarks/gpu.py --data-dir DIR [--setups plain,fast,gpu-config] [--steps 100] [--target 0.94]
                             [--minutes 2] [--skip-accuracy]

For each setup, one after the other in one process (ResNet-18 with the small stem, as
configs/r18.yaml builds it):

- plain: none of the speed options: fp32, batches from a DataLoader in pageable host memory
  (`data.on_device: false`), NCHW, eager, `trainer.benchmark: false`; batch 128;
- fast: all of them at the same batch of 128: bf16-mixed, the data set in GPU memory, NHWC,
  `model.compile` with mode "reduce-overhead" (CUDA graphs), cuDNN's benchmark;
- gpu-config: configs/gpu/r18.yaml as it is (the fast setup at batch 512, lr scaled).

each is measured four ways:

1. Lightning as users run it (`ResNetCLI`: logger, checkpoints, the progress bar off), after
   `--warmup` steps (compilation, graph recording, cuDNN's search): images/s and ms per step over
   `--steps` steps, the clock read with the GPU synchronised at both ends only;
2. `torch.profiler` over the next `--profiled` steps (20): the fraction of the wall time in which a GPU kernel
   runs (the union of the kernels' intervals over the window), and per step the host
   synchronisations (cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize and
   synchronous cudaMemcpy calls), the `.item()` reads, host-to-device copies and kernel launches;
3. a hand-written loop with the same network, batch, precision, data on the GPU, augmentation,
   fused SGD and compile mode, timed the same way; the last column is Lightning / hand-written;
4. for gpu-config only (skip with `--skip-accuracy`): the whole schedule until the test accuracy,
   measured after every epoch with the clock stopped, reaches `--target` (or `--minutes` run out);
   the time counts everything else from the start of training (epochs, validation, checkpoints,
   logging, compilation), as `Trainer.fit` spends it.

The script refuses to run without a CUDA GPU (`--accelerator cpu` only checks that it runs, with
no GPU columns). Fashion-MNIST must be on disk (`--data-dir` holding FashionMNIST/raw/).
"""

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import check_fashion_mnist, quiet_lightning, table
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_lit.cli import ResNetCLI
from resnet_lit.data import FashionMNISTDataModule
from resnet_lit.module import ResNetClassifier
from resnet_lit.transforms import normalization, normalize, random_crop, random_hflip, seeded_generator

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "plain": [
        f"--config={ROOT / 'configs/r18.yaml'}",
        "--trainer.precision=32-true",
        "--trainer.benchmark=false",
        "--data.on_device=false",
        "--data.pin_memory=false",
        "--model.channels_last=false",
        "--model.compile=false",
    ],
    "fast": [
        f"--config={ROOT / 'configs/r18.yaml'}",
        "--trainer.precision=bf16-mixed",
        "--trainer.benchmark=true",
        "--data.on_device=true",
        "--model.channels_last=true",
        "--model.compile=true",
        "--model.compile_mode=reduce-overhead",
    ],
    "gpu-config": [f"--config={ROOT / 'configs/gpu/r18.yaml'}"],
}
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()  # the queued work belongs to the time before this point
    return time.perf_counter()


class StepClock(Callback):
    """Times steps warmup .. warmup + steps, then profiles the next `profiled`, then stops the run."""

    def __init__(self, warmup: int, steps: int, profiled: int, device: torch.device) -> None:
        self.warmup, self.steps, self.profiled, self.device = warmup, steps, profiled, device
        self.seconds: float | None = None
        self.profile: dict[str, float] | None = None
        self._profiler = None

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.warmup:
            self._start = now(self.device)
        elif step == self.warmup + self.steps:
            self.seconds = now(self.device) - self._start
            self._profiler = start_profiler(self.device)
            self._profile_start = time.perf_counter()
        elif step == self.warmup + self.steps + self.profiled:
            self.profile = stop_profiler(self._profiler, self.device, self._profile_start, self.profiled)
            trainer.should_stop = True


def start_profiler(device: torch.device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.__enter__()
    return profiler


def stop_profiler(profiler, device: torch.device, start: float, steps: int) -> dict[str, float]:
    wall = now(device) - start
    profiler.__exit__(None, None, None)
    events = profiler.events()
    kernels = sorted(
        (e.time_range.start, e.time_range.end) for e in events if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, reach = 0.0, float("-inf")
    for begin, end in kernels:  # the union of the intervals: overlapping kernels count once
        if end > reach:
            busy += end - max(begin, reach)
            reach = end
    names = [e.name for e in events]
    h2d = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA and "HtoD" in e.name)
    return {
        "busy": busy / 1e6 / wall if kernels else float("nan"),
        "syncs": sum(names.count(n) for n in SYNCS) / steps,
        "items": names.count("aten::_local_scalar_dense") / steps,
        "h2d": h2d / steps,
        "launches": sum(names.count(n) for n in LAUNCHES) / steps,
    }


def lightning_run(setup: list[str], args, root: str) -> StepClock:
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    clock = StepClock(args.warmup, args.steps, args.profiled, device)
    cli = ResNetCLI(
        args=[
            *setup,
            f"--data.data_dir={args.data_dir}",
            "--data.download=false",
            f"--trainer.accelerator={args.accelerator}",
            "--trainer.devices=1",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--insight.enabled=false",
            "--trainer.max_epochs=-1",
            f"--trainer.max_steps={args.warmup + args.steps + args.profiled + 1}",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(clock)
    with contextlib.redirect_stdout(sys.stderr):
        cli.trainer.fit(cli.model, cli.datamodule)
    clock.batch_size = cli.datamodule.hparams.batch_size
    clock.settings = (cli.model.hparams, cli.datamodule.hparams, cli.trainer.precision)
    return clock


def hand_loop(settings, args) -> float:
    """Seconds per step of a plain PyTorch loop with the same network, batch, precision, data and optimizer."""
    hp, data_hp, precision = settings
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    data = FashionMNISTDataModule(data_dir=args.data_dir, download=False, batch_size=data_hp.batch_size, seed=0)
    data.setup("fit")
    full = data.train_set.dataset
    index = torch.as_tensor(data.train_set.indices)
    images_all, targets_all = full.images[index].to(device), full.targets[index].to(device)
    model = ResNetClassifier(**{k: v for k, v in hp.items() if not k.startswith("_")}).to(device)
    net = model.net.train()
    if hp.compile:
        net.compile(dynamic=False, mode=hp.compile_mode)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, fused=True
    )
    scale, shift = normalization(data.mean, data.std, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    graphs = hp.compile and hp.compile_mode == "reduce-overhead" and device.type == "cuda"
    batch = data_hp.batch_size
    order = torch.randperm(len(images_all), device=device)

    def step(i: int) -> None:
        start = (i * batch) % (len(images_all) - batch)
        idx = order[start : start + batch]
        images, targets = images_all[idx], targets_all[idx]
        generator = seeded_generator(device, 0, 0, i, 0)
        images = random_hflip(random_crop(images, data_hp.crop_padding, generator), generator)
        images = normalize(images, scale, shift)
        if hp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = F.cross_entropy(net(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    start = now(device)
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    return (now(device) - start) / args.steps


# --- time to the target accuracy ------------------------------------------------------------------


@torch.inference_mode()
def test_accuracy(model: ResNetClassifier, data: FashionMNISTDataModule, loader, precision: str) -> float:
    """Accuracy on the official test set, without augmentation, in the run's precision."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=model.device)
    total = 0
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with autocast:
        for images, targets in loader:
            images = data.preprocess(images.to(model.device, non_blocking=True))
            correct += (model(images).argmax(dim=1) == targets.to(model.device)).sum()
            total += len(targets)
    model.train()
    return correct.item() / total


class Clock(Callback):
    """Times every epoch, measures test accuracy in between (not timed), stops at the target."""

    def __init__(self, target: float, device: torch.device) -> None:
        self.target, self.device = target, device
        self.epochs: list[dict[str, float]] = []
        self.reached: tuple[int, float] | None = None
        self._untimed = 0.0
        self._loader = None

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        self._start = now(self.device)

    def on_train_epoch_start(self, trainer: Trainer, pl_module) -> None:
        self._epoch_start = now(self.device)

    def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:
        end = now(self.device)
        elapsed = end - self._start - self._untimed
        paused = time.perf_counter()
        data = trainer.datamodule
        if self._loader is None:
            data.setup("test")
            self._loader = data.test_dataloader()
        acc = test_accuracy(pl_module, data, self._loader, trainer.precision)
        self.epochs.append({"epoch_s": end - self._epoch_start, "elapsed": elapsed, "acc": acc})
        print(
            f"  epoch {len(self.epochs)}: {end - self._epoch_start:.2f} s, {elapsed:.1f} s so far, test acc {acc:.4f}"
        )
        if acc >= self.target and self.reached is None:
            self.reached = (len(self.epochs), elapsed)
            trainer.should_stop = True
        self._untimed += now(self.device) - paused


def time_to_target(args, root: str) -> dict[str, str]:
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    clock = Clock(args.target, device)
    cli = ResNetCLI(
        args=[
            f"--config={ROOT / 'configs/gpu/r18.yaml'}",
            f"--data.data_dir={args.data_dir}",
            "--data.download=false",
            f"--trainer.accelerator={args.accelerator}",
            "--trainer.devices=1",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.max_time=00:00:{int(args.minutes):02d}:{round(args.minutes % 1 * 60):02d}",
            *(["--trainer.max_epochs=1", "--trainer.limit_train_batches=3"] if args.accelerator == "cpu" else []),
        ],
        run=False,
    )
    cli.trainer.callbacks.append(clock)
    print(f"configs/gpu/r18.yaml to {args.target:.0%} test accuracy:", flush=True)
    with contextlib.redirect_stdout(sys.stderr):
        cli.trainer.fit(cli.model, cli.datamodule)
    epochs = clock.epochs
    reached = clock.reached
    return {
        "config": "configs/gpu/r18.yaml",
        f"epochs to {args.target:.0%}": str(reached[0]) if reached else f"not in {len(epochs)}",
        f"time to {args.target:.0%} (s)": f"{reached[1]:.1f}" if reached else f"> {epochs[-1]['elapsed']:.1f}",
        "epoch 1 (s)": f"{epochs[0]['epoch_s']:.2f}",
        "epoch, median of the rest (s)": f"{statistics.median(e['epoch_s'] for e in epochs[1:]):.2f}"
        if len(epochs) > 1
        else "-",
        "best test acc": f"{max(e['acc'] for e in epochs):.4f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="holds FashionMNIST/raw/ (read only)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per setup")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the clock starts (compilation, graphs)")
    parser.add_argument("--profiled", type=int, default=20, help="profiled steps per setup, after the timed ones")
    parser.add_argument("--target", type=float, default=0.94, help="test accuracy to reach")
    parser.add_argument("--minutes", type=float, default=2.0, help="training time cap for the accuracy run")
    parser.add_argument("--skip-accuracy", action="store_true", help="leave out the time to the target")
    parser.add_argument(
        "--accelerator", default="gpu", choices=["gpu", "cpu"], help="cpu: only to check the script (no timing)"
    )
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit(
            "error: benchmarks/gpu.py needs a CUDA GPU and found none; on a CPU run benchmarks/data.py, "
            "benchmarks/framework.py and benchmarks/models.py (or this one with --accelerator cpu, to check it runs)"
        )
    names = args.setups.split(",")
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        raise SystemExit(f"error: unknown setup(s) {unknown}; choose from {list(SETUPS)}")
    check_fashion_mnist(args.data_dir)
    quiet_lightning()
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU (a check of the script, not a timing)"
    header = f"device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    print(header, flush=True)

    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as root:
            print(f"{name}: {' '.join(SETUPS[name])}", flush=True)
            clock = lightning_run(SETUPS[name], args, root)
            hand = hand_loop(clock.settings, args)
        step = clock.seconds / args.steps
        p = clock.profile
        rows.append(
            [
                name,
                str(clock.batch_size),
                f"{clock.batch_size / step:,.0f}",
                f"{step * 1000:.2f}",
                f"{p['busy']:.0%}",
                f"{p['syncs']:.2f}",
                f"{p['items']:.2f}",
                f"{p['h2d']:.2f}",
                f"{p['launches']:.0f}",
                f"{hand * 1000:.2f}",
                f"{hand / step:.2f}",
            ]
        )
        print(f"  {rows[-1]}", flush=True)

    accuracy = None
    if not args.skip_accuracy:
        with tempfile.TemporaryDirectory() as root:
            accuracy = time_to_target(args, root)

    print(header)
    print(
        f"ResNet-18 (small stem); Lightning: {args.steps} steps after {args.warmup}, then {args.profiled} "
        "profiled; per step: host syncs, .item() reads, host-to-device copies, kernel launches"
    )
    headers = ["setup", "batch", "images/s", "ms/step", "GPU busy", "syncs", "items", "H2D", "launches"]
    headers += ["hand loop ms/step", "Lightning speed / hand loop"]
    print(table(headers, rows))
    by_name = {r[0]: r for r in rows}
    if "plain" in by_name and "fast" in by_name:
        ratio = float(by_name["fast"][2].replace(",", "")) / float(by_name["plain"][2].replace(",", ""))
        print(f"fast / plain images/s at batch 128: {ratio:.2f}x")
    if accuracy is not None:
        print(table(list(accuracy), [list(accuracy.values())]))


if __name__ == "__main__":
    main()
