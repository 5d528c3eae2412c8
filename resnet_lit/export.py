"""Hand a trained model to other tools: ONNX, TorchScript or a plain state dict, preprocessing included.

    python -m resnet_lit.export --ckpt_path CKPT --format onnx|torchscript|state_dict [--out FILE]

The exported model takes what a user has: a batch of uint8 images, (N, C, H, W) with values
0..255 (Fashion-MNIST: (N, 1, 28, 28)), any N. It scales, normalizes and resizes them exactly as
the checkpoint's data module did in training, runs the network (the weight average, where the
run kept one) and returns the class probabilities, (N, classes). ONNX files are checked with
`onnx.checker`, and where onnxruntime is installed its outputs are compared with PyTorch's on a
batch of the test set's shape (largest difference at most 1e-4). `state_dict` writes the
network's weights with what rebuilds it (`hyper_parameters`) and the preprocessing constants,
as plain data that `torch.load(..., weights_only=True)` reads. ONNX needs the `export` extra:
`pip install "resnet-lit[export]"`.
"""

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from resnet_lit.errors import BadInput, say_refusal

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "state_dict": ".pth"}
TOLERANCE = 1e-4


class Classifier(nn.Module):
    """uint8 images in, class probabilities out: the checkpoint's preprocessing, then its network."""

    def __init__(
        self, net: nn.Module, mean: list[float], std: list[float], size: int | None, scale_only: bool, tta: bool = False
    ) -> None:
        super().__init__()
        self.net = net
        self.tta = tta
        channels = len(mean)
        scale = torch.full((channels,), 1 / 255.0) if scale_only else 1 / (255 * torch.tensor(std, dtype=torch.float64))
        shift = torch.zeros(channels) if scale_only else -torch.tensor(mean, dtype=torch.float64) / torch.tensor(std)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
        self.size = size

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() * self.scale + self.shift
        if self.size is not None:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if not self.tta:
            return self.net(x).softmax(dim=1)
        # As ResNetClassifier._log_probabilities with tta: the image and its mirror, averaged in log space.
        log_probs = self.net(x).log_softmax(dim=1)
        mirrored = self.net(x.flip(-1)).log_softmax(dim=1)
        return (torch.logaddexp(log_probs, mirrored) - math.log(2)).exp()


def load_classifier(ckpt_path: str) -> tuple[Classifier, dict, tuple[int, int, int]]:
    """The exported model of a checkpoint, its hyperparameters, and the (C, H, W) of its input images."""
    from resnet_lit.module import ResNetClassifier
    from resnet_lit.resume import read_settings

    settings = read_settings(ckpt_path)  # refuses foreign, partial and code-running checkpoints
    data_class = settings.data_class or "resnet_lit.data.FashionMNISTDataModule"
    module_name, class_name = data_class.rsplit(".", 1)
    data_cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    data = settings.data
    mean = list(data.get("mean") or data_cls.train_mean)
    std = list(data.get("std") or data_cls.train_std)
    model = ResNetClassifier(**{**settings.model, "compile": False})
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    net = (model.ema_net if model.ema_net is not None else model.net).eval()
    tta = bool(settings.model.get("tta"))  # the run was evaluated with flips: the export averages them too
    classifier = Classifier(net, mean, std, data.get("resize"), data.get("normalize") is False, tta).eval()
    shape = (data_cls.in_channels, data_cls.native_size, data_cls.native_size)
    return classifier, {**settings.model, "data": data, "data_class": data_class}, shape


def export(ckpt_path: str, fmt: str, out: Path) -> list[str]:
    """Write the checkpoint's model to `out` in `fmt`; returns what was checked, a line each."""
    classifier, hparams, shape = load_classifier(ckpt_path)
    example = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    with torch.no_grad():
        expected = classifier(example)
    said = [f"{out}: {fmt}, input uint8 (N, {', '.join(map(str, shape))}) 0..255, output probabilities (N, classes)"]
    if classifier.tta:
        said.append("  test-time flips included (the run set tta): the image and its mirror, averaged")
    with _written_whole(out) as temporary:
        said += _write(classifier, fmt, example, expected, hparams, shape, temporary)
    return said


@contextlib.contextmanager
def _written_whole(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed over it only once the export there is complete and checked.

    Whatever fails (a refusal, a full disk, a failed check) removes the temporary file and leaves
    `out` as it was: an existing file is never touched unless a whole new one replaces it.
    """
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")  # the suffix: ONNX writers read it
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        for stray in out.parent.glob(f"{temporary.name}*"):  # e.g. an ONNX writer's external data beside it
            stray.unlink(missing_ok=True)
        raise


def _write(
    classifier: Classifier, fmt: str, example: Tensor, expected: Tensor, hparams: dict, shape: tuple, out: Path
) -> list[str]:
    said: list[str] = []
    if fmt == "state_dict":
        payload = {
            "state_dict": classifier.net.state_dict(),
            "hyper_parameters": hparams,
            "preprocessing": {
                "scale": classifier.scale,
                "shift": classifier.shift,
                "resize": classifier.size,
                "tta": classifier.tta,
            },
        }
        try:
            torch.save(payload, out)
        except RuntimeError as err:  # torch's writer reports a failed write (a full disk) this way
            raise OSError(errno.EIO, "is the disk full?", str(out)) from err
        return said
    if fmt == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(classifier, example)
        scripted.save(str(out))
        loaded = torch.jit.load(str(out))
        images = torch.randint(0, 256, (7, *shape), dtype=torch.uint8)  # another batch size than traced
        with torch.no_grad():
            difference = float((loaded(images) - classifier(images)).abs().max())
        said.append(f"  reloaded with torch.jit.load: a batch of 7, largest difference to PyTorch {difference:.1e}")
        return said
    return _export_onnx(classifier, example, expected, out)


def _export_onnx(classifier: Classifier, example: Tensor, expected: Tensor, out: Path) -> list[str]:
    try:
        import onnx
    except ImportError as err:
        raise BadInput('ONNX export needs the onnx package: pip install "resnet-lit[export]"') from err
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(classifier, (example,), str(out), dynamic_shapes={"images": {0: batch}}, input_names=["images"],
                      output_names=["probabilities"], dynamo=True)  # fmt: skip
    onnx.checker.check_model(onnx.load(str(out)))
    said = ["  onnx.checker: valid"]
    try:
        import onnxruntime
    except ImportError:
        return [*said, "  onnxruntime is not installed: outputs not compared with PyTorch's"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    another = torch.randint(0, 256, (9, *example.shape[1:]), dtype=torch.uint8)
    for images in (example, another):  # the traced batch size and another: the batch is dynamic
        batch_size = len(images)
        with torch.no_grad():
            reference = classifier(images).numpy()
        (got,) = session.run(None, {"images": images.numpy()})
        difference = float(abs(got - reference).max())
        if difference > TOLERANCE:
            raise RuntimeError(f"onnxruntime's output differs from PyTorch's by {difference:.2e} (> {TOLERANCE})")
        said.append(f"  onnxruntime: a batch of {batch_size}, largest difference to PyTorch {difference:.1e}")
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_lit.export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt_path", required=True, help="a checkpoint of python -m resnet_lit fit, or last / best: the newest run's"
    )
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="what to write")
    parser.add_argument("--out", type=Path, help="the file to write (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    ckpt = Path(args.ckpt_path)
    if args.ckpt_path in ("last", "best"):  # the newest run's, as for test
        from resnet_lit.runs import newest_checkpoint

        found = newest_checkpoint(Path("."), args.ckpt_path)
        if found is None:
            return say_refusal(f"--ckpt_path {args.ckpt_path}: no lightning_logs/version_*/checkpoints/last.ckpt here")
        ckpt = found
    if not ckpt.is_file():
        return say_refusal(f"--ckpt_path {str(ckpt)!r}: no such file")
    out = args.out or ckpt.with_suffix(FORMATS[args.format])
    problem = out_problem(out, ckpt)
    if problem:
        return say_refusal(problem)
    try:
        for line in export(str(ckpt), args.format, out):
            print(line)
    except BadInput as err:
        return say_refusal(str(err))  # `out` untouched: the export wrote only its temporary file
    except OSError as err:
        return say_refusal(f"--out {str(out)!r}: the write failed ({err.strerror or err}); {out.name} is as it was")
    return 0


def out_problem(out: Path, ckpt: Path) -> str | None:
    """Why the export cannot be written to `out`, or None: checked before any work is done."""
    if out.exists() and out.resolve() == ckpt.resolve():
        return f"--out {str(out)!r} is the checkpoint being exported; give another file"
    if out.is_dir():
        return f"--out {str(out)!r} is a folder; give a file name (e.g. {out / ('model' + out.suffix)})"
    folder = out.parent
    if not folder.is_dir():
        return f"--out {str(out)!r}: its folder {str(folder)!r} does not exist; create it or give another --out"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {str(out)!r}: its folder {str(folder)!r} is not writable; give another --out"
    return None


if __name__ == "__main__":
    sys.exit(main())
