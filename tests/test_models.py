"""The network family against the paper's tables and torchvision's reference implementation."""

import re
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from resnet_lit.models import ARCHS, BasicBlock, Bottleneck, PadShortcut, build, stage_shapes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_nets_match_torchvision_parameter_counts(depth):
    ours = build(f"resnet{depth}", in_channels=3, num_classes=1000)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    assert n_params(ours) == n_params(reference)
    # Same tensors, same shapes, same names: our file reads like torchvision's.
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize(
    ("depth", "params"),
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_nets_match_the_paper_and_plain_twins_match_them(depth, params):
    assert n_params(build(f"resnet{depth}", in_channels=3, num_classes=10)) == params
    assert n_params(build(f"plain{depth}", in_channels=3, num_classes=10)) == params


def test_resnet1202_has_the_papers_19_4m_parameters():
    assert round(n_params(build("resnet1202", in_channels=3, num_classes=10)) / 1e6, 1) == 19.4


@pytest.mark.parametrize("name", ARCHS)
def test_every_net_maps_fashion_mnist_batches_to_finite_logits(name):
    model = build(name, in_channels=1, num_classes=10)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_the_names_cover_the_papers_depths():
    for depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202):
        assert f"resnet{depth}" in ARCHS
        assert f"plain{depth}" in ARCHS


def test_other_6n_plus_2_depths_build():
    assert n_params(build("resnet8", in_channels=3, num_classes=10)) < n_params(
        build("resnet14", in_channels=3, num_classes=10)
    )


def _silence_residual_branches(model: nn.Module) -> None:
    """Zero each block's last BatchNorm, so every residual branch F(x) outputs exactly 0."""
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
            nn.init.zeros_(last_bn.weight)
            nn.init.zeros_(last_bn.bias)


@pytest.mark.parametrize("depth", [20, 18, 50])
def test_signal_reaches_the_output_only_through_shortcuts(depth):
    """With every residual branch silenced, only the shortcuts can carry the input to the logits."""
    gradients = {}
    for kind in ("resnet", "plain"):
        torch.manual_seed(0)
        model = build(f"{kind}{depth}", in_channels=1, num_classes=10).eval()
        _silence_residual_branches(model)
        x = torch.randn(2, 1, 28, 28, requires_grad=True)
        model(x).sum().backward()
        gradients[kind] = x.grad.abs().sum().item()
    assert gradients["resnet"] > 0
    assert gradients["plain"] == 0


def test_an_option_a_block_is_the_identity_when_its_branch_is_silenced():
    model = build("resnet20", in_channels=1, num_classes=10).eval()
    _silence_residual_branches(model)
    x = torch.rand(2, 16, 28, 28)  # non-negative: it passes the final ReLU unchanged
    assert torch.equal(model.layer1[0](x), x)
    # The first block of stage 2 subsamples and zero-pads 16 -> 32 channels (option A).
    out = model.layer2[0](x)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 14, 14))
    plain = build("plain20", in_channels=1, num_classes=10).eval()
    _silence_residual_branches(plain)
    assert torch.equal(plain.layer1[0](x), torch.zeros_like(x))


def test_shortcut_options_a_b_c_of_table_3():
    counts = {s: n_params(build("resnet34", in_channels=3, num_classes=1000, shortcut=s)) for s in "ABC"}
    assert counts["A"] < counts["B"] < counts["C"]
    assert counts["B"] == n_params(torchvision.models.resnet34())
    a = build("resnet34", in_channels=3, num_classes=1000, shortcut="A")
    assert any(isinstance(m, PadShortcut) for m in a.modules())
    # Option A adds no parameters: it has exactly the plain net's.
    assert counts["A"] == n_params(build("plain34", in_channels=3, num_classes=1000))
    # Option C projects every shortcut, identity ones included.
    c = build("resnet20", in_channels=1, num_classes=10, shortcut="C")
    assert all(block.downsample is not None for block in c.layer1)


def test_bottleneck_stride_sits_on_the_first_1x1_by_default_and_on_the_3x3_in_v1_5():
    paper = build("resnet50", in_channels=3, num_classes=1000)
    v15 = build("resnet50", in_channels=3, num_classes=1000, stride_in_1x1=False)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert n_params(paper) == n_params(v15)
    x = torch.randn(1, 3, 64, 64)
    assert paper.eval()(x).shape == v15.eval()(x).shape == (1, 1000)


def test_shape_walk_matches_table_1_at_224():
    shapes = stage_shapes(build("resnet50", in_channels=3, num_classes=1000), (3, 224, 224))
    assert shapes["conv1"] == (1, 64, 112, 112)
    assert shapes["maxpool"] == (1, 64, 56, 56)
    assert [shapes[f"layer{i}"][2:] for i in range(1, 5)] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [shapes[f"layer{i}"][1] for i in range(1, 5)] == [256, 512, 1024, 2048]
    assert shapes["fc"] == (1, 1000)


def test_shape_walk_at_28x28x1():
    # The paper's stem shrinks 28x28 to 7x7 before the first stage ...
    paper_stem = stage_shapes(build("resnet18", in_channels=1, num_classes=10), (1, 28, 28))
    assert [paper_stem[f"layer{i}"][2] for i in range(1, 5)] == [7, 4, 2, 1]
    # ... the small stem keeps the resolution, like the CIFAR nets.
    small = stage_shapes(build("resnet18", in_channels=1, num_classes=10, stem="small"), (2, 1, 28, 28))
    assert [small[f"layer{i}"] for i in range(1, 5)] == [
        (2, 64, 28, 28),
        (2, 128, 14, 14),
        (2, 256, 7, 7),
        (2, 512, 4, 4),
    ]
    cifar = stage_shapes(build("resnet20", in_channels=1, num_classes=10), (1, 28, 28))
    assert [cifar[f"layer{i}"][1:] for i in range(1, 4)] == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert "layer4" not in cifar


def test_he_initialisation_and_zero_init_residual():
    torch.manual_seed(0)
    model = build("resnet56", in_channels=1, num_classes=10)
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3: fan_out 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)
    assert all((block.bn2.weight == 1).all() for block in model.layer1)
    zeroed = build("resnet50", in_channels=1, num_classes=10, zero_init_residual=True)
    assert all((block.bn3.weight == 0).all() for block in zeroed.layer1)
    assert all((block.bn1.weight == 1).all() for block in zeroed.layer1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build("resnet19", in_channels=1, num_classes=10), "6n+2"),
        (lambda: build("vgg16", in_channels=1, num_classes=10), "resnet18, resnet34"),
        (lambda: build("resnet20", in_channels=0, num_classes=10), "in_channels must be a positive"),
        (lambda: build("resnet18", in_channels=1, num_classes=-1), "num_classes must be a positive"),
        (lambda: build("resnet20", in_channels=1, num_classes=10, shortcut="D"), "shortcut must be"),
        (lambda: build("resnet18", in_channels=1, num_classes=10, stem="big"), "stem must be"),
        (lambda: build("plain20", in_channels=1, num_classes=10, zero_init_residual=True), "plain net"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        call()
    assert "\n" not in str(info.value)


def test_models_never_import_lightning():
    code = "import sys, resnet_lit.models; assert not [m for m in sys.modules if 'lightning' in m]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_shape_walk_command_prints_table_1(capsys):
    from resnet_lit.models.__main__ import main

    main(["resnet50", "--in-channels", "3", "--num-classes", "1000", "--size", "224"])
    out = capsys.readouterr().out
    assert "25,557,032 parameters" in out
    assert re.search(r"layer4 +\(1, 1024, 14, 14\) +\(1, 2048, 7, 7\)", out)  # input, then output
    assert re.search(r"conv1 +\(1, 3, 224, 224\) +\(1, 64, 112, 112\)", out)
    with pytest.raises(SystemExit, match="6n\\+2"):
        main(["resnet21"])
