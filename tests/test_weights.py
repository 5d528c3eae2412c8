"""Weights in: torchvision's and akamaster's layouts load into our nets and compute what they computed there.

Offline: the torchvision and akamaster state dicts are made here, in their own layouts, from
randomly initialised networks (torchvision's own classes; akamaster's option-A shortcut rebuilt
from its definition), and saved as files the way they are published.
"""

import csv

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import refused, snapshot
from torch import nn

from resnet_lit.cli import ResNetCLI
from resnet_lit.errors import BadInput
from resnet_lit.models import build
from resnet_lit.models.resnet import PadShortcut
from resnet_lit.weights import init_weights

QUIET = ["--trainer.enable_progress_bar=false"]
# A refused run must not train; these keep it short if it were not refused.
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]


def same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_a_torchvision_state_dict_loads_into_our_net_and_gives_its_outputs(tmp_path, arch):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, arch)()
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    ours = build(arch, in_channels=3, num_classes=1000, stride_in_1x1=False)
    said = init_weights(ours, str(tmp_path / "tv.pth"), arch, stride_in_1x1=False)
    assert said[0].startswith("init_weights:") and len(said) == 1  # nothing needed adapting
    same_outputs(ours, theirs, torch.randn(2, 3, 64, 64))


def test_three_channel_weights_into_a_grey_net_with_ten_classes_are_adapted_and_said(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    ours = build("resnet18", in_channels=1, num_classes=10)
    head = ours.fc.weight.detach().clone()
    said = "\n".join(init_weights(ours, str(tmp_path / "tv.pth"), "resnet18"))
    assert "conv1: the 3 RGB filters of each kernel summed into 1 input channel" in said
    assert "fc.weight: a new classifier for 10 classes (the source has 1000)" in said
    assert torch.equal(ours.fc.weight, head)  # the new head, as initialised
    # A grey image through the summed filters is the colour net on that image in all three channels.
    grey = torch.randn(2, 1, 64, 64)
    ours.eval(), theirs.eval()
    ours.fc, theirs.fc = nn.Identity(), nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(ours(grey), theirs(grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_torchvision_bottleneck_weights_need_their_stride_placement():
    with pytest.raises(BadInput, match=r"add --model\.stride_in_1x1 false"):
        init_weights(build("resnet50", in_channels=3, num_classes=1000), "ResNet50_Weights.IMAGENET1K_V1", "resnet50")


def test_offline_a_missing_torchvision_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        BadInput, match=r"is not in its cache and could not be downloaded .*: put resnet18-f37072fd.pth"
    ):
        init_weights(build("resnet18", in_channels=3, num_classes=1000), "ResNet18_Weights.IMAGENET1K_V1", "resnet18")


# --- akamaster/pytorch_resnet_cifar10 -----------------------------------------------------------------


class SplitPad(PadShortcut):
    """akamaster's option A: half of the new channels before the input channels, half after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra // 2))


def akamaster_reference(depth: int) -> nn.Module:
    """akamaster's network: ours with its shortcut layout."""
    net = build(f"resnet{depth}", in_channels=3, num_classes=10)
    for module in net.modules():
        for name, child in module.named_children():
            if type(child) is PadShortcut:
                setattr(module, name, SplitPad(0, child.extra, child.stride))
    return net


def save_akamaster(net: nn.Module, path) -> None:
    """As akamaster published them: {'state_dict', 'best_prec1'}, DataParallel's `module.`, `linear`."""
    state = {f"module.{k.replace('fc.', 'linear.')}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 91.25}, path)


@pytest.mark.parametrize("depth", [20, 56])
def test_an_akamaster_checkpoint_computes_the_reference_layouts_function(tmp_path, depth):
    torch.manual_seed(depth)
    reference = akamaster_reference(depth)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    save_akamaster(reference, tmp_path / f"resnet{depth}-xxxx.th")
    ours = build(f"resnet{depth}", in_channels=3, num_classes=10)
    said = init_weights(ours, str(tmp_path / f"resnet{depth}-xxxx.th"), f"resnet{depth}")
    assert "(akamaster)" in said[0]
    x = torch.randn(4, 3, 32, 32)
    same_outputs(ours, reference, x)
    # Loaded as they are, without the permutation, the same tensors compute something else.
    naive = build(f"resnet{depth}", in_channels=3, num_classes=10).eval()
    naive.load_state_dict({k.replace("linear.", "fc."): v for k, v in reference.state_dict().items()})
    with torch.no_grad():
        assert not torch.allclose(naive(x), reference.eval()(x), atol=1e-3)


def test_a_state_dict_of_an_unknown_layout_is_refused(tmp_path):
    torch.save({"encoder.0.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(BadInput, match="its layout is not recognised"):
        init_weights(build("resnet20", in_channels=1, num_classes=10), str(tmp_path / "other.pt"), "resnet20")
    torch.save(build("resnet32", in_channels=1, num_classes=10).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(BadInput, match=r"has \d+ tensors this network lacks .*: not the same architecture"):
        init_weights(build("resnet20", in_channels=1, num_classes=10), str(tmp_path / "r32.pt"), "resnet20")


@pytest.mark.slow  # trains more than once, or for several epochs
def test_fit_starts_from_init_weights_and_says_what_it_did(in_tmp, data_args, capsys):
    torch.manual_seed(1)
    source = build("resnet8", in_channels=1, num_classes=10)
    torch.save(source.state_dict(), in_tmp / "start.pt")
    args = ["--model.arch=resnet8", "--model.init_weights=start.pt", "--trainer.max_epochs=1", *data_args]
    cli = ResNetCLI(args=[*args, "--trainer.enable_progress_bar=false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=None)
    assert "init_weights: " in capsys.readouterr().out
    # the first conv moved from the given weights by training, not from a fresh initialisation
    assert (cli.model.net.conv1.weight.detach() - source.conv1.weight).abs().max() < 0.5


# --- weights out -----------------------------------------------------------------------------------


@pytest.mark.slow  # trains more than once, or for several epochs
def test_an_exported_onnx_model_predicts_what_predict_does(trained, tmp_path, fashion_root, monkeypatch):
    monkeypatch.chdir(tmp_path)  # predict's run folder goes here, not into the repository
    onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from resnet_lit import export
    from resnet_lit.data import FashionMNISTDataModule

    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    out = tmp_path / "model.onnx"
    assert export.main(["--ckpt_path", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    ResNetCLI(args=["predict", f"--ckpt_path={ckpt}", f"--predictions.path={tmp_path / 'p.csv'}", *QUIET])
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False)
    data.setup("test")
    images = data.test_set.images.numpy()  # uint8 (N, 1, 28, 28), what the exported model takes
    (probabilities,) = onnxruntime.InferenceSession(str(out)).run(None, {"images": images})
    assert [int(r["predicted"]) for r in rows] == probabilities.argmax(1).tolist()
    confidences = [float(r["confidence"]) for r in rows]
    assert probabilities.max(1).tolist() == pytest.approx(confidences, abs=1e-4)  # the CSV's 4 decimals


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_torchscript_and_state_dict_exports_reload(trained, tmp_path, fmt):
    from resnet_lit import export

    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    out = tmp_path / "model.out"
    assert export.main(["--ckpt_path", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    classifier, hparams, _ = export.load_classifier(str(ckpt))
    with torch.no_grad():
        expected = classifier(images)
        if fmt == "torchscript":
            got = torch.jit.load(str(out))(images)
        else:
            saved = torch.load(out, weights_only=True)
            net = build(hparams["arch"], in_channels=1, num_classes=10)
            net.load_state_dict(saved["state_dict"])
            x = images.float() * saved["preprocessing"]["scale"] + saved["preprocessing"]["shift"]
            got = net.eval()(x).softmax(1)
    torch.testing.assert_close(got, expected)


# --- weights that are refused: one line, nothing on disk ---------------------------------------------


def _malformed_akamaster(path):
    # their key names, but only two tensors of a whole network
    torch.save({"module.linear.weight": torch.zeros(10, 64), "module.conv1.weight": torch.zeros(16, 1, 3, 3)}, path)


BAD_SOURCES = {
    "a text file": ("resnet8", lambda p: p.write_text("hello\n"), "cannot be read: torch.load cannot read it"),
    "a name torchvision's enum lacks": ("resnet18", "ResNet18_Weights.BOGUS", "ResNet18_Weights has IMAGENET1K_V1"),
    "an enum torchvision lacks": ("resnet20", "ResNet20_Weights.IMAGENET1K_V1", "ResNets are ResNet18, 34, 50"),
    "a malformed akamaster dict": ("resnet20", _malformed_akamaster, "looks like akamaster's layout"),
}


@pytest.mark.parametrize("arch, source, says", BAD_SOURCES.values(), ids=BAD_SOURCES)
def test_refused_init_weights_say_why_in_one_line_and_leave_no_run_folder(
    in_tmp, data_args, capsys, arch, source, says
):
    if callable(source):
        source(in_tmp / "weights.pt")
        source = "weights.pt"
    before = snapshot(in_tmp)
    fit = ["fit", f"--model.arch={arch}", f"--model.init_weights={source}", *SHORT, *QUIET, *data_args]
    line = refused(capsys, fit)
    assert says in line and "init_weights" in line, line
    assert snapshot(in_tmp) == before  # no lightning_logs/version_0 with a config.yaml and an events file


def test_a_checkpoint_of_another_network_is_refused_even_with_the_same_shapes(trained, in_tmp, data_args, capsys):
    ckpt = next((trained / "lightning_logs/version_0/checkpoints").glob("last.ckpt"))  # a resnet8
    line = refused(capsys, ["fit", "--model.arch=plain8", f"--model.init_weights={ckpt}", *SHORT, *QUIET, *data_args])
    assert "holds a resnet8; this network is plain8: pass --model.arch resnet8" in line
    assert not (in_tmp / "lightning_logs").exists()


def test_a_checkpoint_with_a_weight_average_gives_the_average(tmp_path):
    from resnet_lit.module import ResNetClassifier

    run = ResNetClassifier(arch="resnet8", ema_decay=0.99)
    with torch.no_grad():
        for p in run.ema_net.parameters():
            p.add_(1.0)  # the average and the raw weights now differ everywhere
    torch.save({"state_dict": run.state_dict(), "hyper_parameters": {"arch": "resnet8"}}, tmp_path / "ema.ckpt")
    net = build("resnet8", in_channels=1, num_classes=10)
    lines = init_weights(net, str(tmp_path / "ema.ckpt"), "resnet8")
    assert "its weight average" in lines[0]
    for (name, ours), averaged in zip(net.state_dict().items(), run.ema_net.state_dict().values(), strict=True):
        assert torch.equal(ours, averaged), name
