"""What each speed option costs and buys here: a training step with the option against one without.

    python benchmarks/options.py [--arch resnet20] [--batch 128] [--steps 3] [--repeats 5]
                                 [--variants channels_last,bf16-mixed,channels_last+bf16-mixed,compile]

A training step of `ResNetClassifier`'s network (forward, cross-entropy, backward, SGD step) on
a batch of 28x28 Fashion-MNIST-sized images, with each speed option of the model, alone and
together, against none of them (fp32, NCHW, eager):

- channels_last: weights and batch in NHWC memory format (`model.channels_last`);
- bf16-mixed: forward under `torch.autocast(bfloat16)`, as `trainer.precision: bf16-mixed` does;
- compile: `nn.Module.compile(dynamic=False)` of the network, as `model.compile` does; its
  one-off compilation shows in the first step's time and is left out of the step time.

The variants run in turns (`--repeats` rounds); each speed-up is the median of the rounds'
ratios to "none". On a GPU, benchmarks/gpu.py measures them on a real training run.
"""

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import arguments, interleaved, machine, median, paired_ratios, set_threads, spread, table, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_lit.models import build

OPTIONS = ("channels_last", "bf16-mixed", "compile")
VARIANTS = ("none", "channels_last", "bf16-mixed", "channels_last+bf16-mixed", "compile")


def make_step(variant: str, arch: str, images: torch.Tensor, targets: torch.Tensor):
    options = set(variant.split("+")) - {"none"}
    if unknown := options - set(OPTIONS):
        raise SystemExit(f"error: unknown option(s) {sorted(unknown)} in {variant!r}; options: {', '.join(OPTIONS)}")
    torch.manual_seed(0)
    net = build(arch, in_channels=1, num_classes=10).train()
    if "channels_last" in options:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if "compile" in options:
        net.compile(dynamic=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    autocast = "bf16-mixed" in options

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = F.cross_entropy(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20", help="the network, as --model.arch")
    parser.add_argument("--batch", type=int, default=128, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed run")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS[1:]),
        help="what to time against none, comma-separated; options joined by + run together",
    )
    args = parser.parse_args()
    variants = ["none", *(v for v in args.variants.split(",") if v != "none")]
    set_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 1, 28, 28)
    targets = torch.randint(0, 10, (args.batch,))

    steps, first = {}, {}
    for variant in variants:
        steps[variant] = make_step(variant, args.arch, images, targets)
        first[variant] = timed(steps[variant])  # compilation happens here, for compile
        steps[variant]()  # warm-up

    def measure(step):
        return lambda: timed(lambda: [step() for _ in range(args.steps)]) / args.steps

    times = interleaved({variant: measure(step) for variant, step in steps.items()}, args.repeats)

    print(f"machine: {machine()}")
    print(
        f"{args.arch}, batch {args.batch} x 1 x 28 x 28, training step (forward, backward, SGD), {args.steps} steps "
        f"a run, median of {args.repeats} interleaved runs"
    )
    rows = []
    for variant, t in times.items():
        ms = [x * 1000 for x in t]
        ratio = paired_ratios(times["none"], t)
        rows.append([variant, f"{first[variant]:.1f}", f"{median(ms):.0f}", spread(ms, ".0f"), f"{median(ratio):.2f}x"])
    print(table(["option", "first step (s)", "ms/step", "range", "speed-up over none"], rows))
    print(
        "speed-up over none: "
        + ", ".join(
            f"{variant} {median(paired_ratios(times['none'], times[variant])):.2f}x" for variant in variants[1:]
        )
    )


if __name__ == "__main__":
    main()
