"""python -m resnet_lit.export: nothing on disk is lost, whatever refuses or fails; test-time flips kept."""

import csv
import shutil
import sys
from pathlib import Path

import pytest
import torch

from resnet_lit import export
from resnet_lit.checkpointing import load_checkpoint
from resnet_lit.cli import ResNetCLI

CKPT = "lightning_logs/version_0/checkpoints/last.ckpt"


@pytest.fixture
def ckpt(trained, tmp_path) -> Path:
    """A copy of a real checkpoint, in a folder of its own."""
    folder = tmp_path / "work"
    folder.mkdir()
    return Path(shutil.copy(trained / CKPT, folder / "c.ckpt"))


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _refused(capsys, argv: list[str]) -> str:
    assert export.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_out_naming_the_checkpoint_is_refused_and_the_checkpoint_kept(ckpt, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails: the refusal the issue saw
    before = _files(ckpt.parent)
    for out in (str(ckpt), str(ckpt.parent / "." / "c.ckpt")):
        said = _refused(capsys, ["--ckpt_path", str(ckpt), "--format", "onnx", "--out", out])
        assert "is the checkpoint being exported" in said
    assert _files(ckpt.parent) == before


@pytest.mark.parametrize("case", ["onnx missing", "foreign checkpoint"])
def test_a_refused_export_leaves_an_existing_out_as_it_was(ckpt, capsys, monkeypatch, case):
    out = ckpt.parent / "model.onnx"
    out.write_bytes(b"the user's earlier export")
    if case == "onnx missing":
        monkeypatch.setitem(sys.modules, "onnx", None)
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, ckpt.parent / "foreign.ckpt")
        ckpt = ckpt.parent / "foreign.ckpt"
    before = _files(ckpt.parent)
    _refused(capsys, ["--ckpt_path", str(ckpt), "--format", "onnx", "--out", str(out)])
    assert _files(ckpt.parent) == before  # `out` and the checkpoints, byte for byte, and no temporary file


def test_a_failed_write_leaves_the_old_file_and_no_temporary(ckpt, capsys, monkeypatch):
    out = ckpt.parent / "weights.pth"
    out.write_bytes(b"an older, complete export")
    before = _files(ckpt.parent)

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a fi")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    said = _refused(capsys, ["--ckpt_path", str(ckpt), "--format", "state_dict", "--out", str(out)])
    assert "disk full" in said and "weights.pth is as it was" in said
    assert _files(ckpt.parent) == before


def test_out_that_cannot_be_written_is_one_line_before_any_work(ckpt, capsys, monkeypatch):
    args = ["--ckpt_path", str(ckpt), "--format", "state_dict", "--out"]
    assert "does not exist" in _refused(capsys, [*args, str(ckpt.parent / "missing" / "w.pth")])
    assert "is a folder" in _refused(capsys, [*args, str(ckpt.parent)])
    monkeypatch.setattr(export.os, "access", lambda path, mode: False)  # root ignores permissions: say it is read-only
    assert "is not writable" in _refused(capsys, [*args, str(ckpt.parent / "w.pth")])
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["c.ckpt"]


def _run_exported(out: Path, images: torch.Tensor) -> torch.Tensor:
    """The exported file's class probabilities for a batch of uint8 images, as a user would run it."""
    if out.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (probabilities,) = session.run(None, {"images": images.numpy()})
        return torch.from_numpy(probabilities)
    with torch.no_grad():
        return torch.jit.load(str(out))(images)


@pytest.mark.parametrize("name", ["model.pt", "model.onnx"])
def test_a_run_with_test_time_flips_exports_them(ckpt, tmp_path, monkeypatch, name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    monkeypatch.chdir(tmp_path)  # predict's run folder goes here, not into the repository
    checkpoint = load_checkpoint(ckpt)
    checkpoint["hyper_parameters"]["tta"] = True
    torch.save(checkpoint, ckpt)
    out = tmp_path / name
    fmt = "onnx" if name.endswith(".onnx") else "torchscript"
    assert export.main(["--ckpt_path", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    predictions = tmp_path / "p.csv"
    ResNetCLI(args=["predict", f"--ckpt_path={ckpt}", f"--predictions.path={predictions}"])
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    from resnet_lit.data import FashionMNISTDataModule

    data = FashionMNISTDataModule(data_dir=str(checkpoint["datamodule_hyper_parameters"]["data_dir"]), download=False)
    data.setup("test")
    probabilities = _run_exported(out, data.test_set.images)
    assert [int(r["predicted"]) for r in rows] == probabilities.argmax(1).tolist()
    confidences = [float(r["confidence"]) for r in rows]
    assert probabilities.max(1).values.tolist() == pytest.approx(confidences, abs=1e-4)  # the CSV's 4 decimals
