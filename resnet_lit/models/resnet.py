"""The ResNet family of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

One `ResNet` class covers both of the paper's designs:

- the ImageNet nets of Table 1 (18/34 with `BasicBlock`, 50/101/152 with `Bottleneck`), four
  stages of widths 64/128/256/512 after a 7x7/2 conv and a 3x3/2 max-pool;
- the CIFAR-10 nets of Sec. 4.2 (6n+2 layers): three stages of n `BasicBlock`s with widths
  16/32/64 after a single 3x3 conv.

Every depth has a *plain* twin (`residual=False`): the same layers without any shortcut, the
paper's baseline for the degradation problem (Fig. 1, 4 and 6).

Parameter counts match torchvision's `resnet18` ... `resnet152` (shortcut option B) and the
paper's CIFAR table (option A) exactly; the tests check both.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_lit.errors import BadInput

Shortcut = Literal["A", "B", "C"]
Stem = Literal["imagenet", "small"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding; no bias, as a BatchNorm follows (paper Sec. 3.4)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, used in bottlenecks and projection shortcuts."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A of Sec. 3.3: identity that subsamples by `stride` and zero-pads new channels.

    Parameter-free, so a net with option A has exactly the parameters of its plain twin.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zeros after the existing channels


class BasicBlock(nn.Module):
    """Two 3x3 convs (paper Fig. 2 and Fig. 5 left), used by ResNet-18/34 and the CIFAR nets."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = True,  # unused: a basic block has no 1x1 conv
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (paper Fig. 5 right), used by ResNet-50/101/152.

    The paper subsamples with the first 1x1 conv (stride 2), the default here
    (`stride_in_1x1=True`), because this project reproduces the paper. torchvision's "ResNet
    v1.5" moves the stride to the 3x3 conv (`stride_in_1x1=False`), which is slightly more
    accurate on ImageNet and slightly slower; both have the same parameters.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    """A residual (or plain) network: stem, stages `layer1..layerN`, global average pool, fc.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        layers: number of blocks in each stage, e.g. `[3, 4, 6, 3]` for ResNet-50.
        widths: `planes` of each stage; the first stage's width is also the stem's.
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR/ImageNet).
        num_classes: outputs of the final fc layer.
        stem: `"imagenet"`, the paper's 7x7/2 conv + 3x3/2 max-pool (Table 1), or `"small"`,
            a 3x3/1 conv without pooling (Sec. 4.2, and fit for 28x28 inputs).
        shortcut: the paper's options of Sec. 3.3 / Table 3: "A" zero-padding identity for
            increasing dimensions, "B" projections for increasing dimensions and identity
            otherwise, "C" projections everywhere.
        residual: False builds the plain twin, with no shortcut at all.
        stride_in_1x1: for `Bottleneck`, subsample in the first 1x1 conv as the paper does
            (True) or in the 3x3 conv as torchvision's v1.5 does (False).
        zero_init_residual: start each block's last BatchNorm at zero, so every residual
            block begins as the identity (Goyal et al. 2017); not in the paper.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
        num_classes: int = 1000,
        stem: Stem = "imagenet",
        shortcut: Shortcut = "B",
        residual: bool = True,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes)
        if len(layers) != len(widths):
            raise BadInput(f"got {len(layers)} stage depths but {len(widths)} widths")
        if stem not in ("imagenet", "small"):
            raise BadInput(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if shortcut not in ("A", "B", "C"):
            raise BadInput(f"shortcut must be 'A', 'B' or 'C' (paper Sec. 3.3), got {shortcut!r}")
        if zero_init_residual and not residual:
            raise BadInput("zero_init_residual needs shortcuts: a plain net would output zeros")
        self.block = block
        self.shortcut = shortcut
        self.residual = residual
        self.stride_in_1x1 = stride_in_1x1
        self.inplanes = widths[0]

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        # The first stage keeps the resolution, every later one halves it (stride 2 in its first block).
        self.stages = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (name, planes, blocks) in enumerate(zip(self.stages, widths, layers, strict=True)):
            self.add_module(name, self._make_layer(planes, blocks, stride=1 if i == 0 else 2))

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        self._init_weights(zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage; the only place that decides strides and shortcuts."""
        outplanes = planes * self.block.expansion
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            layers.append(
                self.block(
                    self.inplanes,
                    planes,
                    block_stride,
                    downsample=self._downsample(self.inplanes, outplanes, block_stride),
                    residual=self.residual,
                    stride_in_1x1=self.stride_in_1x1,
                )
            )
            self.inplanes = outplanes
        return nn.Sequential(*layers)

    def _downsample(self, inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
        """The shortcut's transform, or None for a pure identity (and for plain nets)."""
        if not self.residual:
            return None
        changes_shape = stride != 1 or inplanes != outplanes
        if self.shortcut == "C" or (self.shortcut == "B" and changes_shape):
            return nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
        if self.shortcut == "A" and changes_shape:
            return PadShortcut(inplanes, outplanes, stride)
        return None

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        for name in self.stages:
            x = getattr(self, name)(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x


def imagenet_resnet(block: type[BasicBlock | Bottleneck], layers: Sequence[int], **options) -> ResNet:
    """The paper's Table 1 nets; option B shortcuts by default, as in the paper and torchvision."""
    options.setdefault("shortcut", "B")
    return ResNet(block, layers, widths=(64, 128, 256, 512), **options)


def cifar_resnet(depth: int, **options) -> ResNet:
    """The paper's CIFAR-10 nets (Sec. 4.2): 6n+2 layers, widths 16/32/64, option A shortcuts.

    Args:
        depth: 6n+2 weighted layers: the stem conv, 3 stages of n two-conv blocks, and the fc.
        **options: passed to `ResNet` (e.g. `shortcut`, `residual`, `in_channels`).
    """
    if depth < 8 or (depth - 2) % 6:
        raise BadInput(f"a CIFAR-style net needs a depth of the form 6n+2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    options.setdefault("shortcut", "A")
    options.setdefault("stem", "small")
    return ResNet(BasicBlock, [n, n, n], widths=(16, 32, 64), **options)


@torch.no_grad()
def stage_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shape of each top-level child of `model` for one input of `input_shape`.

    The report this project grew out of printed these to check them against Table 1; here
    they come from forward hooks on the real forward pass, so they cannot drift from it.

    Args:
        model: any module; for a `ResNet` the children are conv1, bn1, relu, maxpool,
            layer1..layerN, avgpool and fc.
        input_shape: (N, C, H, W) or (C, H, W); a batch of 1 is used for the latter.

    Returns:
        An ordered dict from child name to its output shape, e.g. `{"layer1": (1, 64, 56, 56)}`.
    """
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, out: Tensor) -> None:
            shapes.setdefault(name, tuple(out.shape))  # first call only: blocks reuse no child

        return hook

    hooks = [child.register_forward_hook(record(name)) for name, child in model.named_children()]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BadInput(f"{name} must be a positive integer, got {value!r}")
