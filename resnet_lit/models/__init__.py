"""The network family by name: `build("resnet50", in_channels=1, num_classes=10)`.

Plain PyTorch: nothing here imports Lightning.

Names:
    resnet18, resnet34, resnet50, resnet101, resnet152: the paper's Table 1 (ImageNet) nets.
    resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202: the paper's CIFAR-10 nets of
        Sec. 4.2; any other depth of the form 6n+2 works too (resnet8, resnet14, ...), except
        that 50 and 152 name the Table 1 nets.
    plainN: the plain twin of resnetN, without any shortcut (Fig. 1, 4 and 6).
"""

import re
from collections.abc import Callable
from functools import partial

from torch import nn

from resnet_lit.errors import BadInput
from resnet_lit.models.resnet import (
    BasicBlock,
    Bottleneck,
    PadShortcut,
    ResNet,
    cifar_resnet,
    imagenet_resnet,
    stage_shapes,
)

__all__ = [
    "ARCHS",
    "NETWORK_KEYS",
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "ResNet",
    "build",
    "names",
    "stage_shapes",
]

# The hyperparameters that decide a network's function (the name and `build`'s options that change
# what it computes): a checkpoint's weights only mean what they meant where these agree.
NETWORK_KEYS = ("arch", "in_channels", "num_classes", "shortcut", "stem", "stride_in_1x1")

# Depth -> builder; the paper's Table 1 and the depths of its CIFAR-10 table (Table 6).
IMAGENET_DEPTHS: dict[int, Callable[..., ResNet]] = {
    18: partial(imagenet_resnet, BasicBlock, [2, 2, 2, 2]),
    34: partial(imagenet_resnet, BasicBlock, [3, 4, 6, 3]),
    50: partial(imagenet_resnet, Bottleneck, [3, 4, 6, 3]),
    101: partial(imagenet_resnet, Bottleneck, [3, 4, 23, 3]),
    152: partial(imagenet_resnet, Bottleneck, [3, 8, 36, 3]),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

ARCHS: tuple[str, ...] = tuple(
    f"{kind}{depth}" for kind in ("resnet", "plain") for depth in (*IMAGENET_DEPTHS, *CIFAR_DEPTHS)
)

_NAME = re.compile(r"(resnet|plain)(\d+)")


def names() -> str:
    """The valid names, as one line for error messages."""
    return ", ".join(ARCHS) + " (or resnetN/plainN for any depth N = 6n+2)"


def build(name: str, *, in_channels: int, num_classes: int, **options) -> nn.Module:
    """Build a network of the family by name.

    Args:
        name: e.g. "resnet18", "resnet56", "plain56"; see the module docstring.
        in_channels: channels of the input images (1 for Fashion-MNIST).
        num_classes: number of outputs.
        **options: `ResNet` options: `shortcut` ("A", "B", "C"), `stem` ("imagenet", "small"),
            `stride_in_1x1`, `zero_init_residual`. None means the family's default.

    Raises:
        ValueError: for an unknown name, a depth not of the form 6n+2, non-positive
            `in_channels` / `num_classes`, or an invalid option.
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise BadInput(f"unknown architecture {name!r}; valid names: {names()}")
    kind, depth = match.group(1), int(match.group(2))
    options = {key: value for key, value in options.items() if value is not None}
    options.update(in_channels=in_channels, num_classes=num_classes, residual=kind == "resnet")
    if depth in IMAGENET_DEPTHS:
        return IMAGENET_DEPTHS[depth](**options)
    if depth < 8 or (depth - 2) % 6:
        raise BadInput(
            f"unknown depth {depth} in {name!r}: use 18/34/50/101/152 (Table 1) or 6n+2 (Sec. 4.2); "
            f"valid names: {names()}"
        )
    return cifar_resnet(depth, **options)
