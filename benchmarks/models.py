"""Forward + backward: our resnet18 and resnet50 against torchvision's, on the same input.

    python benchmarks/models.py [--batch 4] [--size 112] [--steps 2] [--repeats 9]

Ours is built to be the very network torchvision builds: ImageNet stem, shortcut B, 3 input
channels, 1000 classes, and for resnet50 the stride in the 3x3 conv (`stride_in_1x1=False`,
torchvision's "v1.5"; the paper's 1x1 stride, our default, is a different and cheaper net). To
prove it, ours is loaded with torchvision's weights and must give the same outputs before any
timing. A step is forward, cross-entropy, backward; the two sides run in turns (`--repeats`
rounds, alternating who goes first). The table shows medians; the ratio is the median of the
rounds' ratios (each round's two runs shared the machine's load).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from common import arguments, interleaved, machine, median, paired_ratios, set_threads, spread, table, timed
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_lit.models import build

ARCHS = {
    "resnet18": {},
    "resnet50": {"stride_in_1x1": False},  # torchvision's v1.5 bottleneck
}
TOLERANCE = 0.05  # "no slower": the median ratio within 5% of 1.0 or better


def pair(arch: str) -> tuple[nn.Module, nn.Module]:
    reference = getattr(torchvision.models, arch)()
    ours = build(arch, in_channels=3, num_classes=1000, stem="imagenet", shortcut="B", **ARCHS[arch])
    ours.load_state_dict(reference.state_dict())  # strict: the same tensors under the same names
    return ours, reference


def check_same_function(ours: nn.Module, reference: nn.Module, images: torch.Tensor) -> None:
    ours.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(images[:2]), reference(images[:2]), rtol=1e-4, atol=1e-4)
    ours.train(), reference.train()


def step_time(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int) -> float:
    def run() -> None:
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(images), targets).backward()

    return timed(run) / steps


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed run")
    parser.set_defaults(repeats=9)
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 1000, (args.batch,))

    times: dict[str, dict[str, list[float]]] = {}
    for arch in ARCHS:
        ours, reference = pair(arch)
        check_same_function(ours, reference, images)
        measures = {
            "torchvision": lambda net=reference: step_time(net, images, targets, args.steps),
            "resnet_lit": lambda net=ours: step_time(net, images, targets, args.steps),
        }
        for measure in measures.values():  # warm-up: allocator, kernels' first calls
            measure()
        times[arch] = interleaved(measures, args.repeats)

    print(f"machine: {machine()}")
    print(
        f"forward + backward of a batch of {args.batch} x 3 x {args.size} x {args.size}, {args.steps} steps a run, "
        f"median of {args.repeats} interleaved runs; same weights, outputs checked equal"
    )
    rows, ratios = [], []
    for arch, by_side in times.items():
        ratio = paired_ratios(by_side["torchvision"], by_side["resnet_lit"])
        ratios.append(median(ratio))
        for side, t in by_side.items():
            ms = [x * 1000 for x in t]
            rows.append([arch, side, f"{median(ms):.0f}", spread(ms, ".0f"), f"{args.batch / median(t):.1f}"])
        rows.append([arch, "time ratio torchvision / resnet_lit", f"{median(ratio):.3f}", spread(ratio, ".3f"), ""])
    print(table(["net", "implementation", "ms/step", "range", "images/s"], rows))
    worst = min(ratios)
    verdict = "met" if worst >= 1 - TOLERANCE else "MISSED"
    print(
        "time ratio torchvision / resnet_lit (> 1: ours faster): "
        + ", ".join(f"{arch} {r:.3f}" for arch, r in zip(times, ratios, strict=True))
        + f" (target: no slower, >= {1 - TOLERANCE:.2f} within noise: {verdict})"
    )


if __name__ == "__main__":
    main()
